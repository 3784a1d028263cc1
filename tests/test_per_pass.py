"""Several ablations per forward pass (``--ablation.ablations_per_pass``): every row equals the row of
the same ablation evaluated alone, for every family, schedule and kind of method."""

from __future__ import annotations

import json
import random

import pytest
import torch
from helpers import launch, one_line_error, run, tiny_args

import ablate_lit
from ablate_lit import MaskedLMAblation, VisionAblation
from ablate_lit.ablation.values import OneLayer
from ablate_lit.store.folder import read_rows
from ablate_lit.testing.tiny import WORDS

IDS = torch.randint(5, 300, (3, 12), generator=torch.Generator().manual_seed(0))
PIXELS = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _entries(mod, positions: int) -> list[tuple[torch.Tensor, dict]]:
    """Ablations of every kind on ``mod``: zero of half the neurons, a constant on every neuron of
    layer 0, one constant per position, a resample cache, one layer's resample cache (a unit map's)."""
    g = torch.Generator().manual_seed(1)
    n_layers, width = mod.hooks.n_layers, mod.hooks.width
    half = torch.rand(n_layers, width, generator=g) < 0.5
    first = torch.zeros(n_layers, width, dtype=torch.bool)
    first[0] = True
    head = torch.zeros(n_layers, width, dtype=torch.bool)
    head[-1, : mod.pre_outs[0].head_dim] = True
    cache = torch.randn(n_layers, 4, positions, width, generator=g)
    return [
        (half, {"values": torch.zeros(n_layers, width)}),
        (first, {"values": torch.randn(n_layers, width, generator=g)}),
        (half, {"values": torch.randn(n_layers, positions, width, generator=g)}),
        (half, {"resample": cache}),
        (head, {"resample": OneLayer(cache, n_layers - 1, "cpu")}),
    ]


def _one_at_a_time_and_together(mod, batch, positions):
    entries = _entries(mod, positions)
    mod.hooks.sample_index = batch["index"]
    alone = []
    for mask, replacement in entries:
        with mod.hooks.ablating(mask, device="cpu", **replacement):
            alone.append(mod.logits_and_labels(batch)[0])
    with mod.hooks.ablating_copies(entries, "cpu"):
        together, _ = mod.forward_copies(batch, len(entries))
    return alone, together


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_copies_of_a_batch_are_ablated_as_each_alone_causal(tiny_models, arch):
    from ablate_lit import CausalLMAblation

    mod = CausalLMAblation(str(tiny_models[arch]))
    batch = {"input_ids": IDS, "index": torch.tensor([0, 1, 2])}
    with torch.no_grad():
        alone, together = _one_at_a_time_and_together(mod, batch, IDS.shape[1])
    for a, b in zip(alone, together, strict=True):
        assert torch.equal(a, b)
    assert not mod.hooks.active


