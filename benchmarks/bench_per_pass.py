"""Several ablations per forward pass: the single-unit map and a seven-method point, at K = 1 and at
larger K (``--ablation.ablations_per_pass``), against a plain forward over the same tokens, in one
process on the same batches.

  forward     one unablated forward over the batches (the unit of every ratio)
  map         one layer's single-unit map (every head x zero, mean, peak, resample, with KL):
              ``maps.step.UnitMapStep``, K (head, method) ablations per forward pass
  schedule    one point of the nested schedule with seven methods (zero, mean, median, peak,
              peak_refined, resample:random_tokens, resample:data; KL on): ``maps.step.AblationsStep``,
              K methods per forward pass

Reported per K: seconds, ablations per second (an ablation: one (unit, method) or one method scored
over all the batches), the time in plain forwards, and the time to a full head map (all layers,
estimated from the first, middle and last layer: the kept-prefix shortcut makes deeper layers
cheaper); and that every K gives the CE and KL of K = 1. "auto" is the K a run would choose on this
device (1 on a CPU). Random-init weights of the model's shape, nothing downloaded.

    python benchmarks/bench_per_pass.py                                  # SmolLM2-135M shape, CPU
    python benchmarks/bench_per_pass.py --device cuda --dtype bfloat16 --per-pass 1,4,16,auto
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
from ablate_lit.data.windows import WindowDataset  # noqa: E402
from ablate_lit.maps.step import AblationsStep, UnitMapStep  # noqa: E402
from ablate_lit.runner.batch_size import find_per_pass  # noqa: E402
from ablate_lit.stats.token_metrics import TokenScores  # noqa: E402
from ablate_lit.testing.tiny import train_tokenizer  # noqa: E402

MAP_METHODS = ("zero", "mean", "peak", "resample")
SCHEDULE_METHODS = ("zero", "mean", "median", "peak", "peak_refined", "resample:random_tokens", "resample:data")


def build(shape: str, tmp: Path, dtype: torch.dtype, device: str, folder: str | None = None) -> CausalLMAblation:
    if folder:  # a real model's folder (the offline demo's SmolLM2-135M, converted from its GGUF file)
        return CausalLMAblation(folder, dtype=str(dtype).removeprefix("torch.")).to(device)
    torch.manual_seed(0)
    config = AutoConfig.for_model(**SHAPES[shape])
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    mod = CausalLMAblation.from_model(model, train_tokenizer(tmp / "tokenizer"), name=shape)
    return mod.to(device)


def synchronised(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started


def evaluate(mod, step, batches) -> tuple[float, list]:
    """Seconds to score ``step`` over ``batches``, and its CE and KL per entry."""

    def go():
        with torch.inference_mode():
            for batch in batches:
                mod.hooks.sample_index = batch["index"]
                step.step(batch)

    seconds = synchronised(go)
    return seconds, [(float(s.compute()["ce"]), float(s.compute()["kl"])) for s in step.scores]


def map_entries(mod, layer: int, values: dict, device) -> list:
    hd, width, n_layers = mod.pre_outs[0].head_dim, mod.hooks.width, mod.hooks.n_layers
    entries = []
    for method in MAP_METHODS:
        repl = values[method]
        repl = {"resample": OneLayer(repl["resample"], layer, device)} if "resample" in repl else repl
        for head in range(width // hd):
            mask = torch.zeros(n_layers, width, dtype=torch.bool)
            mask[layer, head * hd : (head + 1) * hd] = True
            entries.append((mask, repl))
    return entries


def schedule_entries(mod, values: dict) -> list:
    mask = torch.rand(mod.hooks.n_layers, mod.hooks.width, generator=torch.Generator().manual_seed(2)) < 0.5
    return [(mask, values["resample" if m.startswith("resample") else "mean"]) for m in SCHEDULE_METHODS]


def arguments(description: str, *extra: tuple) -> argparse.ArgumentParser:
    """The options every per-pass-style benchmark takes (shape or model, device, dtype, windows, threads,
    json); ``extra``: (flags, keyword arguments) of its own."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="smollm2-135m", choices=sorted(SHAPES))
    ap.add_argument("--model", default=None, help="a model folder to load instead of a random-init shape")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--batch", type=int, default=3)
    ap.add_argument("--windows", type=int, default=3)
    for flags, kwargs in extra:
        ap.add_argument(flags, **kwargs)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    return ap


