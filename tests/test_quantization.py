"""Quantized and dispatched models (``--model.quantization``, ``--model.device_map``): hooked where the
unquantized model is, the run's numbers equal to hand-written hooks on the same quantized model, close
to the unquantized one; fold refused, the fingerprint covering the quantization; refusals in one line."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import cli, converted_from_gguf, data, lm_ce, module, one_line_error, read_rows, run, tiny_args

from ablate_lit import run as run_api
from ablate_lit.common.errors import AblateError

PRESETS = ["quanto-int8", "torchao-int8"]
SETTINGS = dict(max_tokens=120, calib_tokens=256, context_length=16, batch_size=4, n_resample=2, seeds=[0])


def _ce(mod, windows, replace=None) -> float:
    """CE of next-token prediction on ``windows``, each out-projection's input replaced by ``replace[layer]``
    where given (pre-hooks written here, not ablate_lit's)."""
    handles = []
    if replace is not None:
        for p in mod.pre_outs:
            handles.append(
                p.module.register_forward_pre_hook(lambda m, a, v=replace[p.layer]: (v.expand_as(a[0]).clone(),))
            )
    try:
        with torch.no_grad():
            logits = mod.model(input_ids=windows).logits[:, :-1]
    finally:
        for h in handles:
            h.remove()
    return float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1)))


def _means(mod, windows) -> torch.Tensor:
    """Each neuron's mean pre-out over ``windows`` [n_layers, width], recorded by hand."""
    seen = {}

    def record(layer):
        def hook(module, args):
            seen[layer] = args[0].reshape(-1, args[0].shape[-1])  # returns None: the input is kept

        return hook

    handles = [p.module.register_forward_pre_hook(record(p.layer)) for p in mod.pre_outs]
    try:
        with torch.no_grad():
            mod.model(input_ids=windows)
    finally:
        for h in handles:
            h.remove()
    return torch.stack([seen[i].double().mean(0) for i in range(len(mod.pre_outs))])


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_quantized_runs_equal_hand_hooks_and_stay_close_to_the_full_model(tiny_models, corpus, tmp_path, preset):
    pytest.importorskip("optimum.quanto" if preset.startswith("quanto") else "torchao")
    path = tiny_models["llama"]
    full, quant = module(path), module(path, quantization=preset)
    assert [p.name for p in quant.pre_outs] == [p.name for p in full.pre_outs]  # hooked at the same place
    assert type(quant.pre_outs[0].proj.weight) is not torch.nn.Parameter  # the out-projection is quantized
    assert quant.fingerprint() != full.fingerprint()

    methods = ["zero", "mean", "peak", "optimal", "resample:random_tokens"]
    kwargs = dict(root=tmp_path, verbose=False, trainer={"accelerator": "cpu"}, methods=methods, fractions=[0, 0.5, 1])
    q = {
        (r["method"], r["fraction"]): r
        for r in run_api(str(path), str(corpus), name="q", quantization=preset, **kwargs, **SETTINGS).rows()
    }
    f = {
        (r["method"], r["fraction"]): r for r in run_api(str(path), str(corpus), name="f", **kwargs, **SETTINGS).rows()
    }
    assert all(float(r["ce"]) == float(r["ce"]) for r in q.values())  # every method ran and is finite
    d = data(corpus, quant)
    assert float(q["zero", "0"]["ce"]) == pytest.approx(_ce(quant, d.eval_windows), rel=1e-5)
    zeros = torch.zeros(len(quant.pre_outs), quant.pre_outs[0].width)
    assert float(q["zero", "1"]["ce"]) == pytest.approx(_ce(quant, d.eval_windows, zeros), rel=1e-5)
    means = _means(quant, d.calib_windows).float()
    assert float(q["mean", "1"]["ce"]) == pytest.approx(_ce(quant, d.eval_windows, means), rel=1e-4)
    for key in q:  # int8 weights: within a few percent of the unquantized model at every point
        assert float(q[key]["ce"]) == pytest.approx(float(f[key]["ce"]), rel=0.05), key
    assert q["zero", "0"]["model_id"] != f["zero", "0"]["model_id"]


@pytest.mark.slow
def test_a_device_map_with_disk_offload_gives_the_same_rows(capsys, tiny_models, corpus, tmp_path):
    pytest.importorskip("accelerate")
    where = (
        "{model.embed_tokens: cpu, model.rotary_emb: cpu, model.layers.0: cpu, model.layers.1: disk, "
        "model.norm: cpu, lm_head: cpu}"
    )
    args = tiny_args(tiny_models["llama"], corpus, tmp_path / "plain", "--ablation.methods", "[zero,mean,peak,optimal]")
    assert run(capsys, *args)[0] == 0
    mapped = tiny_args(
        tiny_models["llama"], corpus, tmp_path / "mapped", "--ablation.methods", "[zero,mean,peak,optimal]"
    )
    code, _, err = run(capsys, *mapped, "--model.device_map", where, "--model.offload_folder", tmp_path / "offload")
    assert code == 0, err
    plain, offloaded = (
        read_rows(tmp_path / "plain" / "run" / "results.csv"),
        read_rows(tmp_path / "mapped" / "run" / "results.csv"),
    )
    drop = lambda r: {k: v for k, v in r.items() if k != "time_s"}  # noqa: E731
    assert [drop(r) for r in offloaded] == [drop(r) for r in plain]  # the same identity and numbers
    mod = module(tiny_models["llama"], device_map={"": "cpu"})
    assert mod.self_placed and mod.fingerprint() == module(tiny_models["llama"]).fingerprint()
    out = tmp_path / "exported"  # rebuilt without the map: the whole model in one place, its weights editable
    code, _, err = cli(capsys, "export", tmp_path / "mapped" / "run", "--method", "mean", "--fraction", "0.5",
                       "--out", out)  # fmt: skip
    assert code == 0, err
    row = next(r for r in offloaded if r["method"] == "mean" and r["fraction"] == "0.5" and r["seed"] == "0")
    windows = data(corpus, module(tiny_models["llama"])).eval_windows
    assert lm_ce(out, windows) == pytest.approx(float(row["ce"]), rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["quanto-int8", "quanto-int4", "torchao-int8"])
