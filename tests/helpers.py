"""Small builders shared by the tests: tiny modules and data, and the real CLI in this process."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from ablate_lit import CausalLMAblation, TextData
from ablate_lit.entry.cli import main
from ablate_lit.families.loading.causal_lm import CAUSAL_LM_ARCHITECTURES

ARCHS = sorted(CAUSAL_LM_ARCHITECTURES)
EPS = 2.0**-4  # a power of two keeps x / eps exact, so the reference bins identically
METHODS = "[zero,mean,peak,resample:random_chars,resample:random_tokens,resample:generated]"


def trainer() -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )


def module(path, **kwargs) -> CausalLMAblation:
    return CausalLMAblation(str(path), **kwargs)


def data(corpus, mod, **kwargs) -> TextData:
    settings = dict(max_tokens=120, calib_tokens=256, context_length=16, batch_size=4)
    settings.update(kwargs)
    d = TextData(str(corpus), **settings)
    d.connect(mod.tokenizer)
    d.setup("test")
    return d


def with_zero_inputs(pre_outs, fn):
    """fn() while every out-projection's forward is fed zeros, patched by hand (no ablate_lit hooks)."""
    import torch

    saved = [(p.module, p.module.forward) for p in pre_outs]
    for m, forward in saved:
        m.forward = lambda x, _f=forward: _f(torch.zeros_like(x))
    try:
        return fn()
    finally:
        for m, forward in saved:
            m.forward = forward


def run(capsys, *args):
    """``python -m ablate_lit test ARGS`` in this process: (exit code, stdout, stderr)."""
    return cli(capsys, "test", *args)


def cli(capsys, *argv):
    """``python -m ablate_lit ARGV`` in this process (any subcommand): (exit code, stdout, stderr)."""
    code = 0
    try:
        main(list(map(str, argv)))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def child_env(**extra) -> dict:
    """The environment of a child process: this one's, with third-party warnings off, no tokenizer
    threads and one OpenMP thread per process (two processes share the two cores of CI)."""
    base = {"PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    return {**os.environ, **base, **{k: str(v) for k, v in extra.items()}}


PATCHED_CLI = "import os, signal, sys, time\n{patch}\nfrom ablate_lit.entry.cli import main\nmain(sys.argv[1:])\n"
"""The command line of a child process that first runs ``patch`` (a fault to inject)."""


def launch(*argv, patch="", code=None, cwd=None, env=None, timeout=900, preexec_fn=None, wait=True):
    """``python -m ablate_lit ARGV`` in a child process, the one way the tests start one: with ``patch``
    (Python lines run first: a fault to inject) the CLI runs after it; with ``code`` that Python runs
    instead (``-c``, ARGV as its arguments; a file's path runs the file). ``env`` defaults to
    ``child_env()``. Returns the CompletedProcess, or with ``wait`` false the running Popen (stdout and
    stderr piped, as text)."""
    if code is not None:
        command = [sys.executable, code] if Path(code).is_file() else [sys.executable, "-c", code]
    elif patch:
        command = [sys.executable, "-c", PATCHED_CLI.format(patch=patch)]
    else:
        command = [sys.executable, "-m", "ablate_lit"]
    command += [str(a) for a in argv]
    env = env if env is not None else child_env()
    if not wait:
        return subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, preexec_fn=preexec_fn
    )


def tiny_args(model, corpus, root, *extra):
    return [
        "--model",
        "ablate_lit.CausalLMAblation",
        "--model.name_or_path",
        model,
        "--data",
        "ablate_lit.TextData",
        "--data.path",
        corpus,
        "--data.max_tokens",
        120,
        "--data.calib_tokens",
        256,
        "--data.context_length",
        16,
        "--data.batch_size",
        4,
        "--ablation.n_resample",
        2,
        "--ablation.seeds",
        "[0,1]",
        "--ablation.fractions",
        "[0,0.5,1]",
        "--ablation.methods",
        METHODS,
        "--root",
        root,
        "--name",
        "run",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.accelerator",
        "cpu",
        *extra,
    ]


def run_rows(capsys, *args):
    """Run the CLI (with --root/--name from tiny_args) and return (stdout, results rows); it must succeed."""
    code, out, err = run(capsys, *args)
    assert code == 0, err
    root = Path(str(args[list(map(str, args)).index("--root") + 1]))
    return out, read_rows(root / "run" / "results.csv")


def read_rows(path):
    with open(path) as fh:
        return [{k: v for k, v in r.items() if k != "time_s"} for r in csv.DictReader(fh)]


def reference_peak(values: np.ndarray, eps: float, shift: float) -> float:
    k = np.floor(values / eps + shift).astype(np.int64)
    ks, counts = np.unique(k, return_counts=True)
    best = ks[np.flatnonzero(counts == counts.max())[0]]  # lowest bin wins a tie
    return (best + 0.5 - shift) * eps


# Calls that make the host wait for the device (or move data between them) when the tensors live on a GPU.
SYNCS = {"__bool__", "item", "tolist", "nonzero", "numpy", "masked_select", "cpu", "cuda", "__int__", "__float__"}


class SyncCalls(TorchFunctionMode):
    """Counts the calls in SYNCS, boolean-mask indexing (its size depends on the data) and ``.to``
    with a device (a per-batch move)."""

    def __init__(self):
        super().__init__()
        self.calls = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if name in SYNCS:
            self.calls[name] += 1
        elif name == "__getitem__" and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool
            for i in (args[1] if isinstance(args[1], tuple) else (args[1],))
        ):
            self.calls["boolean mask indexing"] += 1
        elif name == "to" and ("device" in kwargs or any(isinstance(a, (str, torch.device)) for a in args[1:])):
            self.calls["to(device)"] += 1
        return func(*args, **kwargs)


def patched(model, path: str | list[str], n_layers: int, fn, run_forward):
    """run_forward() while the input x of the module(s) at ``path`` (a pattern with ``{}`` for the layer,
    one path, or a list of paths) becomes fn(layer, x); layers are counted in call order within each
    forward pass, so a module called 3 times is layers 0, 1, 2."""
    if isinstance(path, list):
        paths = path
    else:
        paths = [path.format(i) for i in range(n_layers)] if "{}" in path else [path]
    calls = {"n": 0}
    saved = [(m, m.forward) for m in dict.fromkeys(model.get_submodule(p) for p in paths)]

    def wrap(forward):
        def patched_forward(x, *args, **kwargs):
            layer = calls["n"] % n_layers
            calls["n"] += 1
            return forward(fn(layer, x), *args, **kwargs)

        return patched_forward

    for m, forward in saved:
        m.forward = wrap(forward)
    try:
        with torch.no_grad():
            return run_forward()
    finally:
        for m, forward in saved:
            m.forward = forward


def one_line_error(err: str) -> str:
    """The one ``error:`` line of a failed run's stderr (no traceback)."""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def lm_ce(folder, windows) -> float:
    """CE of a causal LM loaded with plain ``from_pretrained(folder)`` on ``windows`` [n, length]."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = model(input_ids=windows).logits[:, :-1]
    return float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1)))


def converted_from_gguf(model_dir, folder) -> Path:
    """A copy of ``model_dir`` as ``families.loading.hf`` converts a GGUF file: float weights, and a config
    that still names the ``gguf`` quantization (the demo's SmolLM2 folder is one)."""
    import json
    import shutil

    shutil.copytree(model_dir, folder)
    config = json.loads((Path(folder) / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gguf", "gguf_file": "tiny.gguf", "dequantize": False}
    (Path(folder) / "config.json").write_text(json.dumps(config))
    return Path(folder)
