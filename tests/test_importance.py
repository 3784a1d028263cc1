"""The single-unit importance map (``--ablation.schedule each``) against ablations written by hand.

Every unit's CE, Top1 and KL must equal a forward pass in which a hand-written patch replaces that
unit alone (the cached-prefix evaluation must change nothing); the agreement statistics must equal
an independent Spearman correlation and top-k count.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import cli, launch, one_line_error, patched, read_rows, run

from ablate_lit import CausalLMAblation, TextData
from ablate_lit.report.importance import agreement, importance, ranks, spearman, top_overlap

HOOKED = {  # where each tiny model's pre-outs are (attention), and its MLP output projection
    "llama": ("model.layers.{}.self_attn.o_proj", "model.layers.{}.mlp.down_proj"),
    "gpt2": ("transformer.h.{}.attn.c_proj", "transformer.h.{}.mlp.c_proj"),
    "opt": ("model.decoder.layers.{}.self_attn.out_proj", "model.decoder.layers.{}.fc2"),
    "gpt_neox": ("gpt_neox.layers.{}.attention.dense", "gpt_neox.layers.{}.mlp.dense_4h_to_h"),
}
DATA = ["--data.max_tokens", 112, "--data.calib_tokens", 96, "--data.context_length", 16, "--data.batch_size", 3]


def unit_args(model, corpus, root, *extra):
    return [
        "--model", "ablate_lit.CausalLMAblation", "--model.name_or_path", model,
        "--data", "ablate_lit.TextData", "--data.path", corpus, *DATA,
        "--ablation.schedule", "each", "--ablation.kl", "true", "--ablation.log_histograms", "false",
        "--root", root, "--name", "map", "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu",
        *extra,
    ]  # fmt: skip


def windows(model_path, corpus):
    mod = CausalLMAblation(str(model_path))
    d = TextData(str(corpus), max_tokens=112, calib_tokens=96, context_length=16, batch_size=3)
    mod.connect_data(d)
    d.setup()
    return mod, d.eval_windows, d.calib_windows


def scores_by_hand(logits, reference, x) -> tuple[float, float, float]:
    """CE, Top1 and KL(reference || logits) over every next-token position, by hand."""
    out, ref, labels = logits[:, :-1].float(), reference[:, :-1].float(), x[:, 1:]
    ce = F.cross_entropy(out.reshape(-1, out.shape[-1]), labels.reshape(-1), reduction="sum").double()
    top1 = (out.argmax(-1) == labels).sum().double()
    p = ref.log_softmax(-1)
    kl = (p.exp() * (p - out.log_softmax(-1))).sum(-1).sum().double()
    n = labels.numel()
    return float(ce / n), float(top1 / n), float(kl / n)


@pytest.mark.parametrize("name,site", [("llama", "attn"), ("gpt2", "attn"), ("opt", "attn"), ("gpt_neox", "attn"),
                                       ("llama", "mlp")])  # fmt: skip
def test_every_unit_equals_a_hand_written_ablation_of_that_unit_alone(capsys, tiny_models, corpus, tmp_path, name,
                                                                      site):  # fmt: skip
    unit = "head" if site == "attn" else "layer"
    code, out, err = run(capsys, *unit_args(tiny_models[name], corpus, tmp_path, "--ablation.methods", "[zero,mean]",
                                            "--ablation.unit", unit, "--ablation.site", site))  # fmt: skip
    assert code == 0, err
    assert "could not answer from kept outputs" not in out  # the cached-prefix path ran
    rows = read_rows(tmp_path / "map" / "results.csv")
    mod, x, calib = windows(tiny_models[name], corpus)
    path = HOOKED[name][site == "mlp"]
    width = mod.model.get_submodule(path.format(0)).weight.shape[0 if name == "gpt2" else 1]
    head_dim = mod.pre_outs[0].head_dim if unit == "head" else width

    recorded: dict[int, list] = {}
    patched(mod.model, path, 2, lambda l, v: recorded.setdefault(l, []).append(v.reshape(-1, v.shape[-1])) or v,
            lambda: mod.model(input_ids=calib))  # fmt: skip
    means = {l: torch.cat(v).double().mean(0).float() for l, v in recorded.items()}
    with torch.no_grad():
        reference = mod.model(input_ids=x).logits

    units = [r for r in rows if r["target"] != "-"]
    assert len(units) == 2 * 2 * (width // head_dim)  # methods x layers x units per layer
    for r in units:
        layer, _, head = r["target"].removeprefix("L").partition(".H")
        layer, head = int(layer), int(head or 0)
        cols = slice(head * head_dim, (head + 1) * head_dim)

        def replace(l, v, layer=layer, cols=cols, method=r["method"]):
            if l != layer:
                return v
            v = v.clone()
            v[..., cols] = 0.0 if method == "zero" else means[l][cols]
            return v

        logits = patched(mod.model, path, 2, replace, lambda: mod.model(input_ids=x).logits)
        ce, top1, kl = scores_by_hand(logits, reference, x)
        assert abs(float(r["ce"]) - ce) < 1e-6 and abs(float(r["kl"]) - kl) < 1e-6, (r["target"], r["ce"], ce)
        assert abs(float(r["top1"]) - top1) < 1e-7 and int(r["n_ablated"]) == head_dim
    base = next(r for r in rows if r["evaluated_as"] == "baseline")
    assert abs(float(base["ce"]) - scores_by_hand(reference, reference, x)[0]) < 1e-6


def test_resampling_and_heads_under_the_map_equal_the_modules_own_hooks(capsys, tiny_models, corpus, tmp_path):
    """resample:data through the map (one layer of the cache on the device, the prefix answered from
    kept outputs) against the module's hooks ablating the same head with the whole cache."""
    code, _, err = run(
        capsys,
        *unit_args(
            tiny_models["qwen2"],
            corpus,
            tmp_path,
            "--ablation.methods",
            "[resample:data]",
            "--ablation.unit",
            "head",
            "--ablation.n_resample",
            3,
        ),
    )
    assert code == 0, err
    cache = torch.load(next((tmp_path / ".calibration_cache").glob("resample-data-*.pt")), weights_only=False)
    mod, x, _ = windows(tiny_models["qwen2"], corpus)
    hd = mod.pre_outs[0].head_dim
    with torch.no_grad():
        reference = mod.model(input_ids=x).logits
    for r in (r for r in read_rows(tmp_path / "map" / "results.csv") if r["target"] != "-"):
        layer, head = (int(p) for p in r["target"].removeprefix("L").split(".H"))
        mask = torch.zeros(mod.hooks.n_layers, mod.hooks.width, dtype=torch.bool)
        mask[layer, head * hd : (head + 1) * hd] = True
        mod.hooks.sample_index = torch.arange(len(x))
        with torch.no_grad(), mod.hooks.ablating(mask, resample=cache["resample"]):
            logits = mod.model(input_ids=x).logits
        ce, _, kl = scores_by_hand(logits, reference, x)
        assert abs(float(r["ce"]) - ce) < 1e-6 and abs(float(r["kl"]) - kl) < 1e-6, r["target"]


