"""Every architecture without a tested entry, located by structure, through the real CLI.

Each tiny model runs zero and mean at 0%, 50% and 100% ablated (seed 0). The numbers are then
recomputed without ablate_lit's hooks: the module whose input is the heads' output comes from the
table below (written by reading each architecture's code, not from ablate_lit), its ``forward`` is
patched by hand, and
  * 0% equals the plain forward,
  * 100% zero equals zeros fed into every such input,
  * 50% mean equals the calibration mean, computed here with torch.mean over the recorded inputs,
    substituted into the seed's neuron set.
A module applied several times per forward pass (ALBERT's shared layer) is one layer per call.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from helpers import one_line_error, patched, read_rows, run

from ablate_lit import (
    AblateError,
    CausalLMAblation,
    ImageData,
    MaskedLMAblation,
    MaskedTextData,
    TextData,
    VisionAblation,
)
from ablate_lit.ablation.schedule import ablation_mask, neuron_order
from ablate_lit.testing.zoo import ZOO_CAUSAL, ZOO_MASKED

_LLAMA_LIKE = "model.layers.{}.self_attn.o_proj"
HOOKED = {
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "olmo2": _LLAMA_LIKE,
    "mixtral": _LLAMA_LIKE,
    "qwen2_moe": _LLAMA_LIKE,
    "stablelm": _LLAMA_LIKE,
    "phi": "model.layers.{}.self_attn.dense",
    "falcon": "transformer.h.{}.self_attention.dense",
    "bloom": "transformer.h.{}.self_attention.dense",
    "gpt_bigcode": "transformer.h.{}.attn.c_proj",
    "gptj": "transformer.h.{}.attn.out_proj",
    "deepseek_v3": _LLAMA_LIKE,  # multi-head latent attention: 4 heads x v_head_dim 16 (head_dim is the rotary part)
    "distilbert": "distilbert.transformer.layer.{}.attention.out_lin",
    "deberta-v2": "deberta.encoder.layer.{}.attention.output.dense",
    "electra": "electra.encoder.layer.{}.attention.output.dense",
    "albert": "albert.encoder.albert_layer_groups.0.albert_layers.0.attention.dense",  # one module, called 3 times
    "modernbert": "model.layers.{}.attn.Wo",
    "roberta-prelayernorm": "roberta_prelayernorm.encoder.layer.{}.attention.output.dense",
    "hf-beit": "beit.layers.{}.attention.o_proj",
    "hf-dinov2": "dinov2.encoder.layer.{}.attention.o_proj",
    "hf-clip": "vision_model.encoder.layers.{}.self_attn.out_proj",
    # one stage (4 windows), chosen with --model.blocks
    "hf-swin-stage": "swin.encoder.layers.0.blocks.{}.attention.o_proj",
    "timm-beit": "blocks.{}.attn.proj",
    "timm-cait": "blocks.{}.attn.proj",  # talking-heads attention; the class-attention block is left alone
    "timm-eva02": "blocks.{}.attn.norm",  # scale_attn_inner: a LayerNorm between the heads and attn.proj
    "timm-vit": "blocks.{}.attn.norm",  # scale_attn_norm: likewise
    # the heads' output in another layout on its way to the projection (the same numbers, moved)
    "longformer": "longformer.encoder.layer.{}.attention.output.dense",  # sliding-window chunks
    "timm-xcit": "blocks.{}.attn.proj",  # [batch, heads, head_dim, pos], transposed
    "hf-hiera": "hiera.encoder.stages.1.layers.{}.attn.proj",  # per masked unit; the stage the refusal names
}
EXTRA = {
    "hf-swin-stage": ["--model.blocks", "swin.encoder.layers.0.blocks"],
    "hf-hiera": ["--model.blocks", "hiera.encoder.stages.1.layers"],
}
FOLDER = {"hf-swin-stage": "hf-swin"}
N_LAYERS = {"albert": 3, "hf-swin-stage": 1}


def family(name: str) -> str:
    return "causal" if name in ZOO_CAUSAL else "masked" if name in ZOO_MASKED else "vision"


def cli_args(name, folder, corpus, images, root):
    kind = family(name)
    model = {"causal": "CausalLMAblation", "masked": "MaskedLMAblation", "vision": "VisionAblation"}[kind]
    args = [
        "--model",
        f"ablate_lit.{model}",
        "--model.name_or_path",
        folder,
        "--ablation.methods",
        "[zero,mean]",
        "--ablation.fractions",
        "[0,0.5,1]",
        "--ablation.seeds",
        "[0]",
        "--ablation.log_histograms",
        "false",
        "--root",
        root,
        "--name",
        "run",
        "--trainer.accelerator",
        "cpu",
        "--trainer.enable_progress_bar",
        "false",
    ]
    if kind == "vision":
        return args + ["--data", "ablate_lit.ImageData", "--data.path", images, *DATA["vision"]]
    data = "TextData" if kind == "causal" else "MaskedTextData"
    return args + ["--data", f"ablate_lit.{data}", "--data.path", corpus, *DATA["text"]]


DATA = {
    "text": ["--data.max_tokens", 112, "--data.calib_tokens", 96, "--data.context_length", 16, "--data.batch_size", 4],
    "vision": ["--data.max_images", 10, "--data.calib_images", 10, "--data.batch_size", 5],
}


def inputs(mod, name, corpus, images):
    """(evaluation inputs, their labels, calibration inputs), built by the same data modules as the run."""
    kind = family(name)
    if kind == "vision":
        d = ImageData(str(images), max_images=10, calib_images=10, batch_size=5)
        mod.connect_data(d)
        d.setup()
        stack = lambda ds: torch.stack([ds[i]["pixel_values"] for i in range(len(ds))])  # noqa: E731
        return stack(d.eval_set), torch.tensor(d.eval_set.labels), stack(d.calib_set)
    cls = TextData if kind == "causal" else MaskedTextData
    d = cls(str(corpus), max_tokens=112, calib_tokens=96, context_length=16, batch_size=4)
    mod.connect_data(d)
    d.setup()
    if kind == "causal":
        return d.eval_windows, None, d.calib_windows
    return d.eval_inputs, d.eval_labels, d.calib_inputs


def logits(mod, name, x):
    if family(name) == "vision":
        return mod.model(x) if mod.backend == "timm" else mod.model(pixel_values=x).logits
    return mod.model(input_ids=x).logits


def ce_by_hand(mod, name, x, labels) -> float:
    out = logits(mod, name, x)
    if family(name) == "causal":
        return float(F.cross_entropy(out[:, :-1].reshape(-1, out.shape[-1]), x[:, 1:].reshape(-1)))
    keep = labels != -100
    return float(F.cross_entropy(out[keep], labels[keep]))


@pytest.mark.parametrize("name", sorted(HOOKED))
def test_cli_results_equal_hooks_written_by_hand(capsys, zoo, corpus, image_folder, tmp_path, name):
    folder = zoo[FOLDER.get(name, name)]
    code, out, err = run(capsys, *cli_args(name, folder, corpus, image_folder, tmp_path), *EXTRA.get(name, []))
    assert code == 0, err
    rows = {(r["method"], r["fraction"]): float(r["ce"]) for r in read_rows(tmp_path / "run" / "results.csv")}

    cls = {"causal": CausalLMAblation, "masked": MaskedLMAblation, "vision": VisionAblation}[family(name)]
    mod = cls(
        str(folder), **({"blocks": EXTRA[name][1]} if name in EXTRA else {})
    )  # the same model; its hooks stay unused
    x, labels, calib = inputs(mod, name, corpus, image_folder)
    n_layers, path = N_LAYERS.get(name, 2), HOOKED[name]

    recorded: dict[int, list] = {}

    def record(layer, h):
        recorded.setdefault(layer, []).append(h.reshape(-1, h.shape[-1]))
        return h

    patched(mod.model, path, n_layers, record, lambda: logits(mod, name, calib))
    assert sorted(recorded) == list(range(n_layers))
    mean = torch.stack([torch.cat(recorded[l]).double().mean(0) for l in range(n_layers)]).float()  # [layers, width]
    width = mean.shape[1]
    mask = ablation_mask(neuron_order(0, n_layers, width, "per_layer"), 0.5, n_layers, width)

    plain = patched(mod.model, path, n_layers, lambda l, h: h, lambda: ce_by_hand(mod, name, x, labels))
    zero = patched(
        mod.model, path, n_layers, lambda l, h: torch.zeros_like(h), lambda: ce_by_hand(mod, name, x, labels)
    )
    half = patched(
        mod.model,
        path,
        n_layers,
        lambda l, h: torch.where(mask[l], mean[l], h),
        lambda: ce_by_hand(mod, name, x, labels),
    )
    assert rows[("zero", "0")] == pytest.approx(plain, rel=1e-5)
    assert rows[("zero", "1")] == pytest.approx(zero, rel=1e-5)
    assert rows[("mean", "0.5")] == pytest.approx(half, rel=1e-5)
    assert abs(zero - plain) > 1e-3  # the weights' scale makes ablation move the loss
    assert f"pre-outs: {n_layers} layer{'s' if n_layers > 1 else ''} x" in out


@pytest.mark.parametrize("name", ["qwen3_next", "diffllama"])
def test_heads_output_changed_by_tensor_operations_is_refused(capsys, zoo, corpus, image_folder, tmp_path, name):
    """Qwen3-Next gates the heads' output (z * sigmoid(g)) and DiffLlama combines heads, both without a
    module before o_proj: the hooked value differs from the SDPA output, so the model is refused."""
    code, out, err = run(capsys, *cli_args(name, zoo[name], corpus, image_folder, tmp_path))
    line = [l for l in err.splitlines() if l.startswith("error:")]
    assert code == 2 and len(line) == 1 and "Traceback" not in err, err
    assert "receives the attention heads' output changed by tensor operations" in line[0]


def test_attention_outside_the_ablated_blocks_is_named(capsys, zoo, corpus, image_folder, tmp_path):
    code, out, err = run(capsys, *cli_args("timm-cait", zoo["timm-cait"], corpus, image_folder, tmp_path))
    assert code == 0, err
    assert "not ablated: 1 attention module(s) outside these blocks (blocks_token_only.0)" in out


@pytest.mark.parametrize("name", ["hf-swin", "timm-swin"])
def test_stages_of_different_widths_are_refused_in_one_line(capsys, zoo, corpus, image_folder, tmp_path, name):
    code, out, err = run(capsys, *cli_args(name, zoo[name], corpus, image_folder, tmp_path))
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "widths differ (16, 32)" in lines[0] and "--model.blocks" in lines[0]


def test_windowed_attention_refuses_resampling(capsys, zoo, corpus, image_folder, tmp_path):
    code, out, err = run(
        capsys,
        *cli_args("hf-swin-stage", zoo["hf-swin"], corpus, image_folder, tmp_path),
        *EXTRA["hf-swin-stage"],
        "--ablation.methods",
        "[resample:random_pixels]",
    )
    assert code == 2 and "folds windows into the batch" in err and "Traceback" not in err


OPTION_ERRORS = {
    "blocks not a module": (
        ["--model.blocks", "model.nope"],
        "--model.blocks 'model.nope' is not a module of Gemma2ForCausalLM",
    ),
    "blocks not a list": (
        ["--model.blocks", "model.norm"],
        "--model.blocks 'model.norm' is a Gemma2RMSNorm, not a list of blocks",
    ),
    "out_proj missing": (["--model.out_proj", "self_attn.nope"], "block model.layers.0 has no module 'self_attn.nope'"),
    "out_proj of another width": (
        ["--model.out_proj", "self_attn.q_proj"],
        r"takes 32 inputs, but .*= 4 heads x .*= 16 gives 64: it is not the heads' output projection",
    ),
}


@pytest.mark.parametrize("case", sorted(OPTION_ERRORS))
def test_layout_options_are_checked_in_one_line(capsys, zoo, corpus, image_folder, tmp_path, case):
    extra, pattern = OPTION_ERRORS[case]
    code, out, err = run(capsys, *cli_args("gemma2", zoo["gemma2"], corpus, image_folder, tmp_path), *extra)
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert re.search(pattern, lines[0]), lines[0]


def test_an_option_a_refusal_suggests_takes_effect_before_the_check_that_refused(
    capsys, zoo, corpus, image_folder, tmp_path
):
    """ConvBERT's out-projection takes its attention heads and as many convolution heads: the width
    check names --model.head_dim; given, the option reaches the forward-pass check, which says why the
    value cannot be checked (not the same refusal again)."""
    code, out, err = run(capsys, *cli_args("convbert", zoo["convbert"], corpus, image_folder, tmp_path / "a"))
    first = one_line_error(err)
    assert code == 2 and "it is not the heads' output projection" in first and "--model.head_dim N" in first
    extra = ["--model.head_dim", "16"]
    code, out, err = run(capsys, *cli_args("convbert", zoo["convbert"], corpus, image_folder, tmp_path / "b"), *extra)
    second = one_line_error(err)
    assert code == 2 and second != first and "could not be checked to receive the attention heads' output" in second
    assert "--model.allow_unchecked true" in second


def test_given_paths_give_the_discovered_results(capsys, zoo, corpus, image_folder, tmp_path):
    rows = {}
    for how, extra in (
        ("discovered", []),
        ("given", ["--model.blocks", "model.layers", "--model.out_proj", "self_attn.o_proj"]),
    ):
        code, out, err = run(capsys, *cli_args("olmo2", zoo["olmo2"], corpus, image_folder, tmp_path / how), *extra)
        assert code == 0, err
        assert f"at model.layers.*.self_attn.o_proj ({how}, checked equal to the attention output)" in out
        rows[how] = read_rows(tmp_path / how / "run" / "results.csv")
    for a, b in zip(rows["discovered"], rows["given"], strict=True):
        assert (a["method"], a["fraction"], a["ce"]) == (b["method"], b["fraction"], b["ce"])


@pytest.mark.parametrize(
    "name,why",
    [("albert", "its layers share weights"), ("timm-eva02", "a norm sits between the heads and the out-projection")],
)
def test_fold_mode_is_refused_where_it_would_be_wrong(capsys, zoo, corpus, image_folder, tmp_path, name, why):
    code, out, err = run(capsys, *cli_args(name, zoo[name], corpus, image_folder, tmp_path), "--ablation.mode", "fold")
    assert code == 2 and why in err and "use --ablation.mode hook" in err


def _tiny_vit(**kwargs):
    import timm

    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=4,
        num_classes=5,
        **kwargs,
    ).eval()


def test_a_module_other_than_a_norm_between_heads_and_projection_is_refused():
    from torch import nn

    from ablate_lit.families.loading.vision import TIMM_ARCHITECTURE
    from ablate_lit.families.locate.layout import locate
    from ablate_lit.families.locate.trace import trace

    class Gate(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(width))

        def forward(self, x):
            return x * self.scale

    model = _tiny_vit()
    for block in model.blocks:
        block.attn.norm = Gate(32)
    pre_outs, _ = locate(model, None, TIMM_ARCHITECTURE)
    with pytest.raises(
        AblateError, match=r"Gate 'blocks.0.attn.norm' transforms the heads' output before blocks.0.attn.proj"
    ):
        trace(model, pre_outs, lambda: model(torch.zeros(2, 3, 32, 32)), 2)


def test_a_projection_whose_weights_are_used_directly_is_refused():
    """torch's nn.MultiheadAttention never calls its out_proj module: a hook there would see nothing."""
    from torch import nn

    from ablate_lit.families.locate.layout import locate
    from ablate_lit.families.locate.trace import trace

    model = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2, enable_nested_tensor=False
    ).eval()
    pre_outs, how = locate(model, None)
    assert how == "discovered" and pre_outs[0].name == "layers.0.self_attn.out_proj"
    with pytest.raises(AblateError, match="layers.0.self_attn.out_proj did not run in a forward pass"):
        trace(model, pre_outs, lambda: model(torch.zeros(2, 5, 32)), 2)


