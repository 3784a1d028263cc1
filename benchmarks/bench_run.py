"""The real path, timed: whole small schedules through ``python -m ablate_lit test`` (one Trainer;
calibration and resample sweeps as ``trainer.validate``, one ``trainer.test`` per point), against a
plain Hugging Face forward (+ CE + Top1) over the same windows, in the same process.

Reported, per run of the schedule (baseline, then zero, mean, peak, resample:random_tokens at 50%):
  time per point     the whole ``trainer.test`` call of a point (Lightning's setup included) against
                     the plain forward over the same windows, timed right before and after each
                     run; reported as a throughput ratio (plain time / point time), median [range]
  model moves        calls that move or cast the whole LightningModule (``Module.to/cpu/cuda``)
  host syncs         CPU: calls that force a host-device sync on a GPU (``.item()``, ``bool()``,
                     boolean-mask indexing, ``.to(device)``, ...) that a scored, ablated batch makes
                     beyond the model's own forward (a TorchFunctionMode counts them); CUDA: the
                     warnings of ``torch.cuda.set_sync_debug_mode`` during the schedule, per batch
  peak memory        of the run, of the plain forward with and without the key/value cache, and of
                     one statistics update (moments + histograms) of a 4096-token x 4096-neuron
                     batch, chunked (as ablate_lit does) and in one piece (as it did). CPU: the
                     process's peak resident memory, reset before each phase; CUDA: the allocator's peak.

    python benchmarks/bench_run.py                                   # SmolLM2-135M shape, CPU
    python benchmarks/bench_run.py --shape opt-1.3b --device cuda --dtype bfloat16 --length 1024 --batch 8 \\
        --tokens 100000
    python benchmarks/bench_run.py --shape mistral-7b --device cuda --dtype bfloat16 --length 1024 --batch 8 \\
        --tokens 100000
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import SyncCalls  # noqa: E402  (the same counter the tests use)

from ablate_lit import CausalLMAblation, TextData  # noqa: E402
from ablate_lit.entry.cli import main as cli  # noqa: E402
from ablate_lit.families.module import AblationModule  # noqa: E402
from ablate_lit.stats import NeuronHistogram, NeuronMoments  # noqa: E402
from ablate_lit.store.folder import read_rows  # noqa: E402
from ablate_lit.testing.tiny import make_text, train_tokenizer  # noqa: E402

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
    "opt-125m": dict(
        model_type="opt",
        hidden_size=768,
        ffn_dim=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        vocab_size=50272,
        word_embed_proj_dim=768,
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
}
METHODS = ["zero", "mean", "peak", "resample:random_tokens"]


# -- measuring ------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_peak(device: torch.device) -> int:
    """Start a peak-memory measurement; returns the memory in use now (bytes)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
    return _status("VmRSS")


def peak(device: torch.device) -> int:
    return torch.cuda.max_memory_allocated() if device.type == "cuda" else _status("VmHWM")


def _status(key: str) -> int:
    return int(re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


class MoveCounter:
    """Counts the calls of Module.to/cpu/cuda on the LightningModule (whole-model moves or casts)."""

    def __init__(self):
        self.calls = 0
        self._saved = {}

    def __enter__(self):
        for name in ("to", "cpu", "cuda"):
            original = self._saved[name] = getattr(torch.nn.Module, name)

            def counted(module, *args, _original=original, **kwargs):
                if isinstance(module, AblationModule):
                    self.calls += 1
                return _original(module, *args, **kwargs)

            setattr(torch.nn.Module, name, counted)
        return self

    def __exit__(self, *exc):
        for name, original in self._saved.items():
            setattr(torch.nn.Module, name, original)


# -- the pieces -----------------------------------------------------------------------------------
def build_assets(root: Path, shape: str, dtype: torch.dtype, text_tokens: int) -> tuple[Path, Path]:
    """A random-init model of ``shape`` saved with a locally trained tokenizer, and a text file."""
    spec = dict(SHAPES[shape])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec, bos_token_id=0, eos_token_id=1, pad_token_id=3)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    train_tokenizer(root / "model")
    model.save_pretrained(root / "model")
    docs, seed = [], 0
    while sum(len(d) for d in docs) < 4 * text_tokens:  # the local tokenizer: ~2-3 characters per token
        docs += make_text(200, seed=seed)
        seed += 1
    (root / "text.txt").write_text("\n\n".join(docs))
    return root / "model", root / "text.txt"


