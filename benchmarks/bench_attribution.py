"""The attribution map's cost: every neuron's estimated effect under four methods from one forward and
one backward pass per batch, against a plain forward over the same tokens and against the exact head
map of the same methods, in one process on the same batches.

  forward      one unablated forward over the batches, no gradient (the unit of every ratio)
  attribution  ``maps.attribution.AttributionStep``: per batch one forward with every pre-out
               perturbed, one backward pass (activation gradients only), and the first-order terms of
               zero, mean, peak and resample for every neuron of every layer
  graddrop     the same with ``--ablation.attribution_graddrop``: one more backward pass per layer,
               each with that layer's gradient dropped (AtP*'s GradDrop magnitudes per neuron, head, layer)
  exact map    ``maps.step.UnitMapStep``: every head ablated alone by the same four methods, KL off
               (its time for the first, middle and last layer, times the layers / 3)

    python benchmarks/bench_attribution.py                            # SmolLM2-135M shape, CPU
    python benchmarks/bench_attribution.py --model ~/.cache/ablate_lit/gguf/SmolLM2-*   # the real weights
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_per_pass import arguments, map_entries, setup, synchronised  # noqa: E402

from ablate_lit.maps.attribution import AttributionStep  # noqa: E402
from ablate_lit.maps.step import UnitMapStep  # noqa: E402
from ablate_lit.sites.hooks import BlockGradients  # noqa: E402
from ablate_lit.stats.attribution import AttributionSums  # noqa: E402
from ablate_lit.stats.token_metrics import TokenScores  # noqa: E402

METHODS = ("zero", "mean", "peak", "resample")


def main() -> None:
    args = arguments(__doc__).parse_args()
    mod, device, windows, batches = setup(args)
    n_layers, width = mod.hooks.n_layers, mod.hooks.width
    g = torch.Generator().manual_seed(1)
    values = {
        "zero": {"values": torch.zeros(n_layers, width, device=device)},
        "mean": {"values": (torch.randn(n_layers, width, generator=g) * 0.1).to(device)},
        "peak": {"values": (torch.randn(n_layers, width, generator=g) * 0.1).to(device)},
        "resample": {"resample": (torch.randn(n_layers, 4, args.length, width, generator=g) * 0.1).to(device)},
    }
    mod.evaluate_with(TokenScores(args.windows).to(device), kl=False)

    def forward():
        with torch.inference_mode():
            for batch in batches:
                mod.logits_and_labels(batch)

    head_dim = mod.pre_outs[0].head_dim
    levels = {"neuron": 1, "head": head_dim, "layer": width}
    branches = mod.block_branches()

    def attribution(graddrop: bool = False):
        sums = AttributionSums(args.windows, n_layers, width, ("ce",), list(METHODS), levels if graddrop else None)
        step = AttributionStep(mod, values, sums.to(device), gates=BlockGradients(branches) if graddrop else None)
        with torch.inference_mode():  # as in Lightning's test loop: the step leaves it for its backward pass
            for batch in batches:
                step.step(batch)

    forward()  # (warm-up)
    plain = statistics.median(synchronised(forward) for _ in range(3))
    attributed = statistics.median(synchronised(attribution) for _ in range(3))
    graddrop = synchronised(lambda: attribution(True))
    layers = sorted({0, n_layers // 2, n_layers - 1})
    exact = []
    for layer in layers:
        step = UnitMapStep(mod, layer, map_entries(mod, layer, values, device), False, 1)

        def go(step=step):
            with torch.inference_mode():
                for batch in batches:
                    mod.hooks.sample_index = batch["index"]
                    step.step(batch)

        exact.append(synchronised(go))
    exact_map = statistics.fmean(exact) * n_layers
    name = Path(args.model).name if args.model else args.shape
    out = {
        "model": name,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": args.dtype,
        "tokens": args.windows * args.length,
        "neurons": n_layers * width,
        "methods": len(METHODS),
        "forward_s": plain,
        "attribution_s": attributed,
        "attribution_vs_forward": attributed / plain,
        "graddrop_s": graddrop,
        "graddrop_vs_forward": graddrop / plain,
        "exact_head_map_s": exact_map,
        "attribution_vs_exact_head_map": attributed / exact_map,
    }
    print(f"{name} on {out['device']} ({args.dtype}): {out['tokens']} tokens in batches of {args.batch}\n")
    print("| what | seconds | x plain forward |\n|---|---|---|")
    print(f"| plain forward | {plain:.2f} | 1.00 |")
    print(
        f"| attribution map: {out['neurons']} neurons x {len(METHODS)} methods | {attributed:.2f} | "
        f"{attributed / plain:.2f} |"
    )
    extra = f"{n_layers - 1} more backward passes"
    print(f"| attribution map with GradDrop ({extra}) | {graddrop:.2f} | {graddrop / plain:.2f} |")
    print(
        f"| exact head map: {width // mod.pre_outs[0].head_dim * n_layers} heads x {len(METHODS)} methods | "
        f"{exact_map:.1f} | {exact_map / plain:.0f} |"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
