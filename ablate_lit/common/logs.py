"""What a run tells its user, through Python's ``logging``: the ``ablate_lit`` logger.

Progress lines ("calibration statistics: ...", "[3/61] mean seed 0 20% ablated: ...") are INFO records of the
``ablate_lit`` logger, and warnings are WARNING records. By default they print as plain lines on
standard output (as the CLI always has); a notebook or a job scheduler can set the logger's level,
add its own handlers, or call ``console(False)`` to take the default line printer away.
``run(verbose=False)`` lowers it to warnings only. In a run on several processes only process 0
says anything (``say``).

Also here: keeping the libraries quiet (no per-file progress bars while loading weights, no
advertisement at every Trainer) and whether Lightning speaks in its own words (``lightning_voice``: its
bars, seed and device lines, only with ``--verbose``).
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from contextlib import contextmanager
from typing import Iterator

from ablate_lit.common.errors import render

log = logging.getLogger("ablate_lit")

RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _Stdout(logging.StreamHandler):
    """Plain lines on whatever ``sys.stdout`` is now (pytest and notebooks replace it), flushed."""

    def __init__(self):
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass

    def emit(self, record) -> None:
        """The line above any progress bar on the terminal (tqdm clears and redraws it)."""
        if "tqdm" not in sys.modules:  # no bar can be showing
            return super().emit(record)
        from tqdm import tqdm

        with tqdm.external_write_mode(file=sys.stdout):
            super().emit(record)


def console(on: bool = True) -> None:
    """Print the ``ablate_lit`` logger's records as plain lines on standard output (the default), or not."""
    handlers = [h for h in log.handlers if isinstance(h, _Stdout)]
    if on and not handlers:
        log.addHandler(_Stdout())
        log.setLevel(logging.INFO)
        log.propagate = False  # printed once, not again by a root handler a notebook may have
    elif not on:
        for h in handlers:
            log.removeHandler(h)
        log.propagate = True


console()


def printing() -> bool:
    """Whether the run's lines go to standard output (``console()``)."""
    return any(isinstance(h, _Stdout) for h in log.handlers)


_last = [time.perf_counter()]


def last_said() -> float:
    """``time.perf_counter()`` when the run last said something (progress lines come when it has been quiet)."""
    return _last[0]


def say(trainer, message: str, level: int = logging.INFO) -> None:
    """Log ``message`` from process 0 only (every process runs the same code)."""
    if trainer is None or trainer.is_global_zero:
        _last[0] = time.perf_counter()
        log.log(level, render(message))  # settings named in the front end's words (--ablation.n_bins / n_bins=)


def warn(trainer, message: str) -> None:
    """A warning line (``warning: ...``) from process 0."""
    say(trainer, message if message.startswith("warning:") else f"warning: {message}", logging.WARNING)


@contextmanager
def verbosity(verbose: bool) -> Iterator[None]:
    """Inside this block the ``ablate_lit`` logger says only warnings unless ``verbose``."""
    level = log.level
    if not verbose:
        log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric")
_lightning_verbose = [False]


def lightning_voice(verbose: bool) -> None:
    """Whether Lightning speaks in its own words: its progress bars (``lightning_bars``), "Seed set to 0",
    "GPU available: ..." and its other INFO lines. Off by default: the run's own progress display says
    where it is (``common.progress``); the CLI's ``--verbose true`` turns them back on (from Python,
    Lightning's bars: ``run(trainer={"enable_progress_bar": True})``)."""
    _lightning_verbose[0] = verbose
    for name in LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


@contextmanager
def lightning_quiet() -> Iterator[None]:
    """Inside this block Lightning is quiet (``lightning_voice(False)``); after it, as it was before."""
    before = _lightning_verbose[0], [logging.getLogger(n).level for n in LIGHTNING_LOGGERS]
    lightning_voice(False)
    try:
        yield
    finally:
        _lightning_verbose[0] = before[0]
        for name, level in zip(LIGHTNING_LOGGERS, before[1], strict=True):
            logging.getLogger(name).setLevel(level)


def lightning_bars() -> bool:
    """Whether Lightning's own progress bars are shown (``lightning_voice``)."""
    return _lightning_verbose[0]


@contextmanager
def empty_pass() -> Iterator[None]:
    """Inside this block a ``trainer.validate`` over an empty loader (run on purpose: Lightning starts its
    processes and places the model at its first call) does not warn that the loader is empty."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Total length of `DataLoader` across ranks is zero")
        yield


class _NoAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet_loading() -> None:
    """No per-file progress bars while loading weights (one status line per step is printed instead),
    no deprecation chatter from inside Lightning, no advertisement at every Trainer, and Lightning's
    banners left to ``--verbose`` (``lightning_voice``)."""
    lightning_voice(_lightning_verbose[0])
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # torchao (the quantization extra) registers its Enums with torch's pytree at import, which torch
    # 2.14 answers with one deprecation line per Enum: chatter between two libraries, not about the run
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    # Lightning logs each SIGTERM at INFO; the run's own one line says it (ablate_lit.common.signals)
    logging.getLogger("lightning.pytorch.trainer.connectors.signal_connector").setLevel(logging.WARNING)
    for name in RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoAdverts) for f in logger.filters):
            logger.addFilter(_NoAdverts())
    try:
        import datasets
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        datasets.disable_progress_bars()
        datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its read errors become our one-line errors
    except ImportError:
        pass
