"""Ablation methods and the replacement value each one gives every neuron."""

from __future__ import annotations

from dataclasses import dataclass

from ablate_lit.errors import AblateError

CONSTANT_METHODS = ("zero", "mean", "peak")
RESAMPLE_SOURCES = ("random_chars", "random_tokens", "generated", "random_pixels")
ALL_METHODS = CONSTANT_METHODS + tuple(f"resample:{s}" for s in RESAMPLE_SOURCES)


@dataclass(frozen=True)
class Method:
    name: str
    source: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name}:{self.source}" if self.source else self.name


def parse_method(text: str) -> Method:
    """``zero | mean | peak | resample:<source>``; a bare ``resample`` is refused (name the source)."""
    name, _, source = str(text).strip().partition(":")
    if name in CONSTANT_METHODS and not source:
        return Method(name)
    if name == "resample":
        if source in RESAMPLE_SOURCES:
            return Method(name, source)
        raise AblateError(
            f"unknown resample source '{source}' in '{text}'; use one of: {', '.join(RESAMPLE_SOURCES)} (e.g. resample:random_tokens)"
        )
    raise AblateError(f"unknown ablation method '{text}'; use one of: {', '.join(ALL_METHODS)}")
