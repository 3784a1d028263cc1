"""The real CLI: shipped configs, a whole run's outputs, resuming after a crash, one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch.nn.functional as F
from helpers import data, module, read_rows, run, run_rows, tiny_args

from ablate_lit.entry.cli import main
from ablate_lit.runner.writer import ResultWriter

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_shipped_config_parses(capsys, monkeypatch, assets, config):
    monkeypatch.setenv("ABLATE_LIT_ASSETS", str(assets))
    code, out, err = run(capsys, "--config", config, "--print_config")
    assert code == 0, err
    assert "ablation:" in out and "class_path: ablate_lit." in out


@pytest.mark.slow
def test_a_whole_run_writes_results_table_config_and_curves(capsys, tiny_models, corpus, tmp_path):
    code, out, err = run(capsys, *tiny_args(tiny_models["llama"], corpus, tmp_path))
    assert code == 0, err
    run_dir = tmp_path / "run"
    rows = read_rows(run_dir / "results.csv")
    assert len(rows) == 3 * 2 * 6  # fractions x seeds x methods
    base = {r["top1"] + r["ce"] for r in rows if r["fraction"] == "0"}
    assert len(base) == 1  # one unablated evaluation stands for every 0% row
    for method in ("zero", "peak"):
        full = {r["ce"] for r in rows if r["fraction"] == "1" and r["method"] == method}
        assert len(full) == 1  # the same set at 100% for every seed
    assert {r["n_ablated"] for r in rows if r["fraction"] == "0.5"} == {"32"}  # half of 2 layers x 32 neurons

    # the baseline equals a plain forward over the same evaluation windows, computed here
    mod = module(tiny_models["llama"])
    d = data(corpus, mod)
    logits = mod.model(input_ids=d.eval_windows).logits[:, :-1]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), d.eval_windows[:, 1:].reshape(-1))
    assert float(rows[0]["ce"]) == pytest.approx(float(ce), rel=1e-5)
    assert int(rows[0]["n_tokens"]) == d.eval_windows[:, 1:].numel()

    summary = (run_dir / "summary.md").read_text()
    assert "| baseline |" in summary and "| resample:generated |" in summary and "±" in summary
    assert "| baseline |" in out
    assert "ablation:" in (run_dir / "config.yaml").read_text()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb" / "peak_seed1"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("ablation/top1_percent")] == [0, 50, 100]
    half = next(r for r in rows if r["method"] == "peak" and r["seed"] == "1" and r["pct"] == "50")
    assert acc.Scalars("ablation/top1_percent")[1].value == pytest.approx(
        100 * float(half["top1"]), rel=1e-6
    )  # %, not a fraction
    cal = EventAccumulator(str(run_dir / "tb" / "calibration"))
    cal.Reload()
    assert {"neurons/layer_00", "distribution/layer_average", "distribution/atypical"} <= set(cal.Tags()["images"])
    with open(run_dir / "neurons.csv") as fh:
        neurons = list(csv.DictReader(fh))
    assert len(neurons) == 2 * 32 and {"mean", "peak", "std", "skew", "bimodality"} <= set(neurons[0])
    assert (run_dir / "neurons" / "layer_average.png").stat().st_size > 1000


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_results(capsys, tiny_models, corpus, tmp_path, monkeypatch):
    args = tiny_args(tiny_models["opt"], corpus, tmp_path / "a")
    assert run(capsys, *args)[0] == 0
    reference = read_rows(tmp_path / "a" / "run" / "results.csv")

    original = ResultWriter.on_test_epoch_end
    calls = []

    def crash_after_five(self, trainer, pl_module):
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt  # killed between two points
        original(self, trainer, pl_module)

    monkeypatch.setattr(ResultWriter, "on_test_epoch_end", crash_after_five)
    resumed_args = tiny_args(tiny_models["opt"], corpus, tmp_path / "b")
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        main(["test", *map(str, resumed_args)])
    partial = read_rows(tmp_path / "b" / "run" / "results.csv")
    assert 0 < len(partial) < len(reference)
    monkeypatch.setattr(ResultWriter, "on_test_epoch_end", original)
    code, out, err = run(capsys, *resumed_args)
    assert code == 0, err
    assert "5 already in" in out
    assert read_rows(tmp_path / "b" / "run" / "results.csv") == reference


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert")
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    return folder


BAD = {
    "encoder as causal LM": (
        ["--model.name_or_path", "BERT"],
        "'bert' is a bidirectional encoder.*use --model ablate_lit.MaskedLMAblation",
    ),
    "missing model folder": (
        ["--model.name_or_path", "/nonexistent/model"],
        "model folder '/nonexistent/model' not found",
    ),
    "missing data file": (
        ["--data.path", "/nonexistent/text.txt"],
        "data file or folder '/nonexistent/text.txt' not found",
    ),
    "eps not positive": (["--ablation.eps", "0"], "ablation.eps must be a positive number"),
    "negative eps": (["--ablation.eps", "-0.1"], "ablation.eps must be a positive number"),
    "fraction above 1": (["--ablation.fractions", "[0,1.5]"], r"fractions holds 1.5, outside \[0, 1\]"),
    "fraction below 0": (["--ablation.fractions", "[-0.1]"], r"outside \[0, 1\]"),
    "unknown method": (
        ["--ablation.methods", "[zero,mode]"],
        r"unknown ablation method 'mode' \(did you mean 'mean'\?\); use one of: zero",
    ),
    "peak eps not a multiple": (
        ["--ablation.methods", "[peak:eps=0.015]"],
        "peak:eps=0.015: 0.015 is not a multiple of ablation.eps 0.01",
    ),
    "unknown resample source": (["--ablation.methods", "[resample:noise]"], "unknown resample source 'noise'"),
    "token budget beyond data": (
        ["--data.max_tokens", "10000000"],
        "the data holds .* tokens but .* are needed.*lower --data.max_tokens",
    ),
    "context too short": (["--data.context_length", "1"], "data.context_length must be at least 2"),
    "context beyond the model": (
        ["--data.context_length", "500"],
        "data.context_length 500 exceeds the model's 128 positions",
    ),
    "batch size zero": (["--data.batch_size", "0"], "data.batch_size must be a positive integer or auto, got 0"),
    "batch size word": (["--data.batch_size", "many"], "data.batch_size must be a positive integer or auto, got many"),
    "too few bins": (["--ablation.n_bins", "1"], "ablation.n_bins must be at least 2"),
    "unknown selection": (
        ["--ablation.selection", "random"],
        "unknown ablation.selection 'random'; use one of: per_layer, global",
    ),
    "unknown bin alignment": (["--ablation.bin_alignment", "left"], "unknown ablation.bin_alignment 'left'"),
    "duplicate seeds": (["--ablation.seeds", "[1,1]"], r"ablation.seeds has duplicates: \[1, 1\]"),
    "no methods": (["--ablation.methods", "[]"], "ablation.methods is empty"),
    "no resample rows": (["--ablation.n_resample", "0"], "ablation.n_resample must be positive"),
    "unknown mode": (["--ablation.mode", "patch"], "unknown ablation.mode 'patch'; use hook or fold"),
    "unknown dtype": (["--model.dtype", "float8"], "unknown dtype 'float8'; use one of"),
    "spawned processes": (
        ["--trainer.strategy", "ddp_spawn"],
        "spawned processes cannot hand calibration statistics back; use --trainer.strategy ddp",
    ),
    "fold under sharding": (
        ["--trainer.strategy", "fsdp2", "--trainer.devices", "2", "--ablation.mode", "fold"],
        "mode fold edits whole weight matrices, which a sharding strategy splits; use --ablation.mode hook",
    ),
    "auto batch size under sharding": (
        ["--trainer.strategy", "fsdp2", "--trainer.devices", "2", "--data.batch_size", "auto"],
        "batch_size auto probes the whole model on one device.*set --data.batch_size to a number",
    ),
    "unknown strategy": (
        ["--trainer.strategy", "nope"],
        "trainer settings: You selected an invalid strategy name: `strategy='nope'`",
    ),
    "tensor parallel": (
        [
            "--trainer.strategy",
            "{class_path: lightning.pytorch.strategies.ModelParallelStrategy}",
            "--trainer.devices",
            "2",
        ],
        "tensor parallelism would split the attention heads.*use --trainer.strategy fsdp2",
    ),
    "more processes than data": (
        ["--trainer.strategy", "ddp", "--trainer.devices", "3"],
        r"3 processes need at least 3 .* --ablation.n_resample >= 3 \(have .*, .* and 2\)",
    ),
    "missing GGUF file": (["--model.gguf_file", "nope.gguf"], "GGUF file .*nope.gguf' not found"),
    "missing package in config": (
        ["--data.path", "${pkg:no_such_pkg}/x.txt"],
        "package 'no_such_pkg' is not installed",
    ),
    "text column missing": (
        ["--data.path", "JSONL", "--data.text_column", "body"],
        "'.*docs.jsonl' has no column 'body' \\(columns: text\\); set --data.text_column",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_gets_one_line_error(capsys, tiny_models, corpus, tmp_path, bert_folder, case):
    extra, pattern = BAD[case]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text('{"text": "hello world"}\n')
    extra = [str(bert_folder) if e == "BERT" else str(jsonl) if e == "JSONL" else e for e in extra]
    code, out, err = run(capsys, *tiny_args(tiny_models["gpt2"], corpus, tmp_path), *extra)
    lines = [l for l in err.strip().splitlines() if l.startswith("error:")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    import re

    assert re.search(pattern, lines[0]), lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("config,methods", [("tiny-masked", 6), ("tiny-vision", 4)])
def test_tiny_offline_configs_run_through_the_cli(capsys, monkeypatch, assets, tmp_path, config, methods):
    monkeypatch.setenv("ABLATE_LIT_ASSETS", str(assets))
    code, out, err = run(capsys, "--config", CONFIGS[0].parent / f"{config}.yaml", "--root", tmp_path, "--name", "r")
    assert code == 0, err
    rows = read_rows(tmp_path / "r" / "results.csv")
    assert len(rows) == 3 * 2 * methods
    assert len({r["method"] for r in rows}) == methods
    assert "| baseline |" in (tmp_path / "r" / "summary.md").read_text()


@pytest.fixture
def offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_vit_config_offline_fails_at_the_download_naming_the_local_option(capsys, offline, tiny_vision, tmp_path):
    vit = CONFIGS[0].parent / "vit.yaml"
    code, out, err = run(capsys, "--config", vit, "--root", tmp_path)
    assert code == 2 and "Traceback" not in err
    assert "could not load model 'google/vit-base-patch16-224'" in err and "--model.name_or_path" in err
    code, out, err = run(capsys, "--config", vit, "--root", tmp_path, "--model.name_or_path", tiny_vision["hf"])
    assert code == 2 and "Traceback" not in err
    assert "could not load data set 'ILSVRC/imagenet-1k'" in err and "point --data.path at a local image folder" in err


def test_a_family_refuses_the_wrong_data_module(capsys, tiny_masked, corpus, tmp_path):
    code, out, err = run(
        capsys,
        *tiny_args(tiny_masked["bert"], corpus, tmp_path),
        "--model",
        "ablate_lit.MaskedLMAblation",
        "--model.name_or_path",
        tiny_masked["bert"],
    )
    assert (
        code == 2
        and "MaskedLMAblation evaluates on MaskedTextData, not TextData; set --data ablate_lit.MaskedTextData" in err
    )


def test_a_resample_source_of_another_family_is_refused(capsys, tiny_models, corpus, tmp_path):
    code, out, err = run(
        capsys, *tiny_args(tiny_models["gpt2"], corpus, tmp_path), "--ablation.methods", "[resample:random_pixels]"
    )
    assert code == 2 and "resample source 'random_pixels' does not apply to causal_lm models" in err


@pytest.mark.slow
def test_fold_mode_gives_the_hook_results(capsys, tiny_models, corpus, tmp_path):
    rows = {
        mode: run_rows(
            capsys,
            *tiny_args(tiny_models["gpt2"], corpus, tmp_path / mode),
            "--ablation.mode",
            mode,
            "--ablation.methods",
            "[zero,mean,peak]",
        )[1]
        for mode in ("hook", "fold")
    }
    for a, b in zip(rows["hook"], rows["fold"]):
        assert (a["method"], a["fraction"], a["seed"]) == (b["method"], b["fraction"], b["seed"])
        assert float(a["ce"]) == pytest.approx(float(b["ce"]), rel=1e-5)


def test_a_misspelt_option_is_matched_and_a_classless_setting_names_the_class():
    from ablate_lit.entry.parse_errors import condense

    assert condense("Unrecognized arguments: --ablation.metods [zero]").startswith(
        "unknown option --ablation.metods (did you mean --ablation.methods?)"
    )
    assert condense("Unrecognized arguments: --data.foo 1").startswith("unknown option --data.foo; ")
    classless = condense("Unrecognized arguments: --model.name_or_path /models/opt")
    assert classless.startswith("--model.name_or_path is a setting of a class not chosen; name it first with --model")
    assert "ablate_lit.CausalLMAblation" in classless


def test_the_ablation_settings_given_as_a_file_of_their_own(capsys, tiny_models, corpus, tmp_path):
    """``--ablation FILE`` (a group's own config file) is checked when parsed like any other way of
    giving the settings."""
    (tmp_path / "ablation.yaml").write_text("methods: [zero]\nfractions: [0, 1]\nseeds: [0]\n")
    args = tiny_args(tiny_models["llama"], corpus, tmp_path / "runs")
    code, _, err = run(capsys, *args, "--ablation", tmp_path / "ablation.yaml")
    assert code == 0, err
    assert {r["method"] for r in read_rows(tmp_path / "runs" / "run" / "results.csv")} == {"zero"}
    (tmp_path / "bad.yaml").write_text("methods: [zero, mode]\n")
    code, _, err = run(capsys, *args, "--ablation", tmp_path / "bad.yaml")
    assert code == 2 and "unknown ablation method 'mode' (did you mean 'mean'?)" in err
