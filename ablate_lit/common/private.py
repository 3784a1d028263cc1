"""Every use of another library's private API, each in one function here.

ablate_lit needs a few things the libraries it builds on do not offer publicly: how ``Module.to``
parses its arguments, a fresh Lightning fit loop per fit of constants, the parser LightningCLI
built, which configs a transformers auto class takes, a logger's run handle, a strategy's process
settings, accelerate's hook on a dispatched module, torchmetrics' state defaults, transformers' GGUF
conversion bar. Each is read or written here only, so that a library release that changes one breaks one function, and
``tests/test_private.py`` calls every function on the real library: it fails on the release that
changes what it relies on.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


def parse_to(*args, **kwargs) -> tuple:
    """(device, dtype, non_blocking, memory_format) of a ``Module.to(...)`` call, as torch parses them."""
    return torch._C._nn._parse_to(*args, **kwargs)


def fresh_fit_loop(trainer, max_epochs: int) -> tuple:
    """Give ``trainer`` a new fit loop of at most ``max_epochs`` epochs (a fit of constants starts from
    epoch 0 every time); returns what to hand ``restore_fit_loop`` afterwards."""
    from lightning.pytorch.loops.fit_loop import _FitLoop
    from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop

    saved = (trainer.fit_loop, trainer.num_sanity_val_steps)
    trainer.fit_loop = _FitLoop(trainer, min_epochs=0, max_epochs=max_epochs)
    trainer.fit_loop.epoch_loop = _TrainingEpochLoop(trainer, min_steps=None, max_steps=-1)
    trainer.num_sanity_val_steps = 0
    return saved


def restore_fit_loop(trainer, saved: tuple) -> None:
    trainer.fit_loop, trainer.num_sanity_val_steps = saved


def evaluate_under_no_grad(trainer) -> None:
    """Make ``trainer``'s validation and test loops run under ``torch.no_grad`` instead of
    ``torch.inference_mode`` (a quantized model's kernels may be autograd Functions that save tensors,
    which inference mode forbids: optimum-quanto's int4). Lightning sets this only when the Trainer is
    built, before the model it will run is known."""
    for loop in (trainer.validate_loop, trainer.test_loop):
        loop.inference_mode = False


def cli_parser(cli, subcommand: str | None):
    """The jsonargparse parser a LightningCLI built for ``subcommand`` (None: the only one)."""
    return cli._parser(subcommand)


def auto_class_takes(auto_class: str, config) -> bool:
    """Whether the transformers auto class named ``auto_class`` has a model for ``config``'s class."""
    import transformers

    return type(config) in getattr(transformers, auto_class)._model_mapping


def mlflow_uri(logger) -> str:
    """Where an MLFlowLogger's runs are stored."""
    return logger._tracking_uri


def finish_wandb(logger, exit_code: int) -> None:
    """Finish the W&B run a WandbLogger started, if it started one (its ``finalize`` does not, and a
    later logger would start another)."""
    if logger._experiment is not None:
        logger._experiment.finish(exit_code=exit_code)
        logger._experiment = None


def start_method(strategy) -> str:
    """How a Lightning strategy starts its processes (``popen``: as separate commands, the default)."""
    return getattr(strategy, "_start_method", "popen")


def tensor_parallel_size(strategy):
    """The tensor-parallel size of a ModelParallelStrategy ("auto": all processes), 1 for any other."""
    return getattr(strategy, "_tensor_parallel_size", 1)


def device_mesh(module):
    """The device mesh Lightning gives a LightningModule under a model-parallel strategy (else None)."""
    return module._device_mesh


def accelerate_hook(module):
    """The hook accelerate attached to a module of a dispatched model (None if it has none)."""
    return getattr(module, "_hf_hook", None)


def children_and_buffers(module: torch.nn.Module) -> tuple[dict, dict]:
    """A module's own child modules and buffers, as ``nn.Module`` stores them (by name)."""
    return module._modules, module._buffers


def metric_defaults(metric) -> dict:
    """The reset values of a torchmetrics Metric's states (``add_state``'s defaults), by name."""
    return metric._defaults


@contextmanager
def gguf_bar_silenced() -> Iterator[None]:
    """Inside this block transformers converts a GGUF file without its own tqdm bar (it takes no option
    to turn it off): the run's progress step says what is being converted instead."""
    from functools import partial

    from transformers import modeling_gguf_pytorch_utils as gguf

    bar = gguf.tqdm
    gguf.tqdm = partial(bar, disable=True)
    try:
        yield
    finally:
        gguf.tqdm = bar
