"""What a point on task data costs, through the real CLI, against a plain forward pass over the same
sequences measured in the same process.

Reported (the shipped ioi task, one seed):
  plain forward          Hugging Face forward + log-softmax at the answers over the evaluated sequences
  baseline               the unablated point (its row's ``time_s``): scores, and keeps the unablated
                         log-probabilities at the answer positions for KL
  a point (kept KL)      ``mean`` at 50%: one pass per batch, KL against the kept log-probabilities
  a point (KL recomputed) the same with keeping switched off (each batch runs ablated and unablated)

    python benchmarks/bench_task.py                            # SmolLM2-135M shape, CPU
    python benchmarks/bench_task.py --shape opt-125m --device cuda --rows 1024 --batch 64
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_run import SHAPES, build_assets, sync  # noqa: E402

import ablate_lit.stats.task_metrics as task_metrics  # noqa: E402
from ablate_lit import TaskData  # noqa: E402
from ablate_lit.entry.cli import main as cli  # noqa: E402
from ablate_lit.store.folder import read_rows  # noqa: E402


def run(model: Path, root: Path, name: str, args) -> dict:
    argv = [
        "test", "--model", "ablate_lit.CausalLMAblation", "--model.name_or_path", str(model),
        "--model.dtype", args.dtype, "--data", "ablate_lit.TaskData", "--data.path", "ioi",
        "--data.task_size", str(args.rows + args.calib), "--data.calib_rows", str(args.calib),
        "--data.batch_size", str(args.batch), "--ablation.methods", "[mean]", "--ablation.fractions", "[0,0.5]",
        "--ablation.seeds", "[0]", "--ablation.log_histograms", "false", "--ablation.cache_dir", str(root / "cache"),
        "--root", str(root / "runs"), "--name", name, "--trainer.accelerator",
        "gpu" if args.device == "cuda" else "cpu", "--trainer.devices", "1", "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        cli(argv)
    return {str(r["pct"]): float(r["time_s"]) for r in read_rows(root / "runs" / name)[0]}


@torch.inference_mode()
def plain_forward(model_dir: Path, args) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device(args.device)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, args.dtype)).to(device).eval()
    data = TaskData("ioi", task_size=args.rows + args.calib, calib_rows=args.calib)
    data.connect(AutoTokenizer.from_pretrained(model_dir))
    data.setup()
    seqs = data.eval_dataset().tensors
    sync(device)
    start = time.perf_counter()
    for i in range(0, len(seqs["input_ids"]), args.batch):
        ids, labels = seqs["input_ids"][i : i + args.batch].to(device), seqs["labels"][i : i + args.batch].to(device)
        logits = model(input_ids=ids, use_cache=False).logits
        keep = labels != -100
        torch.log_softmax(logits[keep].float(), -1).gather(1, labels[keep][:, None]).sum()
    sync(device)
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="smollm2-135m", choices=sorted(SHAPES))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--rows", type=int, default=256, help="evaluated task rows")
    ap.add_argument("--calib", type=int, default=64, help="calibration rows")
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model, _ = build_assets(root, args.shape, getattr(torch, args.dtype), 1000)
        plain_forward(model, args)  # warm-up
        plain = plain_forward(model, args)
        kept = run(model, root, "kept", args)
        task_metrics.KEEP_LIMIT = 0  # every point computes its reference again
        recomputed = run(model, root, "recomputed", args)
    print(f"{args.shape}, {args.device}, {args.dtype}, {args.rows} ioi rows, batch {args.batch}\n")
    print("| | seconds | against the plain forward |\n|---|---|---|")
    for label, seconds in (
        ("plain forward + answer log-probabilities", plain),
        ("baseline point (keeps the unablated answer log-probabilities)", kept["0"]),
        ("a point (`mean`, 50%), KL against the kept log-probabilities", kept["50"]),
        ("a point (`mean`, 50%), KL recomputed (each batch runs twice)", recomputed["50"]),
    ):
        print(f"| {label} | {seconds:.2f} | {seconds / plain:.2f}x |")


if __name__ == "__main__":
    main()