def test_a_model_that_is_not_causal_is_refused_as_a_causal_lm(tiny_models):
    from helpers import module

    mod = module(tiny_models["llama"])
    logits = torch.randn(2, 8, 300)
    mod.check_example(torch.stack([logits[0], logits[0]]))  # rows equal before the last token: causal
    with pytest.raises(
        AblateError, match="is not causal here: changing the last token changed the predictions before it"
    ):
        mod.check_example(logits)


def test_gguf_model_type_is_checked_before_any_conversion(tmp_path, monkeypatch):
    """A Mamba GGUF (a causal LM without attention) is refused from its metadata: nothing is converted."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(tmp_path / "tiny-mamba.gguf"), "mamba")
    writer.add_context_length(128)
    writer.add_embedding_length(32)
    writer.add_block_count(2)
    writer.add_ssm_conv_kernel(4)
    writer.add_ssm_inner_size(64)
    writer.add_ssm_state_size(8)
    writer.add_ssm_time_step_rank(4)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tensor("token_embd.weight", np.zeros((300, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    monkeypatch.setenv("ABLATE_LIT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(
        AblateError, match="MambaForCausalLM has no attention heads: its layers mix tokens with MambaMixer"
    ):
        CausalLMAblation(str(tmp_path), gguf_file="tiny-mamba.gguf")
    assert not (tmp_path / "cache").exists()
