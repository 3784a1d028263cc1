"""The single-unit map's cost: every head ablated alone by every method, with KL, timed against the
plain way of getting the same numbers, in the same process on the same batches.

  map         maps.step.UnitMapStep: per batch one unablated forward (block outputs and logits
              kept), then per (head, method) a forward in which the blocks before the head's layer
              answer from the kept outputs; KL against the kept logits
  plain       per (head, method) a full ablated forward and a separate unablated forward for KL (what
              an evaluation of each unit from scratch costs)
  forward     one unablated forward over the batches (the unit of every ratio)

Reported: one layer group (the first, middle and last layer: the saving grows with depth) and the
whole map (all layers, measured), against the plain way (per group measured at the middle layer's
cost: it does not depend on the layer), as time ratios map / plain; and that both give the same
CE and KL. Random-init weights of the model's shape (nothing downloaded).

    python benchmarks/bench_importance.py                         # SmolLM2-135M shape, CPU
    python benchmarks/bench_importance.py --length 256 --batch 4 --windows 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_run import SHAPES  # noqa: E402  (the same model shapes)

from ablate_lit import CausalLMAblation  # noqa: E402
from ablate_lit.ablation.values import OneLayer  # noqa: E402
from ablate_lit.maps.step import UnitMapStep  # noqa: E402
from ablate_lit.stats.token_metrics import TokenScores  # noqa: E402
from ablate_lit.testing.tiny import train_tokenizer  # noqa: E402

METHODS = ("zero", "mean", "peak", "resample")


def build(shape: str, tmp: Path) -> CausalLMAblation:
    torch.manual_seed(0)
    config = AutoConfig.for_model(**SHAPES[shape])
    model = AutoModelForCausalLM.from_config(config).eval()
    tokenizer = train_tokenizer(tmp / "tokenizer")
    return CausalLMAblation.from_model(model, tokenizer, name=shape)


def entries(mod, layer: int, values: dict) -> list[tuple[torch.Tensor, dict]]:
    """(mask, replacement) of every (method, head) of ``layer``, as the map gives them."""
    hd, width, n_layers = mod.pre_outs[0].head_dim, mod.hooks.width, mod.hooks.n_layers
    out = []
    for method in METHODS:
        repl = values[method]
        repl = {"resample": OneLayer(repl["resample"], layer, "cpu")} if "resample" in repl else repl
        for head in range(width // hd):
            mask = torch.zeros(n_layers, width, dtype=torch.bool)
            mask[layer, head * hd : (head + 1) * hd] = True
            out.append((mask, repl))
    return out


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def run_map(mod, layer, values, batches, n_windows) -> tuple[float, list]:
    mod.evaluate_with(TokenScores(n_windows), kl=True)
    step = UnitMapStep(mod, layer, entries(mod, layer, values), kl=True)

    def go():
        with torch.no_grad():
            for batch in batches:
                mod.hooks.sample_index = batch["index"]
                step.step(batch)

    return timed(go), [s.compute() for s in step.scores]


def run_plain(mod, layer, values, batches, n_windows) -> tuple[float, list]:
    work = entries(mod, layer, values)
    scores = [TokenScores(n_windows) for _ in work]

    def go():
        with torch.no_grad():
            for (mask, repl), s in zip(work, scores, strict=True):
                full = {"resample": values["resample"]["resample"]} if "resample" in repl else repl
                for batch in batches:
                    mod.hooks.sample_index = batch["index"]
                    reference, labels = mod.logits_and_labels(batch)  # the separate unablated forward for KL
                    with mod.hooks.ablating(mask, device="cpu", **full):
                        logits, _ = mod.logits_and_labels(batch)
                    s.update(logits, labels, batch["index"], reference)

    return timed(go), [s.compute() for s in scores]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="smollm2-135m", choices=sorted(SHAPES))
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        mod = build(args.shape, Path(tmp))
    n_layers, width = mod.hooks.n_layers, mod.hooks.width
    vocab = mod.model.config.vocab_size
    windows = torch.randint(0, vocab, (args.windows, args.length), generator=torch.Generator().manual_seed(0))
    batches = [{"input_ids": windows[i : i + args.batch], "index": torch.arange(i, min(i + args.batch, args.windows))}
               for i in range(0, args.windows, args.batch)]  # fmt: skip
    g = torch.Generator().manual_seed(1)
    values = {
        "zero": {"values": torch.zeros(n_layers, width)},
        "mean": {"values": torch.randn(n_layers, width, generator=g) * 0.1},
        "peak": {"values": torch.randn(n_layers, width, generator=g) * 0.1},
        "resample": {"resample": torch.randn(n_layers, 4, args.length, width, generator=g) * 0.1},
    }
    forward = statistics.median(timed(lambda: _forward(mod, batches)) for _ in range(3))
    out = {"shape": args.shape, "tokens_per_batch": args.batch * args.length, "batches": len(batches),
           "heads": width // mod.pre_outs[0].head_dim, "layers": n_layers, "methods": len(METHODS),
           "forward_s": forward, "groups": {}}  # fmt: skip
    middle = n_layers // 2
    plain_s, plain_scores = run_plain(mod, middle, values, batches, args.windows)
    out["plain_group_s"] = plain_s
    whole = 0.0
    for layer in range(n_layers):
        t, scores = run_map(mod, layer, values, batches, args.windows)
        whole += t
        if layer in (0, middle, n_layers - 1):
            out["groups"][layer] = {"map_s": t, "ratio_vs_plain": t / plain_s, "forwards": t / forward}
        if layer == middle:
            worst = max(abs(float(a["ce"]) - float(b["ce"])) for a, b in zip(scores, plain_scores, strict=True))
            worst_kl = max(abs(float(a["kl"]) - float(b["kl"])) for a, b in zip(scores, plain_scores, strict=True))
            out["max_abs_difference_ce"], out["max_abs_difference_kl"] = worst, worst_kl
    out["map_s"] = whole
    out["plain_map_s"] = plain_s * n_layers
    out["ratio_map_vs_plain"] = whole / (plain_s * n_layers)
    print(f"{args.shape}: {out['heads']} heads x {n_layers} layers x {len(METHODS)} methods, KL on; "
          f"{len(batches)} batches of {args.batch}x{args.length} tokens; one forward {forward:.3f} s\n")  # fmt: skip
    print("| what | map | plain (full forward + unablated forward for KL) | ratio |\n|---|---|---|---|")
    for layer, g in out["groups"].items():
        print(f"| layer {layer} group | {g['map_s']:.1f} s ({g['forwards']:.0f} forwards) | {plain_s:.1f} s | "
              f"{g['ratio_vs_plain']:.2f}x |")  # fmt: skip
    print(f"| whole map | {whole:.1f} s | {plain_s * n_layers:.1f} s (layer {middle}'s x {n_layers}) | "
          f"{out['ratio_map_vs_plain']:.2f}x |")  # fmt: skip
    print(f"\nlargest |CE map - CE plain| {out['max_abs_difference_ce']:.2e}, KL {out['max_abs_difference_kl']:.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


def _forward(mod, batches) -> None:
    with torch.no_grad():
        for batch in batches:
            mod.logits_and_labels(batch)


if __name__ == "__main__":
    main()
