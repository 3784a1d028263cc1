"""Attribution maps (``--ablation.schedule attribution``): the estimates against a hand-written autograd
computation, their convergence to the exact effect, and the exact checks against the single-unit map."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import cli, data, launch, module, one_line_error, read_rows, run, tiny_args

import ablate_lit
from ablate_lit import MaskedLMAblation, VisionAblation
from ablate_lit.stats.attribution import unit_estimates

METHODS = "[zero,mean,resample:data]"
SMALL = ["--ablation.attribution_top_k", 3, "--ablation.attribution_sample", 4, "--ablation.log_histograms", "false"]


def attribution_args(model, corpus, root, *extra):
    return tiny_args(model, corpus, root, "--ablation.schedule", "attribution", "--ablation.methods", METHODS, *SMALL,
                     *extra)  # fmt: skip


def hand_estimates(mod, batch, values: dict) -> dict:
    """Each method's estimated change of the mean CE per neuron [n_layers * width], by hand: every
    out-projection's input gets a zero that requires grad added (its forward patched, no ablate_lit
    hook), the CE summed over the scored positions is differentiated once, and (v - a) * dL/da is
    summed over every position."""
    n_layers = mod.hooks.n_layers
    deltas, kept = {}, {}
    saved = [(p.module, p.module.forward) for p in mod.pre_outs]

    def wrap(layer, forward):
        def patched(x, *args, **kwargs):
            deltas[layer] = torch.zeros_like(x, requires_grad=True)
            kept[layer] = x.detach()
            return forward(x + deltas[layer], *args, **kwargs)

        return patched

    for layer, (m, forward) in enumerate(saved):
        m.forward = wrap(layer, forward)
    try:
        with torch.enable_grad():
            logits, labels = mod.logits_and_labels(batch)
            loss = F.cross_entropy(logits.float(), labels, ignore_index=-100, reduction="sum")
            grads = torch.autograd.grad(loss, [deltas[i] for i in range(n_layers)])
    finally:
        for m, forward in saved:
            m.forward = forward
    n_scored = int((labels != -100).sum())
    out = {}
    for method, v in values.items():
        per_layer = []
        for layer, g in enumerate(grads):
            a = kept[layer]
            if v.dim() == 4:  # a resample cache: each input's own row
                repl = v[layer][batch["index"] % v.shape[1], : a.shape[1]]
            else:
                repl = v[layer]
            per_layer.append(((repl - a) * g).reshape(-1, a.shape[-1]).sum(0).double())
        out[method] = torch.cat(per_layer) / n_scored
    return out


def _caches(root):
    cache = root / ".calibration_cache"
    stats = torch.load(next(cache.glob("stats-*.pt")), weights_only=False)
    resample = torch.load(next(cache.glob("resample-data-*.pt")), weights_only=False)["resample"]
    return stats, resample


def _sums(run_dir):
    return torch.load(run_dir / "attribution.pt", weights_only=False)["sums"]["ce"]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_estimates_equal_a_hand_written_autograd_computation(capsys, tiny_models, corpus, tmp_path, arch):
    code, _, err = run(capsys, *attribution_args(tiny_models[arch], corpus, tmp_path))
    assert code == 0, err
    _check_against_hand(module(tiny_models[arch]), corpus, tmp_path)


@pytest.mark.slow
def test_mlp_units_are_attributed_like_attention_neurons(capsys, tiny_models, corpus, tmp_path):
    """At ``--ablation.site mlp`` the units are the MLP down-projection's inputs: the same hand check."""
    code, _, err = run(capsys, *attribution_args(tiny_models["llama"], corpus, tmp_path, "--ablation.site", "mlp"))
    assert code == 0, err
    mod = module(tiny_models["llama"])
    mod.select_site("mlp")
    _check_against_hand(mod, corpus, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["quanto-int8", "torchao-int8"])
def test_a_quantized_model_is_attributed_through_its_quantized_weights(capsys, tiny_models, corpus, tmp_path, preset):
    pytest.importorskip("optimum.quanto" if preset.startswith("quanto") else "torchao")
    args = attribution_args(tiny_models["llama"], corpus, tmp_path, "--model.quantization", preset)
    code, _, err = run(capsys, *args)
    assert code == 0, err
    _check_against_hand(module(tiny_models["llama"], quantization=preset), corpus, tmp_path)


