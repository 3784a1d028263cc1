"""SIGTERM and SIGINT end a run with a non-zero status and one line: what is done, how to resume.

Lightning's own SIGTERM handler only notes the signal during ``trainer.test`` (and chains to the
handler installed here), and between Lightning calls a signal would end the process with no word;
here both signals raise ``Interrupted`` wherever the run is, so every ``finally`` runs (hooks are
removed, the claim of the point in progress is released) and the finished rows are already on disk.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from ablate_lit.common.errors import AblateError

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):
    """Raised in the main thread when the process receives SIGTERM or SIGINT."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_received: list[int] = []
"""Signals received in the current block. Python ignores an exception raised while a destructor or a
weakref callback runs ("Exception ignored in ..."): if the signal lands there, ``Interrupted`` is
lost, so the run also looks here (``check``) after each batch and point, and when the block ends."""
_depth = [0]


def _raise(signum, frame):
    _received.append(signum)
    raise Interrupted(signum)


def raise_if_signalled() -> None:
    """Raise ``Interrupted`` if a signal arrived whose exception was swallowed."""
    if _received:
        raise Interrupted(_received[0])


@contextmanager
def stopped_by_signals(progress: Callable[[], str]) -> Iterator[None]:
    """Inside this block SIGTERM/SIGINT become an ``AblateError`` with exit status 128 + signal number,
    whose one line says ``progress()`` and how to resume."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    if _depth[0] == 0:
        _received.clear()  # a new run (e.g. the next call in a notebook)
    _depth[0] += 1
    for s in SIGNALS:
        signal.signal(s, _raise)
    try:
        yield
        raise_if_signalled()
    except Interrupted as exc:
        raise AblateError(f"stopped by {exc}: {progress()}; ⟨rerun⟩ to resume", exit_code=128 + exc.signum) from None
    finally:
        _depth[0] -= 1
        for s, handler in previous.items():
            signal.signal(s, handler)