@pytest.mark.parametrize("kind,name", [("masked", "roberta"), ("masked", "bert"), ("vision", "timm"), ("vision", "hf")])
def test_copies_of_a_batch_are_ablated_as_each_alone_masked_and_vision(tiny_masked, tiny_vision, kind, name):
    if kind == "masked":
        mod = MaskedLMAblation(str(tiny_masked[name]))
        batch, positions = {"input_ids": IDS, "labels": IDS, "index": torch.tensor([0, 1, 2])}, IDS.shape[1]
    else:
        mod = VisionAblation(str(tiny_vision[name]))
        batch = {"pixel_values": PIXELS, "label": torch.tensor([0, 1, 2]), "index": torch.tensor([0, 1, 2])}
        positions = 17  # 16 patches and the class token
    with torch.no_grad():
        alone, together = _one_at_a_time_and_together(mod, batch, positions)
    for a, b in zip(alone, together, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def _rows(run_dir) -> dict:
    """{row key: (the row as stored but its time, its per-window totals)}."""
    return {
        r.key: ({k: v for k, v in r.record.items() if k != "time_s"}, r.windows)
        for r in read_rows(run_dir, windows=True)[0]
    }


def assert_same_rows(a: dict, b: dict) -> None:
    """The same rows: every stored value equal, scores (and per-window totals) up to the float rounding
    of a batched matmul (bitwise on the text models here; 1e-7 relative for a ViT on a CPU)."""
    assert a.keys() == b.keys()
    for key, (row, windows) in a.items():
        other, other_windows = b[key]
        for column, value in row.items():
            if column in ("top1", "ce", "ppl", "kl", "logit_diff") and value != "-":
                assert float(other[column]) == pytest.approx(float(value), rel=1e-5, abs=1e-7), (key, column)
            else:
                assert other[column] == value, (key, column)
        for name, totals in (windows or {}).items():
            assert other_windows[name] == pytest.approx(totals, rel=1e-5, abs=1e-6), (key, name)


NESTED = ["--ablation.kl", "true", "--ablation.methods", "[zero,mean,peak,resample:random_tokens,resample:data]"]


@pytest.mark.slow
def test_a_nested_schedule_with_several_methods_per_pass_gives_the_rows_of_one(capsys, tiny_models, corpus, tmp_path):
    rows = {}
    for k in (1, 3):
        args = tiny_args(tiny_models["qwen2"], corpus, tmp_path / f"k{k}", *NESTED, "--ablation.ablations_per_pass", k)
        code, out, err = run(capsys, *args)
        assert code == 0, err
        rows[k] = _rows(tmp_path / f"k{k}" / "run")
    assert len(rows[1]) == 5 * 2 * 3
    assert_same_rows(rows[1], rows[3])  # CE, Top1, KL and the per-window totals
    assert out.count(" 50% ablated:") == 5 * 2  # still a progress line per method and seed


@pytest.mark.slow
def test_a_single_unit_map_with_several_units_per_pass_gives_the_rows_of_one(capsys, tiny_models, corpus, tmp_path):
    rows = {}
    for k in (1, 4):
        args = [
            "--model", "ablate_lit.CausalLMAblation", "--model.name_or_path", tiny_models["gpt2"],
            "--data", "ablate_lit.TextData", "--data.path", corpus, "--data.max_tokens", 112,
            "--data.calib_tokens", 96, "--data.context_length", 16, "--data.batch_size", 3,
            "--ablation.schedule", "each", "--ablation.unit", "head", "--ablation.kl", "true",
            "--ablation.methods", "[zero,mean,resample:random_tokens]", "--ablation.n_resample", 2,
            "--ablation.log_histograms", "false", "--ablation.ablations_per_pass", k,
            "--root", tmp_path / f"k{k}", "--name", "map", "--trainer.accelerator", "cpu",
            "--trainer.enable_progress_bar", "false",
        ]  # fmt: skip
        code, _, err = run(capsys, *args)
        assert code == 0, err
        rows[k] = _rows(tmp_path / f"k{k}" / "map")
    assert len(rows[1]) == 3 + 3 * 2 * 4  # a baseline row per method, then every head
    assert_same_rows(rows[1], rows[4])


@pytest.mark.slow
def test_an_attribution_runs_exact_checks_with_several_units_per_pass_give_the_rows_of_one(
    capsys, tiny_models, corpus, tmp_path
):
    rows = {}
    for k in (1, 4):
        settings = ["--ablation.schedule", "attribution", "--ablation.methods", "[zero,mean,resample:data]",
                    "--ablation.attribution_top_k", 3, "--ablation.attribution_sample", 6, "--ablation.kl", "true",
                    "--ablation.ablations_per_pass", k, "--ablation.log_histograms", "false"]  # fmt: skip
        args = tiny_args(tiny_models["llama"], corpus, tmp_path / f"k{k}", *settings)
        code, _, err = run(capsys, *args)
        assert code == 0, err
        rows[k] = _rows(tmp_path / f"k{k}" / "run")
    assert len(rows[1]) >= 1 + 3 * 6  # the baseline, then each method's checked neurons
    assert_same_rows(rows[1], rows[4])


@pytest.mark.slow
@pytest.mark.parametrize("config", ["tiny-masked", "tiny-vision"])
def test_masked_and_vision_runs_with_several_methods_per_pass_give_the_rows_of_one(
    capsys, monkeypatch, assets, tmp_path, config
):
    monkeypatch.setenv("ABLATE_LIT_ASSETS", str(assets))
    rows = {}
    for k in (1, 4):
        args = ["--config", f"configs/{config}.yaml", "--ablation.kl", "true", "--ablation.ablations_per_pass", k]
        code, _, err = run(capsys, *args, "--root", tmp_path / f"k{k}", "--name", "run")
        assert code == 0, err
        rows[k] = _rows(tmp_path / f"k{k}" / "run")
    assert len(rows[1]) > 10
    assert_same_rows(rows[1], rows[4])


def _task_rows(tok, n=18, seed=0) -> list[dict]:
    """Task rows whose counterfactual swaps one word for another of the same token length."""
    rng, rows = random.Random(seed), []
    length = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    while len(rows) < n:
        words = [rng.choice(WORDS) for _ in range(5)]
        swap = next((w for w in WORDS if w != words[1] and length(" " + w) == length(" " + words[1])), None)
        if swap is None:
            continue
        prompt = " ".join(words).capitalize()
        counterfactual = " ".join([words[0], swap, *words[2:]]).capitalize()
        rows.append(
            {"prompt": prompt, "answer": " " + rng.choice(WORDS), "distractor": " " + rng.choice(WORDS),
             "counterfactual": counterfactual}
        )  # fmt: skip
    return rows


@pytest.mark.slow
def test_task_rows_with_counterfactual_methods_per_pass_give_the_rows_of_one(tiny_models, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in _task_rows(tok)))
    rows = {}
    for k in (1, 4):
        ablate_lit.run(
            str(tiny_models["llama"]), str(task), task=True, root=tmp_path, name=f"k{k}", calib_rows=6,
            batch_size=4, methods=["zero", "mean", "mean:counterfactual", "resample:counterfactual"],
            fractions=[0.0, 0.5, 1.0], seeds=[0], ablations_per_pass=k, trainer={"accelerator": "cpu"},
            verbose=False,
        )  # fmt: skip
        rows[k] = _rows(tmp_path / f"k{k}")
    assert len(rows[1]) == 4 * 3
    assert_same_rows(rows[1], rows[4])