def test_a_preset_that_quantizes_nothing_is_refused_and_int4_runs(capsys, tiny_models, corpus, tmp_path, preset):
    """GPT-2's projections are transformers' Conv1D, which these presets leave as they are: the run is
    refused rather than stored as a quantized one. On Llama every preset runs (quanto's int4 kernels
    save tensors, which inference mode forbids: the loops run under no_grad for a quantized model)."""
    pytest.importorskip("optimum.quanto" if preset.startswith("quanto") else "torchao")
    args = ("--model.quantization", preset, "--ablation.methods", "[zero,mean]")
    code, _, err = run(capsys, *tiny_args(tiny_models["gpt2"], corpus, tmp_path / "gpt2", *args))
    assert code == 2 and f"{preset} quantized none of GPT2LMHeadModel's weights" in one_line_error(err)
    code, _, err = run(capsys, *tiny_args(tiny_models["llama"], corpus, tmp_path / "llama", *args))
    assert code == 0, err
    rows = read_rows(tmp_path / "llama" / "run" / "results.csv")
    assert {r["method"] for r in rows} == {"zero", "mean"} and all(float(r["ce"]) > 0 for r in rows)


@pytest.mark.slow
def test_refusals_are_one_line(capsys, tiny_models, tiny_vision, corpus, tmp_path):
    pytest.importorskip("optimum.quanto")
    args = tiny_args(tiny_models["llama"], corpus, tmp_path, "--model.quantization", "quanto-int8")
    code, _, err = run(capsys, *args, "--ablation.mode", "fold", "--ablation.methods", "[zero]")
    assert code != 0 and "fold" in one_line_error(err) and "quantized" in err and "--ablation.mode hook" in err
    code, _, err = run(capsys, *args, "--trainer.precision", "bf16-true", "--trainer.accelerator", "cpu")
    assert code != 0 and "--model.dtype bfloat16" in one_line_error(err)
    code, _, err = run(capsys, *tiny_args(tiny_models["llama"], corpus, tmp_path, "--model.quantization", "int3"))
    assert code != 0 and "quanto-int8" in one_line_error(err)
    if not torch.cuda.is_available():
        with pytest.raises(AblateError, match="bitsandbytes runs on CUDA"):
            module(tiny_models["llama"], quantization="bnb-4bit")
    with pytest.raises(AblateError, match="timm model"):
        from ablate_lit import VisionAblation

        VisionAblation(str(tiny_vision["timm"]), quantization="quanto-int8")
    a = module(tiny_models["llama"], quantization="quanto-int8").fingerprint()
    b = module(tiny_models["llama"], quantization={"quant_method": "quanto", "weights": "int4"}).fingerprint()
    assert a != b  # the settings are in the fingerprint


def test_a_folder_converted_from_gguf_quantizes_like_the_original(tiny_models, corpus, tmp_path):
    """A GGUF file is dequantised once into a folder whose config still names the ``gguf`` quantization
    (the demo's SmolLM2 is one); transformers would refuse a second quantization config for it, and its
    float weights quantize exactly as the original folder's."""
    pytest.importorskip("optimum.quanto")
    folder = converted_from_gguf(tiny_models["llama"], tmp_path / "converted")
    converted, original = (
        module(folder, quantization="quanto-int8"),
        module(tiny_models["llama"], quantization="quanto-int8"),
    )
    assert type(converted.pre_outs[0].proj.weight) is not torch.nn.Parameter  # quantized
    windows = data(corpus, original).eval_windows
    assert _ce(converted, windows) == _ce(original, windows)


@pytest.mark.slow
def test_a_device_map_key_naming_no_module_and_an_unwritable_offload_folder_are_refused(
    capsys, tiny_models, corpus, tmp_path
):
    pytest.importorskip("accelerate")
    (tmp_path / "a-file").write_text("x")
    args = tiny_args(tiny_models["llama"], corpus, tmp_path / "runs", "--ablation.methods", "[zero]")
    code, out, err = run(capsys, *args, "--model.device_map", '{"model.nope": "cpu", "": "cpu"}')
    assert code == 2 and "--model.device_map names 'model.nope', which is not a module of LlamaForCausalLM" in (
        one_line_error(err)
    )
    disk = '{"model.embed_tokens": "cpu", "model.layers": "disk", "model.norm": "cpu", "lm_head": "cpu"}'
    code, out, err = run(capsys, *args, "--model.device_map", disk, "--model.offload_folder", tmp_path / "a-file" / "o")
    assert code == 2 and "--model.offload_folder" in one_line_error(err) and "cannot be written" in err
    assert "[1/" not in out
