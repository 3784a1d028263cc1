"""Faults from outside a run (its folder removed, process limits) and commands given the wrong kind
of path: each ends in one line, and no finished result is lost without a word."""

from __future__ import annotations

import resource
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import child_env, cli, launch, one_line_error, read_rows, run, tiny_args

SMALL = ["--ablation.methods", "[zero,mean]", "--ablation.seeds", "[0]", "--ablation.log_histograms", "false"]


def test_a_run_folder_removed_while_the_run_writes_fails_and_the_rerun_restores_every_row(
    capsys, tiny_models, corpus, tmp_path, monkeypatch
):
    from ablate_lit.runner.writer import ResultWriter

    clean_args = tiny_args(tiny_models["llama"], corpus, tmp_path / "clean", *SMALL)
    code, _, err = run(capsys, *clean_args)
    assert code == 0, err
    clean = read_rows(tmp_path / "clean" / "run" / "results.csv")

    original, calls = ResultWriter.begin, []

    def removing(self, point, *args):
        calls.append(point)
        if len(calls) == 3:  # two points are stored by now
            shutil.rmtree(self.run_dir)
        return original(self, point, *args)

    monkeypatch.setattr(ResultWriter, "begin", removing)
    args = tiny_args(tiny_models["llama"], corpus, tmp_path / "runs", *SMALL)
    code, _, err = run(capsys, *args)
    line = one_line_error(err)
    assert code == 2 and "was removed or replaced while this run wrote to it" in line, line
    assert "3 row(s) written before are gone" in line and "run the same command again" in line

    monkeypatch.setattr(ResultWriter, "begin", original)
    code, _, err = run(capsys, *args)
    assert code == 0, err
    scores = ("method", "seed", "fraction", "top1", "ce", "n_tokens")
    again = read_rows(tmp_path / "runs" / "run" / "results.csv")
    assert [{k: r[k] for k in scores} for r in again] == [{k: r[k] for k in scores} for r in clean]


def test_rows_deleted_by_hand_during_a_run_fail_it(capsys, tiny_models, corpus, tmp_path, monkeypatch):
    from ablate_lit.runner.writer import ResultWriter

    original, calls = ResultWriter.begin, []

    def deleting(self, point, *args):
        calls.append(point)
        if len(calls) == 3:
            for row in Path(self.run_dir, "points").glob("*.json"):
                row.unlink()
        return original(self, point, *args)

    monkeypatch.setattr(ResultWriter, "begin", deleting)
    code, _, err = run(capsys, *tiny_args(tiny_models["llama"], corpus, tmp_path, *SMALL))
    line = one_line_error(err)
    assert code == 2 and "result row(s) this run wrote to" in line and "are gone" in line, line


def _run_limited(args, limit, value) -> subprocess.CompletedProcess:
    """The CLI in a child process whose resource ``limit`` is ``value`` (soft; the hard limit untouched)."""

    def apply():
        resource.setrlimit(limit, (value, resource.getrlimit(limit)[1]))

    env = child_env(PYTHONPATH=Path(__file__).resolve().parents[1])
    return launch("test", *args, env=env, preexec_fn=apply, timeout=600)


@pytest.mark.slow
def test_a_file_size_limit_while_saving_the_cache_is_one_line(tiny_models, corpus, tmp_path):
    """200 kB lets the run folder's small files through and stops the statistics cache (~270 kB)."""
    proc = _run_limited(tiny_args(tiny_models["llama"], corpus, tmp_path, *SMALL), resource.RLIMIT_FSIZE, 200_000)
    line = one_line_error(proc.stderr)
    assert proc.returncode == 2 and "file size limit of 0.2 MiB of this process (ulimit -f)" in line, line
    assert "stats-" in line and ".calibration_cache" in line and "--ablation.n_bins" in line
    assert not list((tmp_path / ".calibration_cache").glob(".*.tmp*"))


@pytest.mark.slow
def test_an_address_space_limit_below_free_memory_is_read_by_the_memory_check(tiny_models, corpus, tmp_path):
    """Histograms of 10 GiB fit in this machine's free memory but not under an 8 GiB address space."""
    from ablate_lit.common.resources import cpu_limits

    if min(cpu_limits())[0] < 12 * 2**30:
        pytest.skip("needs 12 GiB of free memory, so that only the address-space limit refuses 10 GiB")
    n_bins = 10 * 2**30 // (2 * 32 * 4)  # tiny llama: 2 layers x 32 neurons, int32 counts
    args = [*tiny_args(tiny_models["llama"], corpus, tmp_path, *SMALL), "--ablation.n_bins", n_bins]
    proc = _run_limited(args, resource.RLIMIT_AS, 8 * 2**30)
    line = one_line_error(proc.stderr)
    assert proc.returncode == 2 and "are free on cpu under this process's address-space limit" in line, line
    assert f"lower --ablation.n_bins (now {n_bins})" in line


