"""Counts in words: '1 neuron', '2 neurons'."""

from __future__ import annotations


def counted(n: int, word: str, plural: str | None = None) -> str:
    """'1 neuron', '2 neurons', '0 evaluations' (``plural`` where adding s is wrong)."""
    return f"{n} {word if n == 1 else plural or word + 's'}"
