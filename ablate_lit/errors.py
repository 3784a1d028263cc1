"""User-facing errors: each is one line that says what is wrong and how to fix it."""

from __future__ import annotations

_raised: list["AblateError"] = []


class AblateError(Exception):
    """A bad input or configuration. The CLI prints ``error: <message>`` and exits with ``exit_code``
    (2, or 128 + signal number for a run stopped by a signal)."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code
        # jsonargparse re-raises errors from class constructors as a ValueError that lists every
        # Union member it tried, without chaining; the CLI recovers the original from here.
        _raised.append(self)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise AblateError(message)


def clear_raised() -> None:
    _raised.clear()


def first_raised() -> AblateError | None:
    return _raised[0] if _raised else None


SEED_MAX = 2**63 - 1


def check_seed(value, name: str) -> None:
    """Seeds feed torch.Generator.manual_seed, which takes integers in [0, 2**63)."""
    check(isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= SEED_MAX,
          f"{name} must be an integer in [0, 2**63), got {value}")
