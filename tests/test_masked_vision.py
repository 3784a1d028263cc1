"""Masked-LM and vision families: hooked pre-outs by hand, the ablation invariants, scoring and masking."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import with_zero_inputs

from ablate_lit import AblateError, ImageData, MaskedLMAblation, MaskedTextData, VisionAblation
from ablate_lit.stats import TokenScores
from ablate_lit.testing.tiny import N_CLASSES

MASKED = ["bert", "roberta", "xlm-roberta"]
VISION = ["timm", "hf"]
IDS = torch.randint(5, 300, (2, 12), generator=torch.Generator().manual_seed(0))
PIXELS = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def load(kind, name, tiny_masked, tiny_vision):
    if kind == "masked":
        return MaskedLMAblation(str(tiny_masked[name]))
    return VisionAblation(str(tiny_vision[name]))


def logits(mod):
    if isinstance(mod, MaskedLMAblation):
        return mod.model(input_ids=IDS).logits
    return mod.logits_and_labels({"pixel_values": PIXELS, "label": torch.zeros(2, dtype=torch.long)})[0]


def attention_parts(mod, layer):
    """(module whose input is the attention input, function input -> (q, k, v) [batch, heads, pos, d])."""
    p = mod.pre_outs[layer]
    split = lambda t: t.view(t.shape[0], t.shape[1], p.n_heads, p.head_dim).transpose(1, 2)  # noqa: E731
    if isinstance(mod, VisionAblation) and mod.backend == "timm":
        attn = mod.model.blocks[layer].attn
        assert attn.fused_attn  # the hook must see the pre-out of fused (SDPA) attention too

        def qkv(h):
            q, k, v = attn.qkv(h).chunk(3, dim=-1)
            return split(q), split(k), split(v)

        return attn, qkv
    if isinstance(mod, VisionAblation):
        attn = (
            mod.model.vit.layers[layer].attention
            if hasattr(mod.model.vit, "layers")
            else mod.model.vit.encoder.layer[layer].attention
        )
        return attn, lambda h: (split(attn.q_proj(h)), split(attn.k_proj(h)), split(attn.v_proj(h)))
    body = mod.model.bert if hasattr(mod.model, "bert") else mod.model.roberta
    attn = body.encoder.layer[layer].attention.self
    return attn, lambda h: (split(attn.query(h)), split(attn.key(h)), split(attn.value(h)))


CASES = [("masked", n) for n in MASKED] + [("vision", n) for n in VISION]


@pytest.mark.parametrize("kind,name", CASES)
def test_hooked_pre_out_equals_softmax_qk_v(tiny_masked, tiny_vision, kind, name):
    mod = load(kind, name, tiny_masked, tiny_vision)
    recorded, inputs = {}, {}
    handles = []
    for layer in range(mod.hooks.n_layers):
        attn, _ = attention_parts(mod, layer)
        handles.append(
            attn.register_forward_pre_hook(
                lambda m, a, kw, layer=layer: inputs.__setitem__(layer, kw.get("hidden_states", a[0] if a else None)),
                with_kwargs=True,
            )
        )
    try:
        with mod.hooks.recording(lambda l, x: recorded.__setitem__(l, x.clone())):
            logits(mod)
    finally:
        for h in handles:
            h.remove()
    for layer in range(mod.hooks.n_layers):
        q, k, v = attention_parts(mod, layer)[1](inputs[layer])
        p = mod.pre_outs[layer]
        z = torch.softmax(q @ k.transpose(-1, -2) * p.head_dim**-0.5, dim=-1) @ v
        expected = z.transpose(1, 2).reshape(z.shape[0], z.shape[2], p.width)
        torch.testing.assert_close(recorded[layer], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind,name", CASES)
def test_invariants_at_zero_and_full_ablation(tiny_masked, tiny_vision, kind, name):
    mod = load(kind, name, tiny_masked, tiny_vision)
    L, D = mod.hooks.n_layers, mod.hooks.width
    reference = logits(mod)
    with mod.hooks.ablating(torch.zeros(L, D, dtype=torch.bool), values=torch.randn(L, D)):
        assert torch.equal(logits(mod), reference)
    with mod.hooks.ablating(torch.ones(L, D, dtype=torch.bool), values=torch.zeros(L, D)):
        ablated = logits(mod)
    by_hand = with_zero_inputs(mod.pre_outs, lambda: logits(mod))
    torch.testing.assert_close(ablated, by_hand, rtol=0, atol=0)


def masked_data(tiny_masked, corpus, name="roberta", **kw):
    mod = MaskedLMAblation(str(tiny_masked[name]))
    settings = dict(max_tokens=2000, calib_tokens=200, context_length=32, batch_size=4)
    settings.update(kw)
    d = MaskedTextData(str(corpus), **settings)
    mod.connect_data(d)
    d.setup()
    return mod, d


def test_masking_is_15_percent_split_80_10_10_and_identical_every_time(tiny_masked, corpus):
    mod, d = masked_data(tiny_masked, corpus)
    windows, inputs, labels = d.eval_windows, d.eval_inputs, d.eval_labels
    special = torch.tensor(mod.tokenizer.all_special_ids)
    assert bool(
        (windows[:, 0] == mod.tokenizer.cls_token_id).all() and (windows[:, -1] == mod.tokenizer.sep_token_id).all()
    )
    selected = labels != -100
    n_text = int((~torch.isin(windows, special)).sum())
    per_window = selected.sum(1)
    assert per_window.tolist() == [round(0.15 * int((~torch.isin(w, special)).sum())) for w in windows]
    assert not bool(torch.isin(windows[selected], special).any())  # only text tokens are selected
    assert torch.equal(labels[selected], windows[selected])
    mask_id = mod.tokenizer.mask_token_id
    expected_random = changed_total = 0
    for w in range(len(windows)):
        sel = selected[w]
        k = int(sel.sum())
        n_mask = int((inputs[w][sel] == mask_id).sum())
        changed = int(((inputs[w][sel] != windows[w][sel]) & (inputs[w][sel] != mask_id)).sum())
        assert n_mask == round(0.8 * k)
        assert changed <= round(0.1 * k)  # a random draw may equal the original token
        expected_random += round(0.1 * k)
        changed_total += changed
    assert changed_total >= expected_random - 3  # draws hit the original with probability 1/295
    assert abs(int(selected.sum()) - 0.15 * n_text) <= len(windows)
    assert bool((inputs[~selected] == windows[~selected]).all())
    _, again = masked_data(tiny_masked, corpus)
    assert torch.equal(again.eval_inputs, inputs) and torch.equal(again.eval_labels, labels)


def test_only_selected_tokens_are_scored(tiny_masked, corpus):
    mod, d = masked_data(tiny_masked, corpus, max_tokens=300)
    scores = TokenScores()
    for batch in d.test_dataloader():
        scores.update(*mod.logits_and_labels(batch))
    out = scores.compute()
    sel = d.eval_labels != -100
    lg = mod.model(input_ids=d.eval_inputs).logits
    ce = F.cross_entropy(lg[sel], d.eval_labels[sel])
    assert int(out["n_tokens"]) == int(sel.sum())
    assert float(out["ce"]) == pytest.approx(float(ce), rel=1e-5)
    assert float(out["top1"]) == pytest.approx(float((lg[sel].argmax(-1) == d.eval_labels[sel]).float().mean()))


def image_data(tiny_vision, image_folder, name="timm", **kw):
    mod = VisionAblation(str(tiny_vision[name]))
    settings = dict(max_images=20, calib_images=10, batch_size=8)
    settings.update(kw)
    d = ImageData(str(image_folder), **settings)
    mod.connect_data(d)
    d.setup()
    return mod, d


@pytest.mark.parametrize("name", VISION)
def test_image_scores_against_labels(tiny_vision, image_folder, name):
    mod, d = image_data(tiny_vision, image_folder, name)
    scores = TokenScores()
    xs, ys = [], []
    for batch in d.test_dataloader():
        scores.update(*mod.logits_and_labels(batch))
        xs.append(batch["pixel_values"])
        ys.append(batch["label"])
    x, y = torch.cat(xs), torch.cat(ys)
    assert x.shape[1:] == (3, 32, 32) and len(y) == 20 and set(y.tolist()) <= set(range(N_CLASSES))
    lg = mod.model(x) if name == "timm" else mod.model(pixel_values=x).logits
    out = scores.compute()
    assert float(out["ce"]) == pytest.approx(float(F.cross_entropy(lg, y)), rel=1e-5)
    assert int(out["n_tokens"]) == 20
    ev = {int(i) for i in torch.arange(20)}
    assert len(d.eval_set) == 20 and len(d.calib_set) == 10 and len(ev) == 20


def test_label_space_mismatch_is_refused(tiny_vision, image_folder, tmp_path):
    from ablate_lit.testing.tiny import make_image_folder

    small = make_image_folder(tmp_path / "imgs", per_class=4)
    (small / "class_5").mkdir()
    for f in list((small / "class_0").iterdir())[:2]:
        f.rename(small / "class_5" / f.name)
    with pytest.raises(AblateError, match="the data has 6 classes but the model predicts 5"):
        image_data(tiny_vision, small, max_images=10, calib_images=5)


def test_random_pixels_go_through_the_model_preprocessing(tiny_vision):
    mod = VisionAblation(str(tiny_vision["hf"]))
    ds = mod.random_inputs("random_pixels", 3, 0, None)
    item = ds[2]
    assert item["pixel_values"].shape == (3, 32, 32) and item["index"] == 2
    assert -1.01 <= float(item["pixel_values"].min()) and float(item["pixel_values"].max()) <= 1.01
    assert torch.equal(ds[1]["pixel_values"], mod.random_inputs("random_pixels", 3, 0, None)[1]["pixel_values"])
