"""How often evaluating one point hands control between ablate_lit's packages (a design measure).

Runs the CLI in this process on a tiny Llama (``ablate_lit.testing.tiny``) with methods zero and
mean, and profiles the evaluation of the first point after the baseline (``Experiment._evaluate``)
and of the one after it. A hand-off is a distinct (caller, callee) pair of functions in different
packages of ablate_lit (``runner``, ``families``, ...; the caller is the nearest ablate_lit frame
below the callee, so a Lightning loop in between counts as the package that started it). Printed:
the hand-offs, those between the stages (``common``, the ground every stage stands on, left out),
those of them where ablate_lit calls itself directly (not a Lightning loop calling a hook), those
that come back into ``runner``, and each direct pair.

    python benchmarks/handoffs.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import ablate_lit
from ablate_lit.entry.cli import main as cli_main
from ablate_lit.runner import experiment
from ablate_lit.testing.tiny import build_all

PACKAGE = Path(ablate_lit.__file__).resolve().parent


def package_of(filename: str) -> str | None:
    """``runner`` for .../ablate_lit/runner/launch.py; None outside ablate_lit."""
    path = Path(filename).resolve()
    if PACKAGE not in path.parents:
        return None
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")


def where(frame) -> str:
    return f"{package_of(frame.f_code.co_filename)}:{frame.f_code.co_qualname}"


class HandOffs:
    def __init__(self):
        self.pairs: set[tuple[str, str]] = set()
        self.direct: set[tuple[str, str]] = set()
        """The pairs where ablate_lit calls ablate_lit itself (no Lightning, torch or transformers between)."""

    def __call__(self, frame, event, arg):
        if event != "call" or (callee := package_of(frame.f_code.co_filename)) is None:
            return
        caller = frame.f_back
        while caller is not None and package_of(caller.f_code.co_filename) is None:
            caller = caller.f_back
        if caller is not None and package_of(caller.f_code.co_filename) != callee:
            self.pairs.add((where(caller), where(frame)))
            if caller is frame.f_back:
                self.direct.add((where(caller), where(frame)))


def measure(root: Path) -> list[HandOffs]:
    assets = build_all(root / "assets")
    traced: list[HandOffs] = []
    original = experiment.Experiment._evaluate

    def evaluate(self, point, *args, **kwargs):
        if point.method == "baseline" or len(traced) >= 2:
            return original(self, point, *args, **kwargs)
        traced.append(HandOffs())
        sys.setprofile(traced[-1])
        try:
            return original(self, point, *args, **kwargs)
        finally:
            sys.setprofile(None)

    experiment.Experiment._evaluate = evaluate
    args = ["test", "--model", "ablate_lit.CausalLMAblation", "--model.name_or_path", assets / "models" / "llama"]
    args += ["--data", "ablate_lit.TextData", "--data.path", assets / "corpus", "--data.max_tokens", 120]
    args += ["--data.calib_tokens", 256, "--data.context_length", 16, "--data.batch_size", 4]
    args += ["--ablation.methods", "[zero,mean]", "--ablation.seeds", "[0]", "--ablation.fractions", "[0,0.25,0.5]"]
    args += ["--root", root / "runs", "--name", "run", "--trainer.accelerator", "cpu"]
    args += ["--trainer.enable_progress_bar", "false", "--ablation.log_histograms", "false"]
    try:
        cli_main(list(map(str, args)))
    finally:
        experiment.Experiment._evaluate = original
    return traced


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, help="keep the tiny assets and the run here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        traced = measure(args.keep or Path(tmp))
    for name, t in zip(("first point after the baseline", "the next point"), traced):
        back = sorted(p for p in t.pairs if p[1].startswith("runner:") and not p[0].startswith("runner:"))
        stages = sorted(p for p in t.pairs if not any(side.startswith("common:") for side in p))
        direct = sorted(p for p in t.direct if not any(side.startswith("common:") for side in p))
        print(
            f"{name}: {len(t.pairs)} hand-offs between packages, {len(stages)} between stages (not common), "
            f"{len(direct)} of those direct (no library between), {len(back)} back into runner/"
        )
        for caller, callee in direct:
            print(f"    {caller} -> {callee}")


if __name__ == "__main__":
    main()
