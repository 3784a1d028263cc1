"""Throughput of ablated evaluation and of the calibration pass, as ratios to a plain forward.

All timings in one process, on the same batches. Each variant is timed right next to a plain
forward (which goes first alternates), the ratio is taken per pair, and the median over repeats is
reported with the range:
  plain       Hugging Face forward + CE + Top1 computed directly (no hooks, no torchmetrics)
  <method>    the suite's evaluation step at 50% ablated (hooks + TokenScores)
  calibration the suite's statistics sweep (moments + histograms of every neuron)
Also: the histogram update rate, and the histogram memory for a Mistral-7B-shaped model.

    python benchmarks/bench_ablation.py                   # random-init SmolLM2-135M shape, CPU
    python benchmarks/bench_ablation.py --shape roberta-base --length 256
    python benchmarks/bench_ablation.py --shape vit-b16 --batch 16
    python benchmarks/bench_ablation.py --shape opt-1.3b --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

from ablate_lit.ablation.fold import folded
from ablate_lit.ablation.schedule import ablation_mask, neuron_order
from ablate_lit.families.loading.causal_lm import CAUSAL_LM_ARCHITECTURES
from ablate_lit.families.loading.masked_lm import MASKED_LM_ARCHITECTURES
from ablate_lit.families.loading.vision import TIMM_ARCHITECTURE
from ablate_lit.families.locate.layout import locate
from ablate_lit.sites.hooks import PreOutHooks
from ablate_lit.stats import NeuronHistogram, NeuronMoments, TokenScores

SHAPES = {
    "smollm2-135m": dict(
        model_type="llama",
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        vocab_size=49152,
        tie_word_embeddings=True,
    ),
    "opt-1.3b": dict(
        model_type="opt",
        hidden_size=2048,
        ffn_dim=8192,
        num_hidden_layers=24,
        num_attention_heads=32,
        vocab_size=50272,
        word_embed_proj_dim=2048,
    ),
    "mistral-7b": dict(
        model_type="mistral",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=32000,
    ),
    "roberta-base": dict(
        model_type="roberta",
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        vocab_size=50265,
        max_position_embeddings=514,
    ),
    "vit-b16": dict(model_type="timm", name="vit_base_patch16_224", num_classes=1000),
}


def build(shape: str):
    """(model, pre-out hooks, scored(batch) -> (logits, labels), make_batch(i) -> batch)."""
    spec = dict(SHAPES[shape])
    model_type = spec.pop("model_type")
    if model_type == "timm":
        import timm

        model = timm.create_model(spec["name"], pretrained=False, num_classes=spec["num_classes"])
        pre_outs = locate(model, None, TIMM_ARCHITECTURE)[0]

        def scored(m, batch):
            return m(batch["x"]), batch["y"]

        def make(b, length, gen, device, dtype):
            return {
                "x": torch.randn(b, 3, 224, 224, generator=gen).to(device, dtype),
                "y": torch.randint(0, spec["num_classes"], (b,), generator=gen).to(device),
            }

        return model, pre_outs, scored, make, spec["num_classes"]
    config = AutoConfig.for_model(model_type, **spec)
    if model_type in MASKED_LM_ARCHITECTURES:
        model, arch = AutoModelForMaskedLM.from_config(config), MASKED_LM_ARCHITECTURES[model_type]

        def scored(m, batch):
            logits = m(input_ids=batch["x"]).logits
            return logits.reshape(-1, logits.shape[-1]), batch["y"].reshape(-1)

        def make(b, length, gen, device, dtype):
            ids = torch.randint(5, config.vocab_size, (b, length), generator=gen)
            labels = torch.full_like(ids, -100)
            pick = torch.rand(b, length, generator=gen) < 0.15
            labels[pick] = ids[pick]
            return {"x": ids.to(device), "y": labels.to(device)}
    else:
        model, arch = AutoModelForCausalLM.from_config(config), CAUSAL_LM_ARCHITECTURES[model_type]

        def scored(m, batch):
            logits = m(input_ids=batch["x"]).logits[:, :-1]
            return logits.reshape(-1, logits.shape[-1]), batch["x"][:, 1:].reshape(-1)

        def make(b, length, gen, device, dtype):
            return {"x": torch.randint(0, config.vocab_size, (b, length), generator=gen).to(device)}

    return model, locate(model, config, arch)[0], scored, make, config.vocab_size


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="smollm2-135m", choices=sorted(SHAPES))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--batches", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--eps", type=float, default=0.01)
    ap.add_argument("--n-bins", type=int, default=1024)
    ap.add_argument("--json", default=None, help="also write all figures here as JSON")
    args = ap.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)

    model, pre_outs, scored, make, n_classes = build(args.shape)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    hooks = PreOutHooks(pre_outs)
    L, D = hooks.n_layers, hooks.width
    gen = torch.Generator().manual_seed(0)
    batches = [make(args.batch, args.length, gen, device, dtype) for _ in range(args.batches)]
    index = [torch.arange(i * args.batch, (i + 1) * args.batch) for i in range(args.batches)]
    with torch.inference_mode():  # number of positions each pre-out sees
        n_pos = {}
        with hooks.recording(lambda l, x: n_pos.setdefault("n", x.shape[-2])):
            scored(model, batches[0])
    mask = ablation_mask(neuron_order(0, L, D, "per_layer"), 0.5, L, D).to(device)
    values = {
        "zero": torch.zeros(L, D, device=device),
        "mean": torch.randn(L, D, device=device) * 0.1,
        "peak": torch.randn(L, D, device=device) * 0.1,
    }
    resample = torch.randn(L, 8, n_pos["n"], D, device=device, dtype=dtype) * 0.1

    @torch.inference_mode()
    def plain():
        for batch in batches:
            logits, labels = scored(model, batch)
            F.cross_entropy(logits.float(), labels, reduction="sum", ignore_index=-100).item()
            (logits.argmax(-1) == labels).sum().item()

    scores = TokenScores().to(device)

    @torch.inference_mode()
    def evaluate():
        scores.reset()
        for batch, idx in zip(batches, index):
            hooks.sample_index = idx
            scores.update(*scored(model, batch))
        scores.compute()

    def ablated(method):
        def run():
            if method == "peak_folded":  # the same replacement written into the out-projections
                with folded(pre_outs, mask, values["peak"]):
                    evaluate()
                return
            kw = {"resample": resample} if method == "resample" else {"values": values[method]}
            with hooks.ablating(mask, **kw):
                evaluate()

        return run

    moments = NeuronMoments(L, D).to(device)
    hist = NeuronHistogram(L, D, args.eps, args.n_bins).to(device)

    def record(layer, x):
        x = x.reshape(-1, D)
        moments.update(layer, x)
        hist.update(layer, x)

    @torch.inference_mode()
    def calibration():
        with hooks.recording(record):
            for batch in batches:
                scored(model, batch)
        moments.compute(), hist.compute()

    methods = ("zero", "mean", "peak", "resample", "peak_folded")
    variants = {**{m: ablated(m) for m in methods}, "calibration": calibration}
    plain()
    for fn in variants.values():  # warm-up
        fn()
    # Paired timing: each variant runs right next to a plain forward (alternating which goes first),
    # and the ratio is taken per pair, so drifts in the machine's speed cancel out.
    ratios = {k: [] for k in variants}
    plain_times = []
    names = list(variants)
    for r in range(args.repeats):
        for i, k in enumerate(names[r % len(names) :] + names[: r % len(names)]):
            if (r + i) % 2:
                t_k, t_plain = timed(variants[k], device), timed(plain, device)
            else:
                t_plain, t_k = timed(plain, device), timed(variants[k], device)
            plain_times.append(t_plain)
            ratios[k].append(t_k / t_plain if k == "calibration" else t_plain / t_k)
    tokens = args.batch * n_pos["n"] * args.batches

    # histogram update alone vs a naive per-neuron torch.histc loop, on one layer's activations
    x = torch.randn(args.batch * n_pos["n"], D, device=device, dtype=dtype) * 0.5
    h1 = NeuronHistogram(1, D, args.eps, args.n_bins).to(device)
    h1.update(0, x)
    t_vec = statistics.median(timed(lambda: h1.update(0, x), device) for _ in range(5))
    lo = float(x.min())
    naive_n = min(D, 64)
    t_naive = (
        timed(
            lambda: [
                torch.histc(x[:, j].float(), bins=args.n_bins, min=lo, max=lo + args.n_bins * args.eps)
                for j in range(naive_n)
            ],
            device,
        )
        * D
        / naive_n
    )

    mistral = SHAPES["mistral-7b"]
    mistral_neurons = mistral["num_hidden_layers"] * mistral["num_attention_heads"] * mistral["head_dim"]
    counts_bytes = mistral_neurons * (args.n_bins + 2) * torch.empty((), dtype=torch.int32).element_size()
    other_bytes = mistral_neurons * 8 * 8  # moments: 4 power sums, min, max (float64), count + origin (int64)

    out = {
        "shape": args.shape,
        "device": str(device),
        "dtype": args.dtype,
        "positions_per_pass": tokens,
        "plain_positions_per_s": tokens / statistics.median(plain_times),
        "n_neurons": L * D,
        "ratio_throughput_vs_plain_median": {m: statistics.median(ratios[m]) for m in methods},
        "ratio_throughput_vs_plain_range": {m: [min(ratios[m]), max(ratios[m])] for m in methods},
        "ratio_calibration_time_vs_plain_median": statistics.median(ratios["calibration"]),
        "ratio_calibration_time_vs_plain_range": [min(ratios["calibration"]), max(ratios["calibration"])],
        "pairs_per_ratio": args.repeats,
        "histogram_update_elements_per_s": x.numel() / t_vec,
        "histogram_speedup_vs_per_neuron_histc": t_naive / t_vec,
        "mistral7b_histogram_MiB": counts_bytes / 2**20,
        "mistral7b_moments_MiB": other_bytes / 2**20,
        "eps": args.eps,
        "n_bins": args.n_bins,
    }
    if device.type == "cuda":
        out["peak_memory_GiB"] = torch.cuda.max_memory_allocated() / 2**30
    print(
        f"{args.shape}, {device}, {args.dtype}: plain forward + CE + Top1 at "
        f"{out['plain_positions_per_s']:.0f} positions/s; "
        f"median [range] of {args.repeats} paired ratios\n"
    )
    print("| measured against the plain forward | ratio | target |\n|---|---|---|")
    for m in methods:
        lo, hi = out["ratio_throughput_vs_plain_range"][m]
        print(
            f"| throughput at 50% ablated, `{m}` | {out['ratio_throughput_vs_plain_median'][m]:.2f}× "
            f"[{lo:.2f}, {hi:.2f}] | ≥ 0.95× |"
        )
    lo, hi = out["ratio_calibration_time_vs_plain_range"]
    print(
        f"| calibration sweep time ({L * D:,} neurons) | "
        f"{out['ratio_calibration_time_vs_plain_median']:.2f}× [{lo:.2f}, {hi:.2f}] | ≤ 1.3× |"
    )
    print(
        "| histogram update vs a per-neuron `torch.histc` loop | "
        f"{out['histogram_speedup_vs_per_neuron_histc']:.1f}× faster "
        f"({out['histogram_update_elements_per_s'] / 1e6:.0f} M values/s) | |"
    )
    if "peak_memory_GiB" in out:
        print(f"| peak GPU memory | {out['peak_memory_GiB']:.2f} GiB | |")
    print(
        f"\nhistogram memory for Mistral-7B's shape: {out['mistral7b_histogram_MiB']:.0f} MiB "
        f"(+ {out['mistral7b_moments_MiB']:.0f} MiB moments)"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
