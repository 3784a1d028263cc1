"""What is ablated: whole heads, MLP hidden units, chosen layers, units in order of a statistic.

The sets are checked against their definitions, and CLI results against hooks written by hand: a
head's slice of the out-projection input zeroed by hand, the MLP output projection's input zeroed
or set to the MLP mean computed here with torch.mean over the recorded hidden units.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import data, module, patched, read_rows, run, tiny_args

from ablate_lit.ablation.schedule import ablation_mask, n_ablated, neuron_order, unit_scores
from ablate_lit.store.folder import read_rows as stored_rows

FRACTIONS = [i / 10 for i in range(11)]
SMALL = ["--ablation.seeds", "[0]", "--ablation.log_histograms", "false"]


# -- the sets ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("selection", ["per_layer", "global"])
def test_head_sets_are_whole_heads_nested_and_sized(selection):
    L, n_heads, head_dim = 3, 6, 4
    order = neuron_order(5, L, n_heads * head_dim, selection, unit_size=head_dim)
    previous = torch.zeros(L, n_heads * head_dim, dtype=torch.bool)
    for f in FRACTIONS:
        mask = ablation_mask(order, f, L, n_heads * head_dim, unit_size=head_dim)
        heads = mask.view(L, n_heads, head_dim)
        assert bool((heads.all(-1) | ~heads.any(-1)).all()), "a head is ablated whole or not at all"
        per_layer = heads.all(-1).sum(1)
        if selection == "per_layer":
            assert per_layer.tolist() == [n_ablated(f, n_heads)] * L
        else:
            assert int(per_layer.sum()) == n_ablated(f, L * n_heads)
        assert not bool((previous & ~mask).any())
        previous = mask
    assert torch.equal(
        order, neuron_order(5, L, n_heads * head_dim, selection, unit_size=head_dim)
    )  # the same for every method


@pytest.mark.parametrize("selection,descending", [("per_layer", False), ("global", False), ("global", True)])
def test_an_ordered_selection_ablates_the_first_units_of_its_order(selection, descending):
    L, W = 3, 10
    scores = torch.randn(L, W, generator=torch.Generator().manual_seed(0))
    scores[1, 3] = float("nan")  # comes last, whichever the direction
    layers = [0, 1]
    order = neuron_order(0, L, W, selection, layers=layers, scores=scores, descending=descending)
    for f in FRACTIONS:
        mask = ablation_mask(order, f, L, W, layers=layers)
        assert not bool(mask[2].any()), "only the chosen layers"
        chosen = scores[layers]
        key = torch.nan_to_num(-chosen if descending else chosen, nan=float("inf"))
        if selection == "global":
            k = n_ablated(f, len(layers) * W)
            expected = torch.zeros(len(layers) * W, dtype=torch.bool)
            expected[torch.argsort(key.reshape(-1), stable=True)[:k]] = True
            assert torch.equal(mask[layers].reshape(-1), expected)
        else:
            k = n_ablated(f, W)
            for i in range(len(layers)):
                assert set(mask[layers[i]].nonzero().squeeze(1).tolist()) == set(
                    torch.argsort(key[i], stable=True)[:k].tolist()
                )
    assert bool(ablation_mask(order, 1.0, L, W, layers=layers)[1, 3])


def test_a_head_scores_the_mean_of_its_neurons():
    stats = {"std": torch.arange(12.0).view(2, 6)}
    assert unit_scores(stats, "std", 3).tolist() == [[1.0, 4.0], [7.0, 10.0]]
    assert unit_scores(stats, "random", 3) is None


# -- heads, by hand ------------------------------------------------------------------------------------
def _eval(mod, d, fn=None, path=None, n_layers=2):
    x = d.eval_windows

    def ce():
        logits = mod.model(input_ids=x).logits[:, :-1]
        return float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1)))

    return ce() if fn is None else patched(mod.model, path, n_layers, fn, ce)


def test_heads_at_50_percent_zero_equal_their_slices_zeroed_by_hand(capsys, tiny_models, corpus, tmp_path):
    code, out, err = run(
        capsys,
        *tiny_args(
            tiny_models["llama"],
            corpus,
            tmp_path,
            *SMALL,
            "--ablation.unit",
            "head",
            "--ablation.methods",
            "[zero]",
            "--ablation.fractions",
            "[0.5,1]",
        ),
    )
    assert code == 0, err
    rows = {r["fraction"]: r for r in read_rows(tmp_path / "run" / "results.csv")}
    mod = module(tiny_models["llama"])
    d = data(corpus, mod)
    L, W, head_dim = mod.hooks.n_layers, mod.hooks.width, mod.pre_outs[0].head_dim
    heads = torch.randperm(W // head_dim, generator=torch.Generator().manual_seed(0))  # as the schedule draws layer 0's
    gen = torch.Generator().manual_seed(0)
    chosen = [torch.randperm(W // head_dim, generator=gen)[: n_ablated(0.5, W // head_dim)] for _ in range(L)]
    assert torch.equal(chosen[0], heads[: len(chosen[0])])

    def zero_heads(layer, x):
        x = x.clone().view(*x.shape[:-1], W // head_dim, head_dim)
        x[..., chosen[layer], :] = 0
        return x.view(*x.shape[:-2], W)

    by_hand = _eval(mod, d, zero_heads, "model.layers.{}.self_attn.o_proj", L)
    assert float(rows["0.5"]["ce"]) == pytest.approx(by_hand, rel=1e-5)
    assert int(rows["0.5"]["n_ablated"]) == L * len(chosen[0]) * head_dim
    all_zero = _eval(mod, d, lambda layer, x: torch.zeros_like(x), "model.layers.{}.self_attn.o_proj", L)
    assert float(rows["1"]["ce"]) == pytest.approx(all_zero, rel=1e-5)


# -- MLP units, by hand ---------------------------------------------------------------------------------
MLP = {
    "llama": "model.layers.{}.mlp.down_proj",
    "gpt2": "transformer.h.{}.mlp.c_proj",
    "opt": "model.decoder.layers.{}.fc2",
}


@pytest.mark.parametrize("arch", sorted(MLP))
def test_mlp_units_zeroed_and_set_to_their_mean_equal_the_same_by_hand(capsys, tiny_models, corpus, tmp_path, arch):
    code, out, err = run(
        capsys,
        *tiny_args(
            tiny_models[arch],
            corpus,
            tmp_path,
            *SMALL,
            "--ablation.site",
            "mlp",
            "--ablation.methods",
            "[zero,mean]",
            "--ablation.fractions",
            "[0,0.5,1]",
        ),
    )
    assert code == 0, err
    assert "MLP hidden units: 2 layers x" in out and MLP[arch].replace("{}", "*") in out
    rows = {(r["method"], r["fraction"]): float(r["ce"]) for r in read_rows(tmp_path / "run" / "results.csv")}
    mod = module(tiny_models[arch])
    d = data(corpus, mod)
    recorded: dict[int, list] = {}

    def record(layer, h):
        recorded.setdefault(layer, []).append(h.reshape(-1, h.shape[-1]))
        return h

    patched(mod.model, MLP[arch], 2, record, lambda: mod.model(input_ids=d.calib_windows))
    mean = torch.stack([torch.cat(recorded[l]).double().mean(0) for l in range(2)]).float()
    W = mean.shape[1]
    assert (
        W == getattr(mod.model.config, "intermediate_size", None)
        or W == getattr(mod.model.config, "ffn_dim", None)
        or W == 4 * mod.model.config.hidden_size
    )
    mask = ablation_mask(neuron_order(0, 2, W, "per_layer"), 0.5, 2, W)
    assert rows[("zero", "0")] == pytest.approx(_eval(mod, d), rel=1e-5)
    assert rows[("zero", "1")] == pytest.approx(_eval(mod, d, lambda l, h: torch.zeros_like(h), MLP[arch]), rel=1e-5)
    assert rows[("mean", "0.5")] == pytest.approx(
        _eval(mod, d, lambda l, h: torch.where(mask[l], mean[l], h), MLP[arch]), rel=1e-5
    )
    stats = next((tmp_path / ".calibration_cache").glob("stats-*.pt"))
    torch.testing.assert_close(torch.load(stats, weights_only=False)["mean"].float(), mean, rtol=1e-5, atol=1e-6)


def test_a_mixture_of_experts_model_is_refused_for_mlp_units(capsys, zoo, corpus, tmp_path):
    code, out, err = run(capsys, *tiny_args(zoo["mixtral"], corpus, tmp_path, *SMALL, "--ablation.site", "mlp"))
    assert code == 2 and "is a mixture-of-experts block" in err and "use --ablation.site attn" in err


# -- layers and orders ----------------------------------------------------------------------------------
def test_chosen_layers_only_and_fractions_count_their_units(capsys, tiny_models, corpus, tmp_path):
    code, out, err = run(
        capsys,
        *tiny_args(
            tiny_models["llama"],
            corpus,
            tmp_path,
            *SMALL,
            "--ablation.layers",
            "[-1]",
            "--ablation.methods",
            "[zero]",
            "--ablation.fractions",
            "[0.5,1]",
        ),
    )
    assert code == 0, err
    rows = {r["fraction"]: r for r in read_rows(tmp_path / "run" / "results.csv")}
    mod = module(tiny_models["llama"])
    d = data(corpus, mod)
    W = mod.hooks.width
    assert rows["1"]["n_neurons"] == rows["0.5"]["n_neurons"] == str(W) and rows["0.5"]["n_ablated"] == str(W // 2)
    assert rows["1"]["layers"] == "1"
    by_hand = _eval(mod, d, lambda l, x: torch.zeros_like(x) if l == 1 else x, "model.layers.{}.self_attn.o_proj")
    assert float(rows["1"]["ce"]) == pytest.approx(by_hand, rel=1e-5)


def test_an_order_runs_one_seed_and_ablates_the_lowest_first(capsys, tiny_models, corpus, tmp_path):
    code, out, err = run(
        capsys,
        *tiny_args(
            tiny_models["llama"],
            corpus,
            tmp_path,
            "--ablation.log_histograms",
            "false",
            "--ablation.order",
            "std",
            "--ablation.seeds",
            "[3,4]",
            "--ablation.methods",
            "[zero]",
            "--ablation.fractions",
            "[0.5]",
        ),
    )
    assert code == 0, err
    assert "order std: every seed gives the same sets, so only seed 3 runs" in out
    rows = read_rows(tmp_path / "run" / "results.csv")
    assert {r["seed"] for r in rows} == {"3"} and {r["order"] for r in rows} == {"std"}
    stats = torch.load(next((tmp_path / ".calibration_cache").glob("stats-*.pt")), weights_only=False)
    mod = module(tiny_models["llama"])
    d = data(corpus, mod)
    W = mod.hooks.width
    lowest = torch.argsort(stats["std"].double(), dim=1, stable=True)[:, : W // 2]
    by_hand = _eval(mod, d, lambda l, x: x.index_fill(-1, lowest[l], 0.0), "model.layers.{}.self_attn.o_proj")
    zero_half = next(r for r in rows if r["fraction"] == "0.5")
    assert float(zero_half["ce"]) == pytest.approx(by_hand, rel=1e-5)


# -- with the other machinery: fold, bf16, resume, report -------------------------------------------------
@pytest.mark.parametrize("what", [["--ablation.site", "mlp"], ["--ablation.unit", "head"]])
def test_fold_gives_the_hook_results_for_mlp_units_and_heads(capsys, tiny_models, corpus, tmp_path, what):
    rows = {}
    for mode in ("hook", "fold"):
        code, out, err = run(
            capsys,
            *tiny_args(
                tiny_models["gpt2"],
                corpus,
                tmp_path / mode,
                *SMALL,
                *what,
                "--ablation.methods",
                "[zero,mean,peak]",
                "--ablation.mode",
                mode,
            ),
        )
        assert code == 0, err
        rows[mode] = read_rows(tmp_path / mode / "run" / "results.csv")
    for a, b in zip(rows["hook"], rows["fold"], strict=True):
        assert (a["method"], a["fraction"]) == (b["method"], b["fraction"])
        assert float(a["ce"]) == pytest.approx(float(b["ce"]), rel=1e-5)


@pytest.mark.parametrize("what", [["--ablation.site", "mlp"], ["--ablation.unit", "head"]])
def test_bf16_stays_within_its_rounding_for_mlp_units_and_heads(capsys, tiny_models, corpus, tmp_path, what):
    ce = {}
    for precision in ("32", "bf16-true"):
        code, out, err = run(
            capsys,
            *tiny_args(
                tiny_models["llama"],
                corpus,
                tmp_path / precision,
                *SMALL,
                *what,
                "--ablation.methods",
                "[zero,peak]",
                "--trainer.precision",
                precision,
            ),
        )
        assert code == 0, err
        ce[precision] = [float(r["ce"]) for r in read_rows(tmp_path / precision / "run" / "results.csv")]
    for a, b in zip(ce["32"], ce["bf16-true"], strict=True):
        assert b == pytest.approx(a, rel=0.02)


def test_an_mlp_run_resumes_and_sits_beside_the_attention_run_in_the_report(capsys, tiny_models, corpus, tmp_path):
    from ablate_lit.entry.cli import main

    base = tiny_args(tiny_models["llama"], corpus, tmp_path, *SMALL, "--ablation.methods", "[zero,mean]")
    for name, extra in (("attn", []), ("mlp", ["--ablation.site", "mlp"])):
        args = [a if a != "run" else name for a in base] + extra
        assert run(capsys, *args)[0] == 0
    reference = read_rows(tmp_path / "mlp" / "results.csv")
    for p in sorted((tmp_path / "mlp" / "points").glob("*.json"))[:3]:
        p.unlink()
    (tmp_path / "mlp" / "results.csv").unlink()
    code, out, err = run(capsys, *[a if a != "run" else "mlp" for a in base], "--ablation.site", "mlp")
    assert code == 0 and "already in" in out
    assert read_rows(tmp_path / "mlp" / "results.csv") == reference
    main(["report", str(tmp_path / "attn"), str(tmp_path / "mlp"), "--out", str(tmp_path / "report")])
    out = capsys.readouterr().out
    assert "| zero @ 50% |" in out and "| zero [MLP] @ 50% |" in out
    header = next(line for line in out.splitlines() if line.startswith("| |"))
    assert header.count("llama") == 1  # one model, one column: attention and MLP curves side by side
    rows, _ = stored_rows(tmp_path / "mlp")
    assert {r["site"] for r in rows} == {"mlp"} and json.loads((tmp_path / "mlp" / "identity.json").read_text())[
        "site"
    ] == "mlp"
