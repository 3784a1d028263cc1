"""``python -m ablate_lit report``: the merged table against numbers computed here, and the figures."""

from __future__ import annotations

import csv
import shutil
import statistics

import pytest
from helpers import cli, one_line_error, read_rows, tiny_args
from PIL import Image

from ablate_lit.entry.cli import main


@pytest.fixture(scope="module")
def two_runs(tiny_models, corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for model in ("llama", "gpt2"):
        args = tiny_args(tiny_models[model], corpus, root, "--ablation.methods", "[zero,peak]")
        args[args.index("--name") + 1] = model
        try:
            main(["test", *map(str, args)])
        except SystemExit as exc:
            assert exc.code in (0, None)
    return root


@pytest.mark.slow
def test_report_merges_runs_into_table_and_figures(capsys, two_runs, tmp_path):
    capsys.readouterr()
    main(["report", str(two_runs / "llama"), str(two_runs / "gpt2"), "--fractions", "0.5", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    md = (tmp_path / "table.md").read_text()
    assert md in out
    rows = read_rows(two_runs / "llama" / "results.csv")
    values = [float(r["top1"]) * 100 for r in rows if r["method"] == "peak" and r["fraction"] == "0.5"]
    expected = f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"
    line = next(l for l in md.splitlines() if l.startswith("| peak @ 50% |"))
    assert line.split("|")[2].strip() == expected  # first model column: llama
    assert md.count("| baseline |") == 2  # Top1 and CE blocks
    with open(tmp_path / "table.csv") as fh:
        records = list(csv.DictReader(fh))
    assert {r["model"] for r in records} == {"llama", "gpt2"}
    assert {(r["method"], r["fraction"]) for r in records} >= {("baseline", "0.0"), ("zero", "0.5"), ("peak", "0.5")}
    for model in ("llama", "gpt2"):
        with Image.open(tmp_path / f"{model}.png") as img:
            assert img.size[0] > 800 and img.size[1] > 300


def test_report_of_a_folder_without_results_is_a_one_line_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["report", str(tmp_path)])
    assert exc.value.code == 2
    assert "holds no results.csv" in capsys.readouterr().err


def test_a_paired_logit_difference_is_averaged_over_the_rows_with_a_distractor():
    """Rows without a distractor have no logit difference: the pair's mean is over the rows that have
    one, as each run's own logit difference is (rows stored without the count keep the old mean)."""
    from ablate_lit.report.paired import paired_difference

    a = {"logit_diff": [1.0, 0.0, 3.0, 0.0], "total": [1, 1, 1, 1], "with_distractor": [1, 0, 1, 0]}
    b = {"logit_diff": [0.5, 0.0, 1.5, 0.0], "total": [1, 1, 1, 1], "with_distractor": [1, 0, 1, 0]}
    point, lo, hi = paired_difference([a], [b], "logit_diff", n_boot=200)
    assert point == pytest.approx(((1.0 - 0.5) + (3.0 - 1.5)) / 2)  # not / 4
    assert lo <= point <= hi
    old = (
        [{k: v for k, v in a.items() if k != "with_distractor"}],
        [{k: v for k, v in b.items() if k != "with_distractor"}],
    )
    assert paired_difference(*old, "logit_diff", n_boot=10)[0] == pytest.approx(2.0 / 4)


@pytest.mark.slow
def test_a_map_beside_a_nested_run_an_unfinished_map_and_one_without_its_baseline(
    capsys, tiny_models, corpus, two_runs, tmp_path
):
    """The map's unablated rows stay out of the nested table (no empty '[heads]' rows); a map with
    units missing for a method is said to be unfinished; one without its unablated row is refused."""
    args = tiny_args(tiny_models["llama"], corpus, tmp_path, "--ablation.methods", "[zero,mean]")
    args[args.index("--name") + 1] = "map"
    code, _, err = cli(capsys, "test", *args, "--ablation.schedule", "each", "--ablation.unit", "head")
    assert code == 0, err
    code, out, err = cli(capsys, "report", tmp_path / "map", two_runs / "llama", "--out", tmp_path / "both")
    assert code == 0, err
    table = (tmp_path / "both" / "table.md").read_text()
    assert "[heads]" not in table and "| zero @ 50% |" in table
    assert "incomplete" not in out
    shutil.copytree(tmp_path / "map", tmp_path / "unfinished")
    for point in (tmp_path / "unfinished" / "points").glob("mean__L1.H*"):
        point.unlink()
    (tmp_path / "unfinished" / "results.csv").unlink()
    code, out, err = cli(capsys, "report", tmp_path / "unfinished", "--out", tmp_path / "u")
    assert code == 0 and "incomplete: mean [heads] has 4 of 8 units; run the map's command again" in out, out
    for point in (tmp_path / "unfinished" / "points").glob("*__s0__f0.000000.json"):
        point.unlink()
    code, out, err = cli(capsys, "report", tmp_path / "unfinished", "--out", tmp_path / "v")
    assert code == 2 and "has no unablated row to compare its units with" in one_line_error(err)