def cli_args(model: Path, text: Path, root: Path, name: str, args) -> list[str]:
    calib = max(args.length * args.batch, args.tokens // 4)
    return [
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
        str(calib),
        "--data.context_length",
        str(args.length),
        "--data.batch_size",
        str(args.batch),
        "--ablation.methods",
        f"[{','.join(METHODS)}]",
        "--ablation.fractions",
        "[0,0.5]",
        "--ablation.seeds",
        "[0]",
        "--ablation.n_resample",
        "8",
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
    ]


@torch.inference_mode()
def plain_forward(model, windows: torch.Tensor, batch: int, device: torch.device, use_cache: bool = False) -> float:
    """Seconds for a plain forward + CE + Top1 over ``windows`` in batches."""
    sync(device)
    t = time.perf_counter()
    for ids in windows.split(batch):
        ids = ids.to(device)
        logits = model(input_ids=ids, use_cache=use_cache).logits
        flat = logits.reshape(-1, logits.shape[-1])  # a view: the last position's label is ignored, not sliced off
        labels = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], 1).reshape(-1)
        F.cross_entropy(flat.float(), labels, reduction="sum", ignore_index=-100).item()
        ((flat.argmax(-1) == labels) & (labels != -100)).sum().item()
    sync(device)
    return time.perf_counter() - t


def in_fresh_process(fn, *args) -> int:
    """``fn(*args)`` (which returns a peak in bytes) in a new process: on the CPU, memory freed by
    earlier work in this process would be reused and hide a peak."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def forward_peak(model_dir: str, dtype: str, device: str, windows: torch.Tensor, batch: int, use_cache: bool) -> int:
    """Peak memory above the resident set of one batch's plain forward."""
    device = torch.device(device)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(device).eval()
    plain_forward(model, windows[:1], 1, device)  # warm-up outside the measurement
    before = reset_peak(device)
    plain_forward(model, windows[:batch], batch, device, use_cache=use_cache)
    return peak(device) - before


def statistics_peak(device: torch.device, chunked: bool, tokens: int = 4096, width: int = 4096) -> int:
    """Peak memory above the resident set of one moments + histogram update of [tokens, width]."""
    import ablate_lit.stats.exact as exact

    x = torch.randn(tokens, width, device=device) * 0.5
    moments, hist = NeuronMoments(1, width).to(device), NeuronHistogram(1, width, 0.01, 1024).to(device)
    hist.update(0, x[:8])  # the window is placed on the first batch
    saved = exact.CHUNK_VALUES
    exact.CHUNK_VALUES = saved if chunked else tokens * width
    try:
        sync(device)
        before = reset_peak(device)
        moments.update(0, x)
        hist.update(0, x)
        sync(device)
        return peak(device) - before
    finally:
        exact.CHUNK_VALUES = saved


