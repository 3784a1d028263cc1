"""What the methods beyond the paper cost, through the real CLI, against a plain forward pass measured
in the same process over the same windows.

Reported (one seed, 50% ablated):
  plain forward        Hugging Face forward + CE + Top1 over the evaluation windows (inference mode)
  a point              the ``trainer.test`` call of ``mean`` at 50% (``time_s`` of its row)
  a point with KL      the same with ``--ablation.kl`` (each batch runs twice: ablated and unablated)
  optimal: fit         fitting the point's constants with ``trainer.fit`` (``fit_s`` in its cache file; a step
                       takes ``--batch`` windows, as an evaluation batch does),
                       and per epoch (one forward+backward over the training part of the calibration
                       windows, one forward over the held-out part)

    python benchmarks/bench_methods.py                        # SmolLM2-135M shape, CPU
    python benchmarks/bench_methods.py --shape opt-125m --device cuda --length 512 --batch 8 --tokens 16384
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_run import SHAPES, build_assets, plain_forward  # noqa: E402

from ablate_lit import CausalLMAblation, TextData  # noqa: E402
from ablate_lit.entry.cli import main as cli  # noqa: E402
from ablate_lit.store.folder import read_rows  # noqa: E402


def run(model: Path, text: Path, root: Path, name: str, args, *extra: str) -> list[dict]:
    argv = [
        "test",
        "--model",
        "ablate_lit.CausalLMAblation",
        "--model.name_or_path",
        str(model),
        "--model.dtype",
        args.dtype,
        "--data",
        "ablate_lit.TextData",
        "--data.path",
        str(text),
        "--data.max_tokens",
        str(args.tokens),
        "--data.calib_tokens",
        str(args.calib_tokens),
        "--data.context_length",
        str(args.length),
        "--data.batch_size",
        str(args.batch),
        "--ablation.fractions",
        "[0.5]",
        "--ablation.seeds",
        "[0]",
        "--ablation.log_histograms",
        "false",
        "--ablation.cache_dir",
        str(root / "cache"),
        "--root",
        str(root / "runs"),
        "--name",
        name,
        "--trainer.accelerator",
        "gpu" if args.device == "cuda" else "cpu",
        "--trainer.devices",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        cli(argv)
    return read_rows(root / "runs" / name)[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="smollm2-135m", choices=sorted(SHAPES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=2048, help="evaluation tokens")
    parser.add_argument(
        "--calib-tokens", type=int, default=4096, help="calibration tokens (3/4 trained on, 1/4 held out)"
    )
    parser.add_argument("--epochs", type=int, default=3, help="optimal: epochs, all run (no early stop)")
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir, text = build_assets(
            root, args.shape, getattr(torch, args.dtype), 2 * (args.tokens + args.calib_tokens)
        )
        module = CausalLMAblation(str(model_dir), dtype=args.dtype)
        data = TextData(
            str(text),
            max_tokens=args.tokens,
            calib_tokens=args.calib_tokens,
            context_length=args.length,
            batch_size=args.batch,
        )
        data.connect(module.tokenizer)
        data.setup("test")
        model = module.model.to(device)
        plain_forward(model, data.eval_windows[: args.batch], args.batch, device)  # warm-up
        plain = min(plain_forward(model, data.eval_windows, args.batch, device) for _ in range(3))
        del module, model

        run(model_dir, text, root, "warm", args, "--ablation.methods", "[mean]")  # calibration, caches, warm-up
        point = min(
            float(run(model_dir, text, root, f"mean{i}", args, "--ablation.methods", "[mean]")[0]["time_s"])
            for i in range(3)
        )
        kl = min(
            float(
                run(model_dir, text, root, f"kl{i}", args, "--ablation.methods", "[mean]", "--ablation.kl", "true")[0][
                    "time_s"
                ]
            )
            for i in range(3)
        )
        rows = run(
            model_dir,
            text,
            root,
            "optimal",
            args,
            "--ablation.methods",
            "[optimal]",
            "--ablation.optimal_batch_size",
            str(args.batch),
            "--ablation.optimal_epochs",
            str(args.epochs),
            "--ablation.optimal_patience",
            str(args.epochs + 1),
        )
        fit = torch.load(next((root / "cache").glob("optimal-*.pt")), weights_only=False)
        n_calib = len(data.calib_windows)
    print(
        f"{args.shape}, {device}, {args.dtype}: {data.eval_windows.numel()} evaluation tokens, {n_calib} calibration "
        f"windows of {args.length} ({len(fit['train_rows'])} trained on, {len(fit['held_out_rows'])} held out), batch "
        f"{args.batch}\n"
    )
    print("| | seconds | against the plain forward over the evaluation windows |\n|---|---|---|")
    print(f"| plain forward + CE + Top1 | {plain:.2f} | 1.00x |")
    print(f"| a point (`mean`, 50%) | {point:.2f} | {point / plain:.2f}x |")
    print(f"| a point with `--ablation.kl` | {kl:.2f} | {kl / plain:.2f}x |")
    print(
        f"| `optimal`: fitting one point ({fit['epochs']} epochs, the initial held-out pass included) | "
        f"{fit['fit_s']:.2f} | {fit['fit_s'] / plain:.2f}x |"
    )
    print(
        f"| `optimal`: per epoch | {fit['fit_s'] / fit['epochs']:.2f} | {fit['fit_s'] / fit['epochs'] / plain:.2f}x |"
    )
    print(
        f"\noptimal's evaluation at 50%: CE {float(rows[0]['ce']):.4f}; held-out CE "
        f"{fit['init_loss']:.4f} at the mean -> "
        f"{fit['best_loss']:.4f}"
    )


if __name__ == "__main__":
    main()