@pytest.mark.slow
@pytest.mark.distributed
def test_several_methods_per_pass_under_two_processes_give_the_rows_of_one(tiny_models, corpus, tmp_path):
    rows = {}
    for how, extra in (("one", []), ("ddp", ["--trainer.devices", 2, "--trainer.strategy", "ddp"])):
        args = tiny_args(tiny_models["llama"], corpus, tmp_path / how, *NESTED, "--ablation.ablations_per_pass", 3)
        proc = launch("test", *args, *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows[how] = _rows(tmp_path / how / "run")
    assert_same_rows(rows["one"], rows["ddp"])


@pytest.mark.slow
def test_an_out_of_memory_error_halves_the_ablations_per_pass_and_loses_nothing(
    capsys, tiny_models, corpus, tmp_path, monkeypatch
):
    from ablate_lit.families.module import AblationModule

    original = AblationModule.forward_copies

    def small_device(self, batch, copies):
        if copies > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, batch, copies)

    args = tiny_args(tiny_models["llama"], corpus, tmp_path / "one", "--ablation.methods", "[zero,mean,peak,median]")
    assert run(capsys, *args, "--ablation.seeds", "[0]")[0] == 0
    monkeypatch.setattr(AblationModule, "forward_copies", small_device)
    args = tiny_args(tiny_models["llama"], corpus, tmp_path / "many", "--ablation.methods", "[zero,mean,peak,median]")
    code, out, err = run(capsys, *args, "--ablation.seeds", "[0]", "--ablation.ablations_per_pass", 4)
    assert code == 0, err
    assert "out of memory with more ablations per pass: 2 per pass from now on" in out
    assert_same_rows(_rows(tmp_path / "one" / "run"), _rows(tmp_path / "many" / "run"))


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--ablation.ablations_per_pass", "0"], "ablation.ablations_per_pass must be a positive integer or auto"),
        (["--ablation.mode", "fold", "--ablation.ablations_per_pass", "4"], "use --ablation.ablations_per_pass 1"),
    ],
)
def test_bad_ablations_per_pass_are_one_line(capsys, tiny_models, corpus, tmp_path, extra, message):
    code, _, err = run(
        capsys, *tiny_args(tiny_models["llama"], corpus, tmp_path, "--ablation.methods", "[zero]", *extra)
    )
    assert code == 2 and message in one_line_error(err)