def host_syncs_cpu(model_dir: Path, text: Path, args) -> dict:
    """Sync-forcing calls per scored ablated batch beyond a plain forward's (constant and resample)."""
    mod = CausalLMAblation(str(model_dir), dtype=args.dtype)
    d = TextData(
        str(text),
        max_tokens=args.length * args.batch,
        calib_tokens=args.length,
        context_length=args.length,
        batch_size=args.batch,
    )
    mod.connect_data(d)
    d.setup()
    batch = next(iter(d.test_dataloader()))
    L, D = mod.hooks.n_layers, mod.hooks.width
    mask = torch.rand(L, D, generator=torch.Generator().manual_seed(0)) < 0.5
    out = {}
    with torch.inference_mode():
        for name, repl in (
            ("mean", {"values": torch.randn(L, D)}),
            ("resample", {"resample": torch.randn(L, 2, args.length, D)}),
        ):
            with SyncCalls() as plain:
                mod.model(input_ids=batch["input_ids"], use_cache=False)
            with mod.hooks.ablating(mask, device=mod.device, **repl), SyncCalls() as ablated:
                mod._set_index(batch)
                mod.scores.update(*mod.logits_and_labels(batch))
            out[name] = sum((ablated.calls - plain.calls).values())
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="smollm2-135m", choices=sorted(SHAPES))
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--tokens", type=int, default=2048, help="evaluation tokens per point")
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3, help="runs of the schedule (each in a new run folder)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    root = Path(tempfile.mkdtemp(prefix="bench_run-"))
    model_dir, text = build_assets(root, args.shape, dtype, 2 * args.tokens + args.length * args.batch)

    # the plain model and the exact evaluation windows of the runs
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    data = TextData(
        str(text),
        max_tokens=args.tokens,
        calib_tokens=max(args.length * args.batch, args.tokens // 4),
        context_length=args.length,
        batch_size=args.batch,
    )
    data.connect(AutoTokenizer.from_pretrained(model_dir))
    data.setup()
    windows = data.eval_windows
    plain_forward(model, windows[: args.batch], args.batch, device)  # warm-up

    ratios = {m: [] for m in ["baseline", *METHODS]}
    moves, run_peaks, gpu_sync_warnings, batches = [], [], [], 0
    for r in range(args.repeats):
        before = plain_forward(model, windows, args.batch, device)
        start = reset_peak(device)
        with (
            MoveCounter() as moved,
            warnings.catch_warnings(record=True) as caught,
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("always")
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("warn")
            try:
                cli(cli_args(model_dir, text, root, f"r{r}", args))
            finally:
                if device.type == "cuda":
                    torch.cuda.set_sync_debug_mode(0)
        run_peaks.append(peak(device) - start)
        moves.append(moved.calls)
        gpu_sync_warnings.append(sum("synchroniz" in str(w.message) for w in caught))
        after = plain_forward(model, windows, args.batch, device)
        rows, _ = read_rows(root / "runs" / f"r{r}")
        plain_time = (before + after) / 2
        for row in rows:
            key = "baseline" if row["evaluated_as"] == "baseline" else row["method"]
            if row["evaluated_as"] == "baseline" and row["method"] != METHODS[0]:
                continue
            ratios[key].append(plain_time / float(row["time_s"]))
        batches += len(rows) * -(-len(windows) // args.batch)

    del model
    fresh = in_fresh_process if device.type == "cpu" else (lambda fn, *a: fn(*a))
    kv = {
        use_cache: fresh(forward_peak, str(model_dir), args.dtype, args.device, windows, args.batch, use_cache)
        for use_cache in (True, False)
    }
    stats_mem = {chunked: fresh(statistics_peak, device, chunked) for chunked in (True, False)}
    syncs = host_syncs_cpu(model_dir, text, args) if device.type == "cpu" else None

    tokens = windows.numel()
    print(
        f"{args.shape}, {device}, {args.dtype}: {tokens} tokens per point ({len(windows)} windows of {args.length}, "
        f"batch {args.batch}); {args.repeats} runs of the schedule\n"
    )
    print("| the real path (`python -m ablate_lit test`) | measured | target |\n|---|---|---|")
    for m, rs in ratios.items():
        print(
            f"| throughput of a point vs the plain forward, `{m}` | {statistics.median(rs):.2f}x "
            f"[{min(rs):.2f}, {max(rs):.2f}] | >= 0.95x |"
        )
    print(
        f"| whole-model moves per run (Module.to/cpu/cuda) | {statistics.median(moves):.0f} "
        f"(points per run: {1 + len(METHODS)}) | 1 |"
    )
    if syncs is not None:
        print(
            f"| sync-forcing calls per scored batch beyond the model's own | constant {syncs['mean']}, "
            f"resample {syncs['resample']} | 0 |"
        )
    else:
        print(
            "| set_sync_debug_mode warnings per run / per evaluated batch | "
            f"{statistics.median(gpu_sync_warnings):.0f} / "
            f"{statistics.median(gpu_sync_warnings) / max(1, batches / args.repeats):.2f} | |"
        )
    if device.type == "cuda":
        print(f"| peak GPU memory of a run above the loaded model | {mib(statistics.median(run_peaks))} | |")
    where = "GPU" if device.type == "cuda" else "RSS of a fresh process"
    print(
        f"| one batch's forward, peak {where} above the loaded model: key/value cache built (the default) / "
        f"not built (ablate_lit) | {mib(kv[True])} / {mib(kv[False])} | |"
    )
    print(
        f"| one statistics update of 4096 tokens x 4096 neurons, peak {where}: in one piece (before) / chunked | "
        f"{mib(stats_mem[False])} / {mib(stats_mem[True])} | |"
    )
    out = {
        "shape": args.shape,
        "device": str(device),
        "dtype": args.dtype,
        "tokens_per_point": tokens,
        "throughput_ratio": {m: rs for m, rs in ratios.items()},
        "model_moves_per_run": moves,
        "host_sync_calls_per_batch": syncs,
        "gpu_sync_warnings_per_run": gpu_sync_warnings,
        "run_peak_bytes": run_peaks,
        "plain_peak_bytes_kv_cache": kv[True],
        "plain_peak_bytes_no_cache": kv[False],
        "statistics_update_peak_bytes": {"chunked": stats_mem[True], "one_piece": stats_mem[False]},
    }
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
