"""Shared fixtures: the tiny seeded model (fast) and SmolLM2 (slow, cached safetensors)."""

from __future__ import annotations

import pytest

from executor.model import LoadedModel, load_smollm2, load_tiny


@pytest.fixture(scope="session")
def tiny() -> LoadedModel:
    """Return the tiny seeded random Llama with the SmolLM2 tokenizer."""
    return load_tiny()


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    """Return SmolLM2-135M-Instruct (float32)."""
    return load_smollm2()