def test_a_rerun_evaluates_nothing_and_report_prints_the_map(capsys, tiny_models, corpus, tmp_path):
    args = unit_args(tiny_models["llama"], corpus, tmp_path, "--ablation.methods", "[zero,mean,peak]",
                     "--ablation.unit", "head")  # fmt: skip
    code, out, err = run(capsys, *args)
    assert code == 0, err
    run_dir = tmp_path / "map"
    for f in ("importance.csv", "agreement.csv", "importance.md", "llama-importance.png"):
        assert (run_dir / f).is_file(), f
    assert "Method agreement over 8 units" in out and "zero vs mean" in out
    code, out, err = run(capsys, *args)
    assert code == 0 and "schedule: 3 evaluations (3 already in" in out, err
    from ablate_lit import load

    results = load(run_dir)
    table = results.importance()
    assert len(table) == 3 * 8 and set(table["unit"]) == {f"L{l}.H{h}" for l in range(2) for h in range(4)}
    assert results.importance_figure() is not None
    code, out, err = cli(capsys, "report", run_dir, "--out", tmp_path / "report")
    assert code == 0 and "Method agreement over 8 units" in out, err
    assert (tmp_path / "report" / "llama-importance.png").is_file()


def test_bad_unit_settings_are_one_line(capsys, tiny_models, corpus, tmp_path):
    for extra, message in (
        (["--ablation.unit", "neuron"], "use --ablation.unit head or layer"),
        (["--ablation.unit", "head", "--ablation.order", "std"], "leave --ablation.order random"),
        (["--ablation.schedule", "nested", "--ablation.unit", "layer"], "use it with --ablation.schedule each"),
        (["--ablation.schedule", "everything"], "unknown ablation.schedule 'everything'"),
    ):
        code, _, err = run(capsys, *unit_args(tiny_models["llama"], corpus, tmp_path, *extra))
        assert code == 2 and message in one_line_error(err), err


