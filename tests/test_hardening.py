"""A run killed at any moment resumes to the same results; caches and result files are never half-used."""

from __future__ import annotations

import csv
import shutil

import pytest
from helpers import launch, read_rows, run, tiny_args

from ablate_lit.store.rows import COLUMNS as COLUMNS_EXPECTED

# Each patch makes the process SIGKILL itself at one moment of the run (no cleanup code runs).
KILLS = {
    "during calibration": """
from ablate_lit.calibration.callbacks import StatisticsCallback
_orig = StatisticsCallback.on_validation_batch_start
def _patched(self, trainer, module, batch, idx, dl=0):
    if idx == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return _orig(self, trainer, module, batch, idx, dl)
StatisticsCallback.on_validation_batch_start = _patched
""",
    "between points": """
from ablate_lit.runner.writer import ResultWriter
_orig, _n = ResultWriter.begin, [0]
def _patched(self, *a):
    _n[0] += 1
    if _n[0] == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    return _orig(self, *a)
ResultWriter.begin = _patched
""",
    "while writing results": """
_orig, _n = os.replace, [0]
def _patched(src, dst):
    if str(dst).endswith("results.csv"):
        _n[0] += 1
        if _n[0] == 3:  # the new file is written in full beside the old one, not yet moved
            os.kill(os.getpid(), signal.SIGKILL)
    return _orig(src, dst)
os.replace = _patched
""",
    "while saving the calibration cache": """
_orig = os.replace
def _patched(src, dst):
    if str(dst).endswith(".pt"):
        os.kill(os.getpid(), signal.SIGKILL)
    return _orig(src, dst)
os.replace = _patched
""",
}


def run_child(args, patch: str = ""):
    """The CLI's test command in a child process (``helpers.launch``), after ``patch``."""
    return launch("test", *args, patch=patch)


@pytest.fixture(scope="module")
def reference(tiny_models, corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    proc = run_child(
        tiny_args(tiny_models["qwen2"], corpus, root, "--ablation.methods", "[zero,peak,resample:random_tokens]")
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return read_rows(root / "run" / "results.csv")


@pytest.mark.slow
@pytest.mark.parametrize("moment", sorted(KILLS))
def test_killed_run_resumes_to_the_same_results(tiny_models, corpus, tmp_path, reference, moment):
    args = tiny_args(tiny_models["qwen2"], corpus, tmp_path, "--ablation.methods", "[zero,peak,resample:random_tokens]")
    killed = run_child(args, KILLS[moment])
    assert killed.returncode == -9, killed.stderr[-2000:]
    results = tmp_path / "run" / "results.csv"
    if results.exists():  # whatever is there is whole: a header and complete rows only
        with open(results, newline="") as fh:
            rows = list(csv.reader(fh))
        assert rows[0] == COLUMNS_EXPECTED and all(len(r) == len(COLUMNS_EXPECTED) for r in rows)
        assert len(rows) - 1 < len(reference)
    resumed = run_child(args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert read_rows(results) == reference
    assert not list((tmp_path / "run").glob(".*.tmp*")), "a killed write's temporary file is cleared on resume"
    assert not list((tmp_path / ".calibration_cache").glob(".*.tmp*")), "so is a killed cache save's"


@pytest.mark.slow
def test_corrupt_or_foreign_cache_is_rebuilt_not_used(tiny_models, corpus, tmp_path, reference):
    args = tiny_args(
        tiny_models["qwen2"],
        corpus,
        tmp_path,
        "--ablation.methods",
        "[zero,peak,resample:random_tokens]",
        "--ablation.cache_dir",
        tmp_path / "cache",
    )
    assert run_child(args).returncode == 0
    caches = sorted((tmp_path / "cache").glob("*.pt"))
    stats = next(p for p in caches if p.name.startswith("stats-"))
    stats.write_bytes(b"not a torch file")  # corrupt
    other = next(p for p in caches if p.name.startswith("resample-"))
    import torch

    obj = torch.load(other, weights_only=False)
    obj["key"] = "made-with-other-settings"
    torch.save(obj, other)  # foreign
    shutil.rmtree(tmp_path / "run")  # no results: every point is evaluated again, from the caches
    proc = run_child(args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "unreadable" in proc.stderr + proc.stdout and "other settings" in proc.stderr + proc.stdout
    assert read_rows(tmp_path / "run" / "results.csv") == reference


def test_nan_activations_in_calibration_are_counted_and_refused(capsys, tiny_models, corpus, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    with torch.no_grad():
        model.model.layers[1].self_attn.v_proj.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "nan_model")
    AutoTokenizer.from_pretrained(tiny_models["llama"]).save_pretrained(tmp_path / "nan_model")
    code, out, err = run(capsys, *tiny_args(tmp_path / "nan_model", corpus, tmp_path))
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err
    assert "NaN/inf pre-out activations in calibration (layers [1])" in lines[0]
    assert "--trainer.precision 32" in lines[0]


def test_non_finite_scores_are_counted_and_flagged_in_the_tables():
    import torch

    from ablate_lit.report.summary import summary_table
    from ablate_lit.report.tables import table
    from ablate_lit.stats import TokenScores

    scores = TokenScores()
    logits = torch.randn(6, 5)
    logits[2] = float("nan")
    scores.update(logits, torch.tensor([0, 1, 2, 3, 4, 0]))
    out = scores.compute()
    assert int(out["nonfinite"]) == 1 and not torch.isfinite(out["ce"])
    base = {"model": "m", "selection": "per_layer", "n_ablated": 0, "n_tokens": 6}
    rows = [
        {**base, "method": "zero", "seed": 0, "fraction": "0", "top1": "0.5", "ce": "2.0", "evaluated_as": "baseline"},
        {**base, "method": "zero", "seed": 0, "fraction": "0.5", "top1": "0.1", "ce": "nan", "evaluated_as": "zero"},
    ]
    assert "non-finite!" in summary_table(rows, ["zero"], [0.0, 0.5])
    assert "non-finite!" in table(rows, [0.5])[0]
