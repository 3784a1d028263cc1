"""Results that cannot be silently wrong: the run's identity, concurrent writers, validated reads, signals.

Every case runs the real CLI (in this process, or as real processes that are started together or
killed); nothing is simulated except a full disk.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import launch, one_line_error, read_rows, run, tiny_args

from ablate_lit.entry.cli import main
from ablate_lit.store.atomic import HOST, clear_stale
from ablate_lit.store.rows import COLUMNS

SMALL = ["--ablation.methods", "[zero,mean]", "--ablation.seeds", "[0]", "--ablation.log_histograms", "false"]


def start(args) -> subprocess.Popen:
    """The CLI's test command started in a child process (``helpers.launch``), not waited for."""
    return launch("test", *args, wait=False)


# -- identity -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "change,differs",
    [
        (["--model.name_or_path", "OTHER"], "model_fingerprint"),
        (["--ablation.eps", "0.02"], "eps: 0.01 there, 0.02 now"),
        (["--data.path", "OTHER_DATA"], "calib_data"),
    ],
)
def test_a_named_run_folder_refuses_results_of_other_settings(capsys, tiny_models, corpus, tmp_path, change, differs):
    args = tiny_args(tiny_models["llama"], corpus, tmp_path, *SMALL)
    assert run(capsys, *args)[0] == 0
    other_data = tmp_path / "other.txt"
    other_data.write_text((corpus / "part1.txt").read_text() + "\n\n" + (corpus / "part0.txt").read_text())
    change = [
        str(tiny_models["mistral"]) if c == "OTHER" else str(other_data) if c == "OTHER_DATA" else c for c in change
    ]
    code, out, err = run(capsys, *args, *change)
    line = one_line_error(err)
    assert code == 2 and "holds results of other settings" in line and differs in line
    assert "use another --name, or remove the folder" in line


def test_editing_the_data_in_place_gives_a_new_run_folder(capsys, tiny_models, corpus, tmp_path):
    data = tmp_path / "docs.txt"
    data.write_text((corpus / "part0.txt").read_text())
    args = [a for a in tiny_args(tiny_models["llama"], data, tmp_path / "root", *SMALL)]
    args = args[: args.index("--name")] + args[args.index("--name") + 2 :]  # the automatic name
    assert run(capsys, *args)[0] == 0
    data.write_text((corpus / "part1.txt").read_text())  # same path, other text
    code, out, err = run(capsys, *args)
    assert code == 0, err
    folders = sorted(p for p in (tmp_path / "root").iterdir() if not p.name.startswith("."))
    assert len(folders) == 2
    assert "0 already in" in out  # nothing reused from the first folder
    first, second = (read_rows(f / "results.csv") for f in folders)
    assert {r["ce"] for r in first}.isdisjoint({r["ce"] for r in second})