def setup(args) -> tuple:
    """(the model, the device, its windows [windows, length], their batches) for ``args``."""
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        mod = build(args.shape, Path(tmp), dtype, args.device, args.model)
    windows = torch.randint(0, mod.model.config.vocab_size, (args.windows, args.length), generator=torch.Generator())
    batches = [
        {
            "input_ids": windows[i : i + args.batch].to(device),
            "index": torch.arange(i, min(i + args.batch, args.windows), device=device),
        }
        for i in range(0, args.windows, args.batch)
    ]
    return mod, device, windows, batches


def main() -> None:
    per_pass = ("--per-pass", dict(default="1,4,auto", help="the K to measure, e.g. 1,4,16,auto"))
    args = arguments(__doc__, per_pass).parse_args()
    mod, device, windows, batches = setup(args)
    n_layers, width = mod.hooks.n_layers, mod.hooks.width
    auto = find_per_pass(mod, WindowDataset(windows), args.batch, device.type, "auto")
    ks = sorted({auto if k == "auto" else int(k) for k in args.per_pass.split(",")})
    g = torch.Generator().manual_seed(1)
    values = {
        "zero": {"values": torch.zeros(n_layers, width, device=device)},
        "mean": {"values": (torch.randn(n_layers, width, generator=g) * 0.1).to(device)},
        "peak": {"values": (torch.randn(n_layers, width, generator=g) * 0.1).to(device)},
        "resample": {"resample": (torch.randn(n_layers, 4, args.length, width, generator=g) * 0.1).to(device)},
    }
    mod.evaluate_with(TokenScores(args.windows).to(device), kl=True)

    def forward():
        with torch.inference_mode():
            for batch in batches:
                mod.logits_and_labels(batch)

    forward()  # (warm-up)
    plain = statistics.median(synchronised(forward) for _ in range(3))
    out = {
        "shape": Path(args.model).name if args.model else args.shape,
        "device": str(torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"),
        "dtype": args.dtype,
        "tokens": args.windows * args.length,
        "batch": args.batch,
        "forward_s": plain,
        "auto": auto,
        "map": {},
        "schedule": {},
    }
    layers = sorted({0, n_layers // 2, n_layers - 1})
    reference: dict = {}
    for k in ks:
        seconds, scores = [], {}
        for layer in layers:
            s, sc = evaluate(mod, UnitMapStep(mod, layer, map_entries(mod, layer, values, device), True, k), batches)
            seconds.append(s)
            scores[layer] = sc
        n = len(map_entries(mod, layers[0], values, device))
        per_layer = statistics.fmean(seconds)
        reference.setdefault("map", scores)
        out["map"][k] = {
            "layer_s": per_layer,
            "ablations_per_s": n / per_layer,
            "forwards": per_layer / plain,
            "full_map_s": per_layer * n_layers,
            "max_ce_difference": _difference(scores, reference["map"]),
        }
        s, sc = evaluate(mod, AblationsStep(mod, schedule_entries(mod, values), True, k), batches)
        reference.setdefault("schedule", {0: sc})
        out["schedule"][k] = {
            "point_s": s,
            "ablations_per_s": len(SCHEDULE_METHODS) / s,
            "forwards": s / plain,
            "max_ce_difference": _difference({0: sc}, reference["schedule"]),
        }
    report(out, n_layers, width // mod.pre_outs[0].head_dim)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


def _difference(scores: dict, reference: dict) -> float:
    return max(abs(a[0] - b[0]) for layer in scores for a, b in zip(scores[layer], reference[layer], strict=True))


def report(out: dict, n_layers: int, heads: int) -> None:
    print(
        f"{out['shape']} on {out['device']} ({out['dtype']}): {out['tokens']} tokens in batches of "
        f"{out['batch']}; one plain forward over them {out['forward_s']:.3f} s; auto K = {out['auto']}\n"
    )
    print(
        f"| what | K | seconds | ablations per second | x plain forward | full head map ({heads} heads x "
        f"{n_layers} layers x {len(MAP_METHODS)} methods) | largest CE change |"
    )
    print("|---|---|---|---|---|---|---|")
    for k, m in out["map"].items():
        print(
            f"| one layer's map | {k} | {m['layer_s']:.2f} | {m['ablations_per_s']:.2f} | {m['forwards']:.1f} | "
            f"{m['full_map_s'] / 60:.1f} min | {m['max_ce_difference']:.1e} |"
        )
    for k, s in out["schedule"].items():
        print(
            f"| a 7-method point | {k} | {s['point_s']:.2f} | {s['ablations_per_s']:.2f} | {s['forwards']:.1f} | | "
            f"{s['max_ce_difference']:.1e} |"
        )


if __name__ == "__main__":
    main()
