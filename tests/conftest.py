"""Shared fixtures: the tiny seeded model (fast) and SmolLM2 (slow, cached safetensors)."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

from executor.model import LoadedModel, load_smollm2, load_tiny
from tests.support import Network, Run, get_honest_run, get_network

# One intra-op thread: on a 2-core CI box, torch's threads plus the gRPC servers' threads
# oversubscribe the cores (a tiny matmul was measured 1000x slower under contention), and the
# calibration shows 1 and 2 threads compute bit-identical results (docs/calibration.md).
torch.set_num_threads(1)

# CI replays the same examples on every run; local runs keep exploring new ones. No deadline
# in CI: on a shared 2-core box an example's time says nothing about the code under test.
settings.register_profile("ci", derandomize=True, print_blob=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="session")
def tiny() -> LoadedModel:
    """Return the tiny seeded random Llama with the SmolLM2 tokenizer."""
    return load_tiny()


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    """Return SmolLM2-135M-Instruct (float32)."""
    return load_smollm2()


@pytest.fixture(scope="session")
def net() -> Network:
    """Return the deterministic in-process network of tests.support (6 validators, tiny model)."""
    return get_network()


@pytest.fixture(scope="session")
def run() -> Run:
    """Return one honest, certified run on ``net``."""
    return get_honest_run()