def test_an_old_run_folder_without_identity_is_refused(capsys, tiny_models, corpus, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.csv").write_text(",".join(COLUMNS) + "\n")
    code, out, err = run(capsys, *tiny_args(tiny_models["llama"], corpus, tmp_path, *SMALL))
    assert code == 2 and "earlier ablate_lit without their identity" in one_line_error(err)


# -- concurrent writers -----------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.distributed
def test_four_processes_on_one_run_folder_write_the_union_of_four_separate_runs(tiny_models, corpus, tmp_path):
    shares = [("zero", 0), ("mean", 0), ("zero", 1), ("peak", 1)]
    base = ["--ablation.log_histograms", "false", "--ablation.cache_dir", tmp_path / "cache"]

    def args(root, name, method, seed):
        return [
            a if a != "run" else name
            for a in tiny_args(
                tiny_models["qwen2"],
                corpus,
                root,
                *base,
                "--ablation.methods",
                f"[{method}]",
                "--ablation.seeds",
                f"[{seed}]",
            )
        ]

    together = [start(args(tmp_path / "shared", "run", m, s)) for m, s in shares]
    outs = [p.communicate(timeout=600) for p in together]
    assert all(p.returncode == 0 for p in together), [e[-2000:] for _, e in outs]
    apart = [start(args(tmp_path / "apart", f"run-{m}-{s}", m, s)) for m, s in shares]
    for p in apart:
        assert p.wait(timeout=600) == 0

    key = lambda r: (r["method"], r["seed"], r["fraction"])  # noqa: E731
    shared = read_rows(tmp_path / "shared" / "run" / "results.csv")
    union = [r for m, s in shares for r in read_rows(tmp_path / "apart" / f"run-{m}-{s}" / "results.csv")]
    assert len({key(r) for r in shared}) == len(shared) == len(union) == 4 * 3  # no row lost, none twice
    for a, b in zip(sorted(shared, key=key), sorted(union, key=key), strict=True):
        assert key(a) == key(b) and float(a["ce"]) == pytest.approx(float(b["ce"]), rel=1e-6)
    evaluated_baseline = sum(" baseline seed" in out for out, _ in outs)
    assert evaluated_baseline == 1  # the shared 0% point: evaluated by one process, its rows copied by the others
    assert not list((tmp_path / "shared" / "run" / "points").glob("*.claim"))


def test_stale_temporaries_of_dead_writers_go_and_live_ones_stay(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = tmp_path / f".results.csv.tmp-{HOST}-{os.getpid()}-0"
    gone = tmp_path / f".results.csv.tmp-{HOST}-{dead.pid}-0"
    legacy = tmp_path / f".stats-abc.pt.tmp{dead.pid}"
    other_host = tmp_path / f".results.csv.tmp-elsewhere-{os.getpid()}-0"
    for f in (live, gone, legacy, other_host):
        f.write_text("partial")
    assert clear_stale(tmp_path) == 2
    assert live.exists() and other_host.exists() and not gone.exists() and not legacy.exists()


# -- validated reads --------------------------------------------------------------------------------
def test_a_damaged_row_file_is_reported_and_evaluated_again(capsys, tiny_models, corpus, tmp_path):
    args = tiny_args(tiny_models["llama"], corpus, tmp_path, *SMALL)
    assert run(capsys, *args)[0] == 0
    reference = read_rows(tmp_path / "run" / "results.csv")
    points = sorted((tmp_path / "run" / "points").glob("*.json"))
    points[0].write_text(points[0].read_text()[:40])  # cut inside the record
    record = json.loads(points[1].read_text())
    record["row"]["seed"] = "zero"
    points[1].write_text(json.dumps(record))  # hand-edited: a seed that is not a number
    code, out, err = run(capsys, *args)
    assert code == 0, err
    assert (
        f"warning: ignored {points[0]}: unreadable" in out
        and f"warning: ignored {points[1]}: seed 'zero' is not an integer" in out
    )
    assert read_rows(tmp_path / "run" / "results.csv") == reference  # the two rows evaluated again, nothing else
    code, out, err = run(capsys, *args)
    assert code == 0 and "5 already in" in out and "warning" not in out  # 5 evaluations stand for the 6 rows


@pytest.mark.parametrize(
    "damage,reason",
    [
        (lambda text: text[: len(text) - len(text.splitlines()[-1]) // 2 - 1], "missing"),  # the last row cut in half
        (lambda text: text + "garbage line\n", "missing"),
        (lambda text: text.replace("\nllama,zero,0,", "\nllama,zero,x,", 1), "seed 'x' is not an integer"),
    ],
)
def test_report_skips_malformed_csv_lines_naming_file_and_line(capsys, tiny_models, corpus, tmp_path, damage, reason):
    assert run(capsys, *tiny_args(tiny_models["llama"], corpus, tmp_path, *SMALL))[0] == 0
    copied = tmp_path / "copied"  # a run folder shared without its points/: results.csv is all there is
    copied.mkdir()
    text = (tmp_path / "run" / "results.csv").read_text()
    (copied / "results.csv").write_text(damage(text))
    main(["report", str(copied), "--out", str(tmp_path / "report")])
    out, err = capsys.readouterr()
    assert f"warning: ignored {copied / 'results.csv'}:" in err and reason in err
    assert "| baseline |" in out


@pytest.mark.slow
def test_report_keeps_apart_two_models_whose_folders_share_a_name(capsys, tiny_models, corpus, tmp_path):
    import shutil

    for name, arch in (("a", "llama"), ("b", "mistral")):
        shutil.copytree(tiny_models[arch], tmp_path / name / "model")
        args = tiny_args(tmp_path / name / "model", corpus, tmp_path / "runs", *SMALL)
        assert run(capsys, *[a if a != "run" else f"run-{name}" for a in args])[0] == 0
    main(["report", str(tmp_path / "runs" / "run-a"), str(tmp_path / "runs" / "run-b"), "--out", str(tmp_path / "rep")])
    out, _ = capsys.readouterr()
    header = next(line for line in out.splitlines() if line.startswith("| |"))
    assert "model (run-a)" in header and "model (run-b)" in header


# -- signals --------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_the_run_non_zero_with_one_line_and_it_resumes(tiny_models, corpus, tmp_path, sig):
    args = tiny_args(tiny_models["qwen2"], corpus, tmp_path, "--ablation.methods", "[zero,peak,resample:random_tokens]")
    proc = start(args)
    points = tmp_path / "run" / "points"
    deadline = time.time() + 300
    while len(list(points.glob("*.json"))) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, err[-2000:]
    line = one_line_error(err)
    assert (
        f"stopped by {signal.Signals(sig).name}:" in line
        and "evaluations done" in line
        and "run the same command" in line
    )
    # the count is that of the points whose rows are on disk, also when the signal came right after a row
    from ablate_lit.ablation.schedule import plan
    from ablate_lit.store.folder import read_rows as stored

    have = {(r["method"], int(r["seed"]), float(r["fraction"])) for r in stored(tmp_path / "run")[0]}
    schedule = plan(["zero", "peak", "resample:random_tokens"], [0, 1], [0.0, 0.5, 1.0])
    done = sum(all((m, s, p.fraction) in have for m, s in p.rows) for p in schedule)
    assert f"{done} of {len(schedule)} evaluations done" in line, line
    assert not list(points.glob("*.claim")), "the claim of the interrupted point is released"
    resumed = start(args)
    assert resumed.wait(timeout=600) == 0
    rows = read_rows(tmp_path / "run" / "results.csv")
    assert len(rows) == 3 * 2 * 3 and len({(r["method"], r["seed"], r["fraction"]) for r in rows}) == len(rows)


# -- bad input, one line each ---------------------------------------------------------------------
def _write_bad_inputs(tmp_path: Path, corpus: Path, tiny_models) -> dict:
    made = {}
    made["BINARY"] = tmp_path / "binary.txt"
    made["BINARY"].write_bytes(bytes(range(256)) * 8)
    made["LATIN1"] = tmp_path / "latin1.txt"
    made["LATIN1"].write_bytes("caf\xe9 au lait\n".encode("latin-1") * 50)
    made["BADJSON"] = tmp_path / "bad.jsonl"
    made["BADJSON"].write_text('{"text": "fine"}\n{"text": "broken"\n')
    made["NUMBER"] = tmp_path / "number.jsonl"
    made["NUMBER"].write_text('{"text": "fine"}\n{"text": 5}\n')
    made["AFILE"] = tmp_path / "a-file"
    made["AFILE"].write_text("not a folder")
    import shutil

    made["TRUNCATED"] = tmp_path / "truncated-model"
    shutil.copytree(tiny_models["llama"], made["TRUNCATED"])
    weights = made["TRUNCATED"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    made["EMPTY"] = tmp_path / "empty.yaml"
    made["EMPTY"].write_text("")
    made["BROKEN"] = tmp_path / "broken.yaml"
    made["BROKEN"].write_text("model: [unclosed\n")
    made["MISSPELT"] = tmp_path / "misspelt.yaml"
    made["MISSPELT"].write_text("ablation:\n  fractons: [0.5]\n")
    made["PARQUET"] = tmp_path / "broken.parquet"
    made["PARQUET"].write_bytes(b"PAR1" + bytes(200))
    made["VISION"] = tiny_models["llama"].parent.parent / "vision" / "hf"
    made["NOTOKENIZER"] = tmp_path / "no-tokenizer"
    made["NOTOKENIZER"].mkdir()
    for f in ("config.json", "model.safetensors", "generation_config.json"):
        if (tiny_models["llama"] / f).exists():
            shutil.copy(tiny_models["llama"] / f, made["NOTOKENIZER"] / f)
    return made


BAD = {
    "binary text file": (["--data.path", "BINARY"], r"'.*binary.txt' is binary, not text \(line \d+\); convert it"),
    "text not UTF-8": (["--data.path", "LATIN1"], r"'.*latin1.txt' is not UTF-8 text \(line 1\); convert it"),
    "malformed JSON line": (["--data.path", "BADJSON"], r"'.*bad.jsonl' line 2 is not valid JSON"),
    "non-string text value": (
        ["--data.path", "NUMBER"],
        r"row 2 of '.*number.jsonl' holds a non-text value \(int\) in column 'text'",
    ),
    "truncated weights": (
        ["--model.name_or_path", "TRUNCATED"],
        r"could not read the model in '.*truncated-model' .*incomplete or corrupt",
    ),
    "no tokenizer in the model folder": (
        ["--model.name_or_path", "NOTOKENIZER"],
        r"no usable tokenizer in '.*no-tokenizer'.*--model.tokenizer PATH",
    ),
    "root is a file": (["--root", "AFILE"], r"--root '.*a-file' is a file, not a folder"),
    "cache_dir is a file": (
        ["--ablation.cache_dir", "AFILE"],
        r"--ablation.cache_dir '.*a-file' is a file, not a folder",
    ),
    "name escaping the root": (
        ["--name", "../elsewhere"],
        r"--name '../elsewhere' must be a plain folder name inside --root",
    ),
    "seed beyond 63 bits": (
        ["--ablation.seeds", f"[{2**64}]"],
        r"each of ablation.seeds must be an integer in \[0, 2\*\*63\)",
    ),
    "data seed beyond 63 bits": (["--data.seed", str(2**64)], r"data.seed must be an integer in \[0, 2\*\*63\)"),
    "near-duplicate fractions": (
        ["--ablation.fractions", "[0.5,0.5000001]"],
        r"ablation.fractions holds 0.5 and 0.5000001, one point at 6 decimals",
    ),
    "histograms too large": (
        ["--ablation.n_bins", str(2**40)],
        r"the calibration histograms .* need .* but .* are free on cpu; lower --ablation.n_bins",
    ),
    "eps too large for float32": (["--ablation.eps", "1e300"], r"ablation.eps 1e\+300 is outside \[1e-08, 10000\]"),
    "eps too small for float32": (["--ablation.eps", "1e-300"], r"ablation.eps 1e-300 is outside \[1e-08, 10000\]"),
    "name too long": (
        ["--name", "n" * 300],
        r"--name 'n+' must be a plain folder name inside --root \(printable, at most 200 bytes",
    ),
    "name with a newline": (["--name", "a\nb"], r"--name 'a\\nb' must be a plain folder name"),
    "an integer option given text": (
        ["--data.max_tokens", "abc"],
        r"--data.max_tokens: 'abc' is not an integer; see python -m ablate_lit test --help",
    ),
    "a list given without brackets": (
        ["--ablation.methods", "zero"],
        r"--ablation.methods: 'zero' is not a list in brackets, e.g. \[zero,mean\]",
    ),
    "a boolean given a word": (["--data.prepend_bos", "maybe"], r"--data.prepend_bos: 'maybe' is not true or false"),
    "an unknown option": (["--data.foo", "1"], r"unknown option --data.foo; see python -m ablate_lit test --help"),
    "a layer named twice": (["--ablation.layers", "[1,-1]"], r"ablation.layers \[1, -1\] names layer 1 twice"),
    "resample:data beyond the calibration inputs": (
        ["--ablation.methods", "[zero,resample:data]", "--ablation.n_resample", "64"],
        r"resample:data draws 64 rows from \d+ calibration inputs; lower --ablation.n_resample to at most \d+ or "
        r"raise --data.calib_tokens$",
    ),
    "a misspelt option": (
        ["--ablation.metods", "[zero]"],
        r"unknown option --ablation.metods \(did you mean --ablation.methods\?\); see python -m ablate_lit test",
    ),
    "a misspelt setting in a config file": (
        ["--config", "MISSPELT"],
        r"unknown option --ablation.fractons \(did you mean --ablation.fractions\?\)",
    ),
    "an unknown class": (
        ["--model", "ablate_lit.FooAblation"],
        r"--model: unknown class 'FooAblation'; use ablate_lit.CausalLMAblation",
    ),
    "a missing config file": (
        ["--config", "/nonexistent/config.yaml"],
        r"--config file '/nonexistent/config.yaml' not found",
    ),
    "an empty config file": (["--config", "EMPTY"], r"the config is empty or not a mapping"),
    "a config that is not YAML": (["--config", "BROKEN"], r"the config is not valid YAML \(while parsing"),
    "a generator that does not exist": (
        ["--model.generator", "/nonexistent/generator"],
        r"--model.generator '/nonexistent/generator' not found",
    ),
    "a generator that is not a causal LM": (
        ["--model.generator", "VISION"],
        r"--model.generator '.*' must be a causal LM to write text",
    ),
    "a tokenizer folder that does not exist": (
        ["--model.tokenizer", "/nonexistent/tok"],
        r"--model.tokenizer '/nonexistent/tok' not found",
    ),
    "a corrupt parquet file": (
        ["--data.path", "PARQUET"],
        r"could not read '.*broken.parquet' \(.*\); the file may be truncated or corrupt",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_gets_one_line_error(capsys, tiny_models, corpus, tmp_path, case):
    import re

    made = _write_bad_inputs(tmp_path, corpus, tiny_models)
    extra, pattern = BAD[case]
    extra = [str(made.get(e, e)) for e in extra]
    code, out, err = run(capsys, *tiny_args(tiny_models["llama"], corpus, tmp_path / "runs", *SMALL), *extra)
    line = one_line_error(err)
    assert code == 2 and re.search(pattern, line), line
    assert "[1/" not in out  # refused before the first evaluation


def test_a_model_folder_without_tokenizer_runs_with_the_tokenizer_option(capsys, tiny_models, corpus, tmp_path):
    """The same weights with the tokenizer named by the option give the numbers of the folder that has it."""
    made = _write_bad_inputs(tmp_path, corpus, tiny_models)
    code, out, err = run(
        capsys,
        *tiny_args(made["NOTOKENIZER"], corpus, tmp_path / "runs", *SMALL),
        "--model.tokenizer",
        tiny_models["llama"],
    )
    assert code == 0, err
    code, _, err = run(capsys, *tiny_args(tiny_models["llama"], corpus, tmp_path / "with", *SMALL))
    assert code == 0, err
    scores = ("method", "fraction", "top1", "ce", "n_tokens", "n_ablated")
    given = [{k: r[k] for k in scores} for r in read_rows(tmp_path / "runs" / "run" / "results.csv")]
    own = [{k: r[k] for k in scores} for r in read_rows(tmp_path / "with" / "run" / "results.csv")]
    assert len(given) == 2 * 3 and given == own


def test_a_masked_run_with_nothing_to_score_is_refused(capsys, tiny_masked, corpus, tmp_path):
    args = tiny_args(
        tiny_masked["bert"],
        corpus,
        tmp_path,
        *SMALL,
        "--model",
        "ablate_lit.MaskedLMAblation",
        "--model.name_or_path",
        tiny_masked["bert"],
        "--data",
        "ablate_lit.MaskedTextData",
        "--data.path",
        corpus,
        "--data.mask_prob",
        "0.02",
    )
    code, out, err = run(capsys, *args)
    assert code == 2 and "no evaluation token is selected for scoring" in one_line_error(err)
    assert "raise --data.mask_prob or --data.context_length" in err


def test_a_full_disk_while_saving_the_cache_is_one_line(capsys, tiny_models, corpus, tmp_path, monkeypatch):
    import errno

    import torch

    def no_space(obj, f, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    code, out, err = run(capsys, *tiny_args(tiny_models["llama"], corpus, tmp_path, *SMALL))
    line = one_line_error(err)
    assert code == 2 and "no space left on the device holding" in line and ".calibration_cache" in line
    assert not list((tmp_path / ".calibration_cache").glob(".*.tmp*"))


def test_report_out_that_is_a_file_is_one_line(capsys, tiny_models, corpus, tmp_path):
    assert run(capsys, *tiny_args(tiny_models["llama"], corpus, tmp_path, *SMALL))[0] == 0
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "afile")])
    assert exit_info.value.code == 2 and "--out" in capsys.readouterr().err


def test_the_shipped_tiny_configs_without_their_assets_are_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("ABLATE_LIT_ASSETS", raising=False)
    code, out, err = run(
        capsys, "--config", Path(__file__).parents[1] / "configs" / "tiny-masked.yaml", "--root", tmp_path
    )
    assert code == 2 and "reads the environment variable ABLATE_LIT_ASSETS, which is not set" in one_line_error(err)


def test_an_image_folder_without_class_folders_is_one_line(capsys, tiny_vision, image_folder, tmp_path):
    import shutil

    flat = tmp_path / "flat"
    flat.mkdir()
    for f in sorted((image_folder / "class_0").iterdir())[:4]:
        shutil.copy(f, flat / f.name)
    args = [
        "--model",
        "ablate_lit.VisionAblation",
        "--model.name_or_path",
        tiny_vision["timm"],
        "--data",
        "ablate_lit.ImageData",
        "--data.path",
        flat,
        "--data.max_images",
        2,
        "--data.calib_images",
        2,
        "--root",
        tmp_path,
        "--name",
        "run",
        "--trainer.accelerator",
        "cpu",
    ]
    code, out, err = run(capsys, *args)
    assert code == 2 and "has 0 class sub-folder(s) with images; it needs one sub-folder per class" in one_line_error(
        err
    )


def test_a_corrupt_image_is_named(capsys, tiny_vision, image_folder, tmp_path):
    import shutil

    images = tmp_path / "images"
    shutil.copytree(image_folder, images)
    victim = sorted((images / "class_2").iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:60])  # a truncated PNG
    args = [
        "--model",
        "ablate_lit.VisionAblation",
        "--model.name_or_path",
        tiny_vision["timm"],
        "--data",
        "ablate_lit.ImageData",
        "--data.path",
        images,
        "--data.max_images",
        25,
        "--data.calib_images",
        25,
        "--root",
        tmp_path,
        "--name",
        "run",
        "--trainer.accelerator",
        "cpu",
        "--trainer.enable_progress_bar",
        "false",
    ]
    code, out, err = run(capsys, *args)
    assert code == 2 and f"image {victim} cannot be read" in one_line_error(err)


def test_csv_and_points_agree(capsys, tiny_models, corpus, tmp_path):
    assert run(capsys, *tiny_args(tiny_models["llama"], corpus, tmp_path, *SMALL))[0] == 0
    with open(tmp_path / "run" / "results.csv") as fh:
        assert next(csv.reader(fh)) == COLUMNS
    points = [json.loads(p.read_text()) for p in (tmp_path / "run" / "points").glob("*.json")]
    identity = json.loads((tmp_path / "run" / "identity.json").read_text())
    assert len(points) == len(read_rows(tmp_path / "run" / "results.csv")) == 2 * 3
    assert all(p["run_id"] == identity["run_id"] == p["row"]["run_id"] for p in points)
    assert all(p["identity"]["model_fingerprint"] == identity["model_fingerprint"] for p in points)


# -- hand-edited or damaged run folders (found by trying) ----------------------------------------------
def _finished_run(capsys, tiny_models, corpus, tmp_path, *extra):
    args = tiny_args(tiny_models["llama"], corpus, tmp_path, *SMALL, *extra)
    assert run(capsys, *args)[0] == 0
    return args, tmp_path / "run"


def test_a_row_file_renamed_or_edited_by_hand_is_reported_and_replaced(capsys, tiny_models, corpus, tmp_path):
    args, folder = _finished_run(capsys, tiny_models, corpus, tmp_path)
    reference = read_rows(folder / "results.csv")
    points = folder / "points"
    (points / "zero__s1__f0.500000.json").write_text(
        (points / "zero__s0__f0.500000.json").read_text()
    )  # copied under another name
    record = json.loads((points / "mean__s0__f0.500000.json").read_text())
    record["row"]["ce"] = "1.00000000"  # a number edited by hand
    (points / "mean__s0__f0.500000.json").write_text(json.dumps(record))
    code, out, err = run(capsys, *args, "--ablation.seeds", "[0,1]")
    assert code == 0, err
    assert "zero__s1__f0.500000.json: its file name does not match its row" in out
    assert "mean__s0__f0.500000.json: edited by hand (its checksum does not match)" in out
    rows = {(r["method"], r["seed"], r["fraction"]): r["ce"] for r in read_rows(folder / "results.csv")}
    assert ("zero", "1", "0.5") in rows  # the seed-1 point is evaluated and kept
    assert rows[("mean", "0", "0.5")] == next(
        r["ce"] for r in reference if (r["method"], r["seed"], r["fraction"]) == ("mean", "0", "0.5")
    )
    code, out, err = run(capsys, *args, "--ablation.seeds", "[0,1]")
    assert code == 0 and "warning" not in out


@pytest.mark.parametrize(
    "claim",
    [
        lambda: {"host": HOST, "pid": 1, "start": -1, "time": 0},  # pid 1 lives, but it is not the process that claimed
        lambda: [1],
        lambda: {"host": HOST, "pid": "abc"},
    ],
)
def test_a_stale_or_malformed_claim_does_not_block_a_run(capsys, tiny_models, corpus, tmp_path, claim):
    args = tiny_args(tiny_models["llama"], corpus, tmp_path, *SMALL)
    points = tmp_path / "run" / "points"
    points.mkdir(parents=True)
    (points / "peak__s0__f0.500000.claim").write_text(json.dumps(claim()))
    (points / "zero__s0__f0.500000.claim").write_text(json.dumps(claim()))
    code, out, err = run(capsys, *args)
    assert code == 0, err
    assert "waiting for" not in out and len(read_rows(tmp_path / "run" / "results.csv")) == 6


@pytest.mark.parametrize(
    "damage,message",
    [
        (
            lambda f: (f / "identity.json").write_text(
                (f / "identity.json").read_text().replace('"eps": 0.01', '"eps": 0.02')
            ),
            "identity.json' was edited by hand",
        ),
        (lambda f: (f / "identity.json").write_text("[1, 2]"), "identity.json' is unreadable"),
        (
            lambda f: (__import__("shutil").rmtree(f / "points"), (f / "points").write_text("x")),
            "points' is a file, not the folder",
        ),
        (
            lambda f: __import__("shutil").rmtree(f / "points"),
            "results.csv in .* holds 6 row\\(s\\) that points/ lacks",
        ),
    ],
)
def test_a_damaged_run_folder_is_refused_in_one_line(capsys, tiny_models, corpus, tmp_path, damage, message):
    import re

    args, folder = _finished_run(capsys, tiny_models, corpus, tmp_path)
    damage(folder)
    code, out, err = run(capsys, *args)
    assert code == 2 and re.search(message, one_line_error(err)), err


def test_report_keeps_apart_runs_of_one_model_with_other_data(capsys, tiny_models, corpus, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text((corpus / "part1.txt").read_text() + "\n\n" + (corpus / "part0.txt").read_text())
    for name, path in (("a", corpus), ("b", other)):
        args = tiny_args(tiny_models["llama"], path, tmp_path, *SMALL)
        assert run(capsys, *[a if a != "run" else f"run-{name}" for a in args])[0] == 0
    main(["report", str(tmp_path / "run-a"), str(tmp_path / "run-b"), "--out", str(tmp_path / "rep")])
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| |"))
    assert "llama (run-a)" in header and "llama (run-b)" in header


@pytest.mark.slow
def test_a_signal_while_the_model_loads_is_one_line(tiny_models, corpus, tmp_path):
    patch = (
        "import functools\nimport ablate_lit.families.causal_lm as m\n_orig = m.CausalLMAblation.__init__\n"
        "@functools.wraps(_orig)\ndef _patched(self, *a, **k):\n    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(5)\n    _orig(self, *a, **k)\nm.CausalLMAblation.__init__ = _patched\n"
    )
    proc = launch("test", *tiny_args(tiny_models["llama"], corpus, tmp_path), patch=patch, timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "stopped by SIGTERM: no evaluation had started" in one_line_error(proc.stderr)


def test_a_bad_setting_is_refused_before_the_seed_is_set_or_the_model_loads(capsys, corpus, tmp_path):
    code, out, err = run(
        capsys,
        *tiny_args(tmp_path / "no-such-model", corpus, tmp_path / "runs", *SMALL),
        "--ablation.methods",
        "[zero,mode]",
    )
    assert code == 2 and "unknown ablation method 'mode' (did you mean 'mean'?)" in one_line_error(err)
    assert "Seed set" not in out + err and "no-such-model" not in err
