"""Calibrated verifier thresholds, one JSON file per (backend, dtype). [CAL.1]

``bench/calibrate.py`` writes ``executor/thresholds/<backend>-<dtype>.json``; the verifier
loads it. Each band is ``accept_max = F x (largest honest error)`` and
``reject_min = (weakest cheat signal) / F`` with the safety factor ``F`` stated in the file.
"""

from __future__ import annotations

import json
from pathlib import Path

from bft.verifier import Band, Thresholds

THRESHOLDS_DIR = Path(__file__).resolve().parent / "thresholds"


def get_thresholds_path(backend: str, dtype: str) -> Path:
    """Return the thresholds file of (``backend``, ``dtype``)."""
    return THRESHOLDS_DIR / f"{backend}-{dtype}.json"


def load_thresholds(backend: str = "torch-cpu", dtype: str = "float32") -> Thresholds:
    """Return the calibrated thresholds of (``backend``, ``dtype``), or the defaults if none."""
    path = get_thresholds_path(backend, dtype)
    if not path.exists():
        return Thresholds()
    data = json.loads(path.read_text())
    bands = {
        name: Band(float(data[name]["accept_max"]), float(data[name]["reject_min"]))
        for name in ("layer", "embedding", "sampler", "sequence")
    }
    for name, band in bands.items():
        if not 0 <= band.accept_max <= band.reject_min:
            raise ValueError(f"{path}: {name} band is not 0 <= accept_max <= reject_min")
    return Thresholds(**bands)