def test_cache_clear_with_a_root_that_is_a_file_is_refused(capsys, tmp_path):
    (tmp_path / "a-file").write_text("")
    for action in ("clear", "list"):
        code, out, err = cli(capsys, "cache", action, "--root", tmp_path / "a-file")
        assert code == 2 and "--root" in one_line_error(err) and "is a file, not a folder" in err, err
        assert "removed" not in out


def test_a_refused_run_leaves_no_root_folder_behind(capsys, tiny_models, corpus, tmp_path):
    root = tmp_path / "new" / "root"
    args = tiny_args(tmp_path / "no-such-model", corpus, root, *SMALL)
    code, _, err = run(capsys, *args)
    assert code == 2 and "not found" in one_line_error(err)
    assert not (tmp_path / "new").exists()
    code, _, err = run(capsys, *tiny_args(tiny_models["llama"], corpus, root, *SMALL))  # made by the first write
    assert code == 0 and (root / "run" / "results.csv").is_file(), err


def test_report_refuses_bad_pairs_before_writing_anything(capsys, tiny_models, corpus, tmp_path):
    code, _, err = run(capsys, *tiny_args(tiny_models["llama"], corpus, tmp_path, *SMALL))
    assert code == 0, err
    out = tmp_path / "report"
    code, _, err = cli(capsys, "report", tmp_path / "run", "--out", out, "--pairs", "peak,mean")
    assert code == 2 and "--pairs 'peak,mean' must be two methods of the runs" in one_line_error(err)
    assert not out.exists()


def test_several_devices_with_no_gpu_are_refused_unless_the_cpu_is_named(capsys, tiny_models, corpus, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: several devices are GPUs")
    args = tiny_args(tiny_models["llama"], corpus, tmp_path, *SMALL)
    args[args.index("--trainer.accelerator") + 1] = "auto"
    code, _, err = run(capsys, *args, "--trainer.devices", 2)
    line = one_line_error(err)
    assert code == 2 and "finds no GPU here, so it would start 2 CPU processes" in line, line
    assert "pass --trainer.accelerator cpu" in line
    import ablate_lit

    with pytest.raises(ablate_lit.AblateError, match=r"trainer=\{'devices': 2\} finds no GPU here"):
        ablate_lit.run(tiny_models["llama"], [str(corpus)], trainer={"devices": 2}, root=tmp_path / "api")


def test_paired_differences_from_few_windows_carry_a_caution(capsys, tiny_models, corpus, tmp_path):
    code, _, err = run(capsys, *tiny_args(tiny_models["llama"], corpus, tmp_path, *SMALL))
    assert code == 0, err
    code, out, err = cli(capsys, "report", tmp_path / "run", "--out", tmp_path / "report")
    assert code == 0, err
    text = (tmp_path / "report" / "paired.md").read_text()
    assert "Caution: only 8 evaluation windows (or images) behind these intervals" in text and "Caution" in out


def test_progress_says_top1_in_percent_and_warnings_use_the_front_ends_words(capsys, tiny_models, corpus, tmp_path):
    import re

    args = [
        *tiny_args(tiny_models["llama"], corpus, tmp_path, *SMALL),
        "--ablation.n_bins",
        2,
        "--ablation.methods",
        "[peak]",
    ]
    code, out, _ = run(capsys, *args)
    assert code == 0 and re.search(r"\] +peak seed 0  50% ablated: top1 \d+\.\d\d%  ce ", out), out
    assert "raise --ablation.n_bins (now 2) so their peaks are exact" in out

    from transformers import AutoModelForCausalLM, AutoTokenizer

    import ablate_lit

    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    texts = [p.read_text() for p in sorted(corpus.glob("*.txt"))]
    ablate_lit.run(model, texts, tokenizer=tokenizer, methods=["peak"], seeds=[0], fractions=[0.5], n_bins=2,
                   context_length=16, max_tokens=64, calib_tokens=64, root=tmp_path / "api", verbose=False,
                   trainer={"accelerator": "cpu", "enable_progress_bar": False})  # fmt: skip
    out = capsys.readouterr().out
    assert "raise n_bins= (now 2) so their peaks are exact" in out and "calibration:" not in out  # warnings only
