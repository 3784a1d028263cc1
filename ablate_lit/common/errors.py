"""User-facing errors: each is one line that says what is wrong and how to fix it.

A message names the settings it is about by their key, between ``⟨`` and ``⟩``, and each front end
words them in its own terms when the message is shown (``render``):

    ⟨--data.max_tokens⟩        CLI: --data.max_tokens         run(): max_tokens=
    ⟨--trainer.strategy ddp⟩    CLI: --trainer.strategy ddp    run(): trainer={'strategy': ddp}
    ⟨ablation.eps⟩              CLI: ablation.eps              run(): eps
    ⟨family=masked_lm⟩          CLI: --model ablate_lit.MaskedLMAblation    run(): family="masked_lm"
    ⟨rerun⟩                     CLI: run the same command again            run(): call run(...) again
"""

from __future__ import annotations

import contextvars
import re
from contextlib import contextmanager
from typing import Iterator

from ablate_lit.common.families import FAMILIES

_raised: list["AblateError"] = []

_STYLE = contextvars.ContextVar("ablate_lit_wording", default="cli")
_MARK = re.compile(r"⟨([^⟩]*)⟩")
_RUN_NAMES = {"model.name_or_path": "model", "data.path": "data", "model.name": "model_name"}


def _cli(spec: str) -> str:
    if spec.startswith("family="):
        return f"--model ablate_lit.{FAMILIES[spec.removeprefix('family=')].module}"
    return "run the same command again" if spec == "rerun" else spec


def _python(spec: str) -> str:
    if spec.startswith("family="):
        return f'family="{spec.removeprefix("family=")}"'
    if spec == "rerun":
        return "call run(...) again"
    option, _, value = spec.partition(" ")
    if not option.startswith("--"):  # a bare key (ablation.eps): the setting's own name
        return option.split(".", 1)[-1]
    key = option[2:]
    if key.startswith("trainer."):
        return f"trainer={{'{key.removeprefix('trainer.')}': {value or '...'}}}"
    name = _RUN_NAMES.get(key, key.split(".", 1)[-1])
    value = {"true": "True", "false": "False"}.get(value, value)
    return f"{name}={value}"


def render(message: str, style: str | None = None) -> str:
    """``message`` with its setting keys worded for ``style`` (cli, python; default: the current one)."""
    word = _python if (style or _STYLE.get()) == "python" else _cli
    return _MARK.sub(lambda m: word(m[1]), message)


@contextmanager
def wording(style: str) -> Iterator[None]:
    """Inside this block messages are worded for ``style`` (``python`` for ``run()``)."""
    token = _STYLE.set(style)
    try:
        yield
    finally:
        _STYLE.reset(token)


class AblateError(Exception):
    """A bad input or configuration. The CLI prints ``error: <message>`` and exits with ``exit_code``
    (2, or 128 + signal number for a run stopped by a signal). ``key``: the setting at fault, where
    there is one."""

    def __init__(self, message: str, exit_code: int = 2, key: str | None = None):
        super().__init__(message)
        self.exit_code, self.key = exit_code, key
        # jsonargparse re-raises errors from class constructors as a ValueError that lists every
        # Union member it tried, without chaining; the CLI recovers the original from here.
        _raised.append(self)

    def __str__(self) -> str:
        return render(str(self.args[0]) if self.args else "")

    def freeze(self, style: str) -> AblateError:
        """Word the message for ``style`` for good (it leaves the front end that raised it)."""
        self.args = (render(str(self.args[0]), style),) + self.args[1:]
        return self


def closest(name: str, choices) -> str | None:
    """The valid name closest to a misspelt ``name`` (difflib's ratio at least 0.5), or None."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return close[0] if close else None


def did_you_mean(name: str, choices) -> str:
    """`` (did you mean 'X'?)`` for the valid name closest to a misspelt ``name``, or nothing."""
    close = closest(name, choices)
    return f" (did you mean '{close}'?)" if close else ""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise AblateError(message)


def clear_raised() -> None:
    _raised.clear()


def first_raised() -> AblateError | None:
    return _raised[0] if _raised else None


SEED_MAX = 2**63 - 1


def check_batch_size(batch_size) -> None:
    """A DataModule's ``batch_size``: a positive integer, or auto (found on the accelerator)."""
    check(
        batch_size == "auto" or (isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1),
        f"⟨data.batch_size⟩ must be a positive integer or auto, got {batch_size}",
    )


def check_seed(value, name: str) -> None:
    """Seeds feed torch.Generator.manual_seed, which takes integers in [0, 2**63)."""
    check(
        isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= SEED_MAX,
        f"{name} must be an integer in [0, 2**63), got {value}",
    )


def reason_of(exc: BaseException, limit: int = 200) -> str:
    """A third-party exception's message on one line, cut at ``limit`` characters (its type if empty),
    for the middle of an AblateError."""
    return " ".join(str(exc).split())[:limit] or type(exc).__name__
