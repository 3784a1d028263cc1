"""Session fixtures: the tiny models, tokenizer, text and images of ablate_lit.testing.tiny, built once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ablate_lit.families.loading.causal_lm import CAUSAL_LM_ARCHITECTURES
from ablate_lit.families.loading.masked_lm import MASKED_LM_ARCHITECTURES
from ablate_lit.testing.tiny import build_all


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need a CUDA GPU: without one they are skipped, saying so."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marker gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> Path:
    return build_all(tmp_path_factory.mktemp("assets"))


@pytest.fixture(scope="session")
def tiny_models(assets) -> dict[str, Path]:
    return {t: assets / "models" / t for t in CAUSAL_LM_ARCHITECTURES}


@pytest.fixture(scope="session")
def tiny_masked(assets) -> dict[str, Path]:
    return {t: assets / "masked" / t for t in MASKED_LM_ARCHITECTURES}


@pytest.fixture(scope="session")
def tiny_vision(assets) -> dict[str, Path]:
    return {"timm": assets / "vision" / "timm", "hf": assets / "vision" / "hf"}


@pytest.fixture(scope="session")
def corpus(assets) -> Path:
    return assets / "corpus"


@pytest.fixture(scope="session")
def image_folder(assets) -> Path:
    return assets / "images"


@pytest.fixture(scope="session")
def zoo(assets) -> dict[str, Path]:
    """Tiny models of the architectures located by structure (ablate_lit.testing.zoo.build_zoo)."""
    from ablate_lit.testing.zoo import build_zoo

    return build_zoo(assets / "zoo", assets / "tokenizer")