def _spearman_by_hand(a, b) -> float:
    def rank(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2 + 1
            i = j + 1
        return r

    ra, rb = rank(a), rank(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))


def test_agreement_statistics_equal_independent_ones():
    rng = np.random.default_rng(0)
    a = rng.normal(size=40).round(1)  # ties included
    b = a + rng.normal(size=40)
    assert abs(float(spearman(a, b)) - _spearman_by_hand(list(a), list(b))) < 1e-12
    scipy = pytest.importorskip("scipy.stats")
    assert abs(float(spearman(a, b)) - scipy.spearmanr(a, b).statistic) < 1e-12
    assert np.array_equal(ranks(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1.0, 3.5, 2.0])
    top_a, top_b = set(np.argsort(-a, kind="stable")[:5]), set(np.argsort(-b, kind="stable")[:5])  # ties: lower index
    assert float(top_overlap(a, b, 5)) == len(top_a & top_b) / 5

    # two methods on 6 units over 4 windows: a unit's ΔCE is its window totals minus the baseline's
    base = {"nll": [4.0, 4.0, 4.0, 4.0], "correct": [1, 1, 1, 1], "total": [2, 2, 2, 2]}

    def row(method, unit, extra):
        return {"method": method, "target": f"L0.H{unit}", "top1": 0.5, "ce": 2.0, "kl": "-", "n_tokens": 8,
                "evaluated_as": method, "_windows": {**base, "nll": [v + extra for v in base["nll"]]}}  # fmt: skip

    rows = [{"method": "zero", "evaluated_as": "baseline", "target": "-", "_windows": base}]
    rows += [row("zero", u, 0.1 * u) for u in range(6)] + [row("mean", u, 0.1 * (5 - u)) for u in range(6)]
    records, boot = importance(rows, n_boot=200)
    assert [r["d_ce"] for r in records if r["method"] == "zero"] == pytest.approx([0.05 * u for u in range(6)])
    agree = {r["statistic"]: r for r in agreement(records, boot)}
    assert agree["spearman"]["value"] == pytest.approx(-1.0) and agree["top-5"]["value"] == pytest.approx(4 / 5)
    assert agree["spearman"]["low"] == pytest.approx(-1.0)  # every window shifts a unit alike: no spread


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_give_the_map_of_one(tiny_models, corpus, tmp_path):
    """DDP and FSDP2 on 2 CPU processes (unequal batch counts) against one process, CE and KL per unit."""
    maps = {}
    for strategy in ("single", "ddp", "fsdp2"):
        extra = ["--ablation.methods", "[zero,mean]", "--ablation.unit", "head", "--data.max_tokens", 105]
        if strategy != "single":
            extra += ["--trainer.devices", 2, "--trainer.strategy", strategy]
        args = unit_args(tiny_models["llama"], corpus, tmp_path / strategy, *extra)
        proc = launch("test", *args)
        assert proc.returncode == 0, proc.stderr[-3000:]
        maps[strategy] = {(r["method"], r["target"]): r for r in read_rows(tmp_path / strategy / "map" / "results.csv")}
    for strategy in ("ddp", "fsdp2"):
        assert maps[strategy].keys() == maps["single"].keys()
        for key, r in maps["single"].items():
            other = maps[strategy][key]
            assert other["n_tokens"] == r["n_tokens"] and abs(float(other["ce"]) - float(r["ce"])) < 1e-5, key
            assert abs(float(other["kl"]) - float(r["kl"])) < 1e-5, key