def _check_against_hand(mod, corpus, tmp_path) -> None:
    d = data(corpus, mod)
    stats, resample = _caches(tmp_path)
    windows = d.eval_windows
    batch = {"input_ids": windows, "index": torch.arange(len(windows))}
    values = {"zero": torch.zeros_like(stats["mean"]), "mean": stats["mean"].float(), "resample:data": resample}
    hand = hand_estimates(mod, batch, values)
    sums = _sums(tmp_path / "run")
    layers = list(range(mod.hooks.n_layers))
    for method, expected in hand.items():
        got = unit_estimates(sums[method], sums["count"], mod.hooks.width, 1, layers)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7, msg=method)


@pytest.mark.parametrize("kind", ["masked", "vision"])
def test_masked_and_vision_estimates_equal_a_hand_written_computation(
    capsys, monkeypatch, assets, tiny_masked, tiny_vision, tmp_path, kind
):
    monkeypatch.setenv("ABLATE_LIT_ASSETS", str(assets))
    config = "configs/tiny-masked.yaml" if kind == "masked" else "configs/tiny-vision.yaml"
    args = ["--config", config, "--ablation.schedule", "attribution", "--ablation.methods", "[zero,mean]", *SMALL]
    code, _, err = run(capsys, *args, "--root", tmp_path, "--name", "run")
    assert code == 0, err
    import yaml

    settings = yaml.safe_load(open(config))["data"]["init_args"]
    if kind == "masked":
        from ablate_lit import MaskedTextData

        mod = MaskedLMAblation(str(tiny_masked["roberta"]))
        d = MaskedTextData(str(assets / "corpus"), **{k: v for k, v in settings.items() if k != "path"})
    else:
        from ablate_lit import ImageData

        mod = VisionAblation(str(tiny_vision["timm"]))
        d = ImageData(str(assets / "images"), **{k: v for k, v in settings.items() if k != "path"})
    mod.connect_data(d)
    d.setup()
    batch = torch.utils.data.default_collate([d.eval_dataset()[i] for i in range(len(d.eval_dataset()))])
    stats = _statistics(tmp_path)
    values = {"zero": torch.zeros_like(stats["mean"]), "mean": stats["mean"].float()}
    hand = hand_estimates(mod, batch, values)
    sums = _sums(tmp_path / "run")
    for method, expected in hand.items():
        got = unit_estimates(sums[method], sums["count"], mod.hooks.width, 1, list(range(mod.hooks.n_layers)))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7, msg=method)


def _statistics(root):
    return torch.load(next((root / ".calibration_cache").glob("stats-*.pt")), weights_only=False)


