"""User-facing errors: each is one line that says what is wrong and how to fix it."""

from __future__ import annotations

_raised: list["AblateError"] = []


class AblateError(Exception):
    """A bad input or configuration. The CLI prints ``error: <message>`` and exits with status 2."""

    def __init__(self, message: str):
        super().__init__(message)
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
