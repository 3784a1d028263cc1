"""Every registered architecture: loading from a folder, hook points, the hooked pre-out."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import ARCHS, module

from ablate_lit import AblateError
from ablate_lit.common.families import FAMILIES, RESAMPLE_SOURCES

ATTENTION = {
    "opt": "model.decoder.layers.{}.self_attn",
    "gpt2": "transformer.h.{}.attn",
    "gpt_neox": "gpt_neox.layers.{}.attention",
}


def _values(model_type, attn, h, n_heads, head_dim):
    """V per head [batch, heads, pos, head_dim], computed from the attention's own weights."""
    b, t, _ = h.shape
    if model_type == "gpt2":
        v = attn.c_attn(h).split(attn.split_size, dim=2)[2]
    elif model_type == "gpt_neox":
        v = attn.query_key_value(h).view(b, t, n_heads, 3 * head_dim)[..., 2 * head_dim :]
        return v.transpose(1, 2)
    else:
        v = attn.v_proj(h)
    v = v.view(b, t, -1, head_dim).transpose(1, 2)
    return v.repeat_interleave(n_heads // v.shape[1], dim=1)  # grouped-query attention


@pytest.mark.parametrize("model_type", ARCHS)
def test_hook_points_and_head_layout(tiny_models, model_type):
    mod = module(tiny_models[model_type])
    cfg = mod.model.config
    assert mod.hooks.n_layers == cfg.num_hidden_layers == 2
    head_dim = 16 if model_type == "gemma" else cfg.hidden_size // cfg.num_attention_heads
    assert mod.hooks.width == cfg.num_attention_heads * head_dim
    if model_type == "gemma":  # head_dim comes from the config, not hidden / heads
        assert mod.hooks.width == 64 != cfg.hidden_size


@pytest.mark.parametrize("model_type", ARCHS)
def test_hooked_pre_out_equals_attention_times_values(tiny_models, model_type):
    """The recorded pre-out equals softmax(QK^T) V computed from the layer's input and weights."""
    mod = module(tiny_models[model_type], attn_implementation="eager")
    ids = torch.randint(4, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    recorded, inputs = {}, {}

    def grab_input(layer):
        def hook(m, args, kwargs):
            inputs[layer] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

        return hook

    path = ATTENTION.get(model_type, "model.layers.{}.self_attn")
    attns = [mod.model.get_submodule(path.format(i)) for i in range(2)]
    handles = [a.register_forward_pre_hook(grab_input(i), with_kwargs=True) for i, a in enumerate(attns)]
    try:
        with mod.hooks.recording(lambda layer, x: recorded.__setitem__(layer, x.clone())):
            out = mod.model(input_ids=ids, output_attentions=True)
    finally:
        for h in handles:
            h.remove()
    p = mod.pre_outs[0]
    for layer in range(2):
        v = _values(model_type, attns[layer], inputs[layer], p.n_heads, p.head_dim)
        z = out.attentions[layer] @ v  # [batch, heads, pos, head_dim]
        expected = z.transpose(1, 2).reshape(2, 12, p.n_heads * p.head_dim)
        torch.testing.assert_close(recorded[layer], expected, rtol=1e-5, atol=1e-5)
    assert not mod.hooks.active


def test_an_encoder_is_refused_as_a_causal_lm_before_its_weights_are_read(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"]}))
    with pytest.raises(AblateError, match=r"'bert' is a bidirectional encoder.*MaskedLMAblation"):
        module(tmp_path)  # the folder holds no weights: refused from the config alone


def test_missing_model_folder(tmp_path):
    with pytest.raises(AblateError, match="model folder .* not found"):
        module(tmp_path / "nope")


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_names_classes_that_exist_and_know_their_family(name):
    """A family's LightningModule and DataModules are ablate_lit's, the module knows its family, each
    DataModule has the interface a run reads, and its auto class is transformers'."""
    import transformers

    import ablate_lit
    from ablate_lit.data.protocol import AblationData

    entry = FAMILIES[name]
    module_cls = getattr(ablate_lit, entry.module)
    assert module_cls.family == name and set(entry.resample_sources) <= set(RESAMPLE_SOURCES)
    assert hasattr(transformers, entry.auto_class)
    for data in entry.data:
        data_cls = getattr(ablate_lit, data)
        members = [m for m in vars(AblationData) if not m.startswith("_")]  # (batch_size is set per instance)
        missing = [m for m in members if not hasattr(data_cls, m)]
        assert not missing, f"{data} lacks {missing}"
    other = next(f for f in FAMILIES.values() if f.name != name)
    with pytest.raises(AblateError, match=f"evaluates on {' or '.join(entry.data)}"):
        module_cls.connect_data(
            module_cls.__new__(module_cls),
            getattr(ablate_lit, other.data[0]).__new__(getattr(ablate_lit, other.data[0])),
        )