def test_the_estimate_converges_to_the_exact_effect_as_the_replacement_nears_the_activation(tiny_models, corpus):
    """Replacing a head's activations ``a`` by ``a + t (0 - a)``: the exact change of the summed CE,
    divided by t, tends to the first-order estimate of zeroing the head as t shrinks (finite differences)."""
    from ablate_lit.maps.attribution import AttributionStep
    from ablate_lit.stats.attribution import AttributionSums
    from ablate_lit.stats.token_metrics import TokenScores

    mod = module(tiny_models["gpt2"])
    mod.model.double()  # (float64 throughout, as GPT-2 computes: small t is not lost to rounding)
    d = data(corpus, mod)
    windows = d.eval_windows
    batch = {"input_ids": windows, "index": torch.arange(len(windows))}
    n_layers, width, hd = mod.hooks.n_layers, mod.hooks.width, mod.pre_outs[0].head_dim
    mod.evaluate_with(TokenScores(len(windows)), kl=False)
    sums = AttributionSums(len(windows), n_layers, width, ("ce",), ["zero"])
    AttributionStep(mod, {"zero": {"values": torch.zeros(n_layers, width, dtype=torch.float64)}}, sums).step(batch)
    total = sums.compute()["ce"]["zero"].sum(0)
    head = torch.zeros(n_layers, width, dtype=torch.bool)
    head[1, hd : 2 * hd] = True
    estimate = float(total.view(n_layers, width)[head].sum())  # the summed CE's change: not divided by tokens

    recorded = {}
    with torch.no_grad(), mod.hooks.recording(lambda layer, x: recorded.__setitem__(layer, x.clone())):
        logits, labels = mod.logits_and_labels(batch)
    base = float(F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum"))
    cache = torch.stack([recorded[layer] for layer in range(n_layers)])  # [layers, windows, pos, width]
    errors = []
    for t in (0.1, 0.01, 0.001, 0.0001):
        mod.hooks.sample_index = batch["index"]
        with torch.no_grad(), mod.hooks.ablating(head, resample=(1 - t) * cache, device="cpu"):
            logits, _ = mod.logits_and_labels(batch)
        change = float(F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")) - base
        errors.append(abs(change / t - estimate))
    for a, b in zip(errors, errors[1:]):  # first order: the error shrinks with t, tenfold per step
        assert 7 < a / b < 13, errors
    assert errors[-1] < 1e-3 * abs(estimate), (errors, estimate)


@pytest.mark.slow
def test_exact_checks_equal_the_single_unit_maps_rows(capsys, tiny_models, corpus, tmp_path):
    common = ["--ablation.unit", "head", "--ablation.methods", "[zero,mean]", "--ablation.log_histograms", "false"]
    code, _, err = run(capsys, *tiny_args(tiny_models["gpt2"], corpus, tmp_path / "map", "--ablation.schedule", "each",
                                          *common))  # fmt: skip
    assert code == 0, err
    code, out, err = run(capsys, *tiny_args(tiny_models["gpt2"], corpus, tmp_path / "att", "--ablation.schedule",
                                            "attribution", "--ablation.attribution_top_k", 2,
                                            "--ablation.attribution_sample", 3, *common))  # fmt: skip
    assert code == 0, err
    exact = {(r["method"], r["target"]): r for r in read_rows(tmp_path / "map" / "run" / "results.csv")}
    checked = [r for r in read_rows(tmp_path / "att" / "run" / "results.csv") if r["target"] != "-"]
    assert 2 * 3 <= len(checked) <= 2 * 5  # each method's top 2 and the 3 drawn (they may overlap)
    for r in checked:
        for column in ("ce", "top1", "n_tokens", "n_ablated"):
            assert r[column] == exact[(r["method"], r["target"])][column], (r["method"], r["target"], column)
    assert "The estimate against exact ablation" in out and "Method agreement" in out
    for name in ("attribution.csv", "attribution.md", "gpt2-attribution-neurons.png", "gpt2-attribution-heads.png",
                 "gpt2-attribution-scatter.png"):  # fmt: skip
        assert (tmp_path / "att" / "run" / name).is_file(), name
    table = ablate_lit.load(tmp_path / "att" / "run").attribution()
    heads = table[(table["kind"] == "head") & table["exact"].notna()]
    assert {(m, u) for m, u in zip(heads["method"], heads["unit"])} == {(r["method"], r["target"]) for r in checked}
    assert len(table) == 2 * (64 + 8 + 2)  # methods x (neurons + heads + layers), CE only

    # the report holds the estimates against every head of the exact map of the same setup
    code, out, err = cli(capsys, "report", tmp_path / "att" / "run", tmp_path / "map" / "run", "--out", tmp_path / "r")
    assert code == 0, err
    assert "| zero | head | ce | estimate | 8 |" in out and "| mean | head | ce | estimate | 8 |" in out
    assert (tmp_path / "r" / "run" / "attribution.md").is_file()


@pytest.mark.slow
def test_an_attribution_run_resumes_from_its_sweep(capsys, tiny_models, corpus, tmp_path, monkeypatch):
    args = attribution_args(tiny_models["llama"], corpus, tmp_path)
    assert run(capsys, *args)[0] == 0
    rows = read_rows(tmp_path / "run" / "results.csv")
    from ablate_lit.maps.attribution import AttributionStep

    monkeypatch.setattr(AttributionStep, "step", lambda *a, **k: pytest.fail("the sweep ran again"))
    code, out, err = run(capsys, *args)
    assert code == 0, err and "the estimates of this run's sweep" in out
    assert read_rows(tmp_path / "run" / "results.csv") == rows


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_give_the_sums_of_one(tiny_models, corpus, tmp_path):
    sums = {}
    for how in ("one", "ddp", "fsdp2"):
        extra = ["--ablation.attribution_graddrop", "true"]
        extra += [] if how == "one" else ["--trainer.devices", 2, "--trainer.strategy", how]
        proc = launch("test", *attribution_args(tiny_models["llama"], corpus, tmp_path / how), *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
        sums[how] = torch.load(tmp_path / how / "run" / "attribution.pt", weights_only=False)["sums"]
    for how in ("ddp", "fsdp2"):  # the sums of CE, and GradDrop's magnitudes
        torch.testing.assert_close(sums[how], sums["one"], rtol=1e-5, atol=1e-9, msg=how)


@pytest.mark.slow
def test_an_order_by_estimated_harm_ablates_the_least_harmful_units_first(capsys, tiny_models, corpus, tmp_path):
    from ablate_lit.ablation.schedule import neuron_order

    code, out, err = run(capsys, *tiny_args(tiny_models["llama"], corpus, tmp_path, "--ablation.order",
                                            "attribution:mean", "--ablation.methods", "[zero,mean]"))  # fmt: skip
    assert code == 0, err
    assert "an attribution sweep over" in out and "only seed 0 runs" in out
    harm = torch.load(next((tmp_path / ".calibration_cache").glob("order-*.pt")), weights_only=False)["harm"]
    order = neuron_order(0, *harm.shape, "per_layer", scores=harm)
    assert torch.equal(harm.gather(1, order), harm.sort(1).values)  # ascending harm, layer by layer
    rows = {(r["method"], r["fraction"]): r for r in read_rows(tmp_path / "run" / "results.csv")}
    assert rows[("mean", "0.5")]["order"] == "attribution:mean"


def test_bad_attribution_settings_are_one_line(capsys, tiny_models, corpus, tmp_path):
    code, _, err = run(
        capsys, *tiny_args(tiny_models["llama"], corpus, tmp_path, "--ablation.order", "attribution:mode")
    )
    assert code == 2 and "unknown ablation method 'mode'" in one_line_error(err)
    code, _, err = run(capsys, *attribution_args(tiny_models["llama"], corpus, tmp_path, "--ablation.mode", "fold"))
    assert code == 2 and "use --ablation.mode hook" in one_line_error(err)


def test_a_model_that_gives_no_gradients_is_refused_in_one_line(assets, tiny_models, corpus, tmp_path):
    """A model whose forward runs without autograd (here under ``torch.no_grad``) cannot be attributed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import ablate_lit
    from ablate_lit import AblateError

    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    model.forward = torch.no_grad()(model.forward)
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    with pytest.raises(AblateError, match=r"attribution needs gradients through the model.*schedule=each"):
        ablate_lit.run(
            model, ["some text " * 80], tokenizer=tokenizer, root=tmp_path, verbose=False, schedule="attribution",
            methods=["zero"], context_length=16, calib_tokens=32, max_tokens=64, trainer={"accelerator": "cpu"},
        )  # fmt: skip


@pytest.fixture(scope="module")
def deep_llama(tiny_models, tmp_path_factory):
    """A tiny Llama of 4 layers (GradDrop drops each block in turn)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from ablate_lit.testing.tiny import _scale_weights

    config = AutoConfig.from_pretrained(tiny_models["llama"])
    config.num_hidden_layers = 4
    torch.manual_seed(5)
    model = AutoModelForCausalLM.from_config(config)
    _scale_weights(model)
    folder = tmp_path_factory.mktemp("deep") / "llama4"
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_models["llama"]).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_graddrop_scores_equal_a_hand_written_computation(capsys, deep_llama, corpus, tmp_path):
    """GradDrop (AtP*): per unit, the sum over each block l of |sum over positions of (v - a) * dL_l/da|,
    where L_l's gradient passes no path through block l (its attention and MLP outputs detached), per
    window, averaged over the scored tokens and the L - 1 blocks; all L blocks are dropped by hand here,
    the unit's own and those before it included."""
    from ablate_lit.stats.attribution import GRADDROP, graddrop_estimates

    args = attribution_args(deep_llama, corpus, tmp_path, "--ablation.attribution_graddrop", "true")
    code, out, err = run(capsys, *args)
    assert code == 0, err
    assert "one backward pass, 3 more for GradDrop" in out and "| GradDrop |" in out
    mod = module(deep_llama)
    windows = data(corpus, mod).eval_windows
    stats, resample = _caches(tmp_path)
    values = {"zero": torch.zeros_like(stats["mean"]), "mean": stats["mean"].float(), "resample:data": resample}
    blocks = mod.model.model.layers
    n_layers, width, head_dim = len(blocks), mod.hooks.width, mod.pre_outs[0].head_dim
    magnitude = {m: {s: 0.0 for s in (1, head_dim, width)} for m in values}
    for dropped in range(n_layers):
        deltas, kept = {}, {}

        def add(layer, x):
            deltas[layer] = torch.zeros_like(x, requires_grad=True)
            kept[layer] = x.detach()
            return x + deltas[layer]

        handles = [b.self_attn.o_proj.register_forward_pre_hook(lambda m, a, _l=i: (add(_l, a[0]),))
                   for i, b in enumerate(blocks)]  # fmt: skip
        for branch in (blocks[dropped].self_attn.o_proj, blocks[dropped].mlp.down_proj):
            handles.append(branch.register_forward_hook(lambda m, a, out: out.detach()))
        try:
            with torch.enable_grad():
                logits = mod.model(input_ids=windows).logits[:, :-1]
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), windows[:, 1:].reshape(-1),
                                       reduction="sum")  # fmt: skip
                grads = torch.autograd.grad(loss, [deltas[i] for i in range(n_layers)], allow_unused=True)
        finally:
            for h in handles:
                h.remove()
        for method, v in values.items():
            for layer in range(n_layers):
                g, a = grads[layer], kept[layer]
                if g is None:
                    g = torch.zeros_like(a)
                repl = v[layer][torch.arange(len(windows)) % v.shape[1], : a.shape[1]] if v.dim() == 4 else v[layer]
                terms = ((repl - a) * g).sum(1).double()  # [windows, width]
                for size in (1, head_dim, width):
                    per_unit = terms.view(len(windows), width // size, size).sum(-1).abs().sum(0)
                    magnitude[method][size] = magnitude[method][size] + torch.nn.functional.pad(
                        per_unit, (layer * (width // size), (n_layers - 1 - layer) * (width // size))
                    )
    sums = torch.load(tmp_path / "run" / "attribution.pt", weights_only=False)["sums"]
    n_scored = int(sums["ce"]["count"].sum())
    assert n_scored == windows[:, 1:].numel()
    for method in values:
        for level, size in (("neuron", 1), ("head", head_dim), ("layer", width)):
            got = graddrop_estimates(sums[GRADDROP][method][level], sums["ce"]["count"], n_layers, list(range(4)))
            expected = magnitude[method][size] / n_scored / (n_layers - 1)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-8, msg=(method, level))


@pytest.mark.slow
def test_optimals_checks_measure_the_one_fit_its_estimates_are_of(capsys, tiny_models, corpus, tmp_path):
    """optimal's estimates are of its one fit of every unit at once; its exact checks replace each unit by
    those same constants (no fit per unit), so the check tests the estimate of the values it estimates."""
    args = tiny_args(tiny_models["llama"], corpus, tmp_path, "--ablation.schedule", "attribution",
                     "--ablation.methods", "[optimal]", "--ablation.optimal_epochs", 2, *SMALL[:4],
                     "--ablation.log_histograms", "false")  # fmt: skip
    code, _, err = run(capsys, *args)
    assert code == 0, err
    fits = list((tmp_path / ".calibration_cache").glob("optimal-*.pt"))
    assert len(fits) == 1  # the one fit, of every unit
    fit = torch.load(fits[0], weights_only=False)
    assert bool(fit["mask"].all())
    checked = [r for r in read_rows(tmp_path / "run" / "results.csv") if r["target"] != "-"]
    assert len(checked) >= 4
    mod = module(tiny_models["llama"])
    windows = data(corpus, mod).eval_windows
    for row in checked[:2]:
        layer, index = (int(part[1:]) for part in row["target"].split("."))

        def replace(m, a, layer=layer, index=index):
            x = a[0].clone()
            x[..., index] = fit["values"][layer, index]
            return (x,)

        handle = mod.pre_outs[layer].module.register_forward_pre_hook(replace)
        try:
            with torch.no_grad():
                logits = mod.model(input_ids=windows).logits[:, :-1]
        finally:
            handle.remove()
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), windows[:, 1:].reshape(-1))
        assert float(row["ce"]) == pytest.approx(float(ce), rel=1e-5), row["target"]
