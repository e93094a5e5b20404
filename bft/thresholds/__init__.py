"""Calibrated verifier thresholds, one table per verifier profile. [CAL.1], [EXEC.5]

A verifier of profile ``V`` (``<backend>-<dtype>``, e.g. ``torch-cpu-float32``) judges
commitments of every executor profile ``E`` it holds a calibration for:
``bft/thresholds/<V>/<E>.json`` (package data beside this loader), written by
``bench/calibrate.py``. Each band is ``accept_max = F x (largest honest error)`` and
``reject_min = (weakest cheat signal) / F`` with the safety factor ``F`` stated in the file.
The profiles found there are the executor profiles the verifier admits; a commitment of any
other profile is refused ([EXEC.5]). A check whose bands are ``null`` is off for that pair (no
cheat within its reach, [CAL.2]): it always accepts.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

from bft.measure import DEFAULT_PROFILE, Band, Thresholds

THRESHOLDS_DIR = Path(__file__).resolve().parent
"""The tables: one folder per verifier profile, one file per admitted executor profile."""
CHECKS = ("layer", "embedding", "sampler", "sequence")


def get_thresholds_path(executor_profile: str, verifier_profile: str | None = None) -> Path:
    """Return the file of bands for ``executor_profile`` judged by ``verifier_profile``.

    The verifier profile defaults to the executor's (a verifier of the same kind).
    """
    return THRESHOLDS_DIR / (verifier_profile or executor_profile) / f"{executor_profile}.json"


def read_thresholds(path: Path, profile: str) -> Thresholds:
    """Return the bands in the calibration file ``path`` for executor ``profile``."""
    data = json.loads(path.read_text())
    bands = {
        name: Band(_bound(data[name]["accept_max"]), _bound(data[name]["reject_min"]))
        for name in CHECKS
    }
    for name, band in bands.items():
        if not 0 <= band.accept_max <= band.reject_min:
            raise ValueError(f"{path}: {name} band is not 0 <= accept_max <= reject_min")
    return Thresholds(
        bands["layer"], bands["embedding"], bands["sampler"], bands["sequence"], profile=profile
    )


def is_admitted(path: Path) -> bool:
    """Return whether the calibration at ``path`` admits its executor profile. [EXEC.5]

    Calibration marks a pair not admitted when some cheat is beyond the reach of every check
    (``"admitted": false``); such a file documents what the verifier cannot check.
    """
    return json.loads(path.read_text()).get("admitted", True) is not False


def _bound(value: object) -> float:
    """Return a band bound; ``null`` is a check that is off for this pair (always accepts)."""
    if value is None:
        return math.inf
    if not isinstance(value, int | float):
        raise ValueError(f"band bound {value!r} is not a number")
    return float(value)


def load_thresholds(verifier_profile: str = DEFAULT_PROFILE) -> Thresholds:
    """Return the calibration table of a verifier of ``verifier_profile``.

    Its own bands are those for executors of the same profile; every other file in the
    profile's folder adds an admitted profile. Without its own file, only the reference profile
    has bands (the built-in defaults); any other raises :class:`FileNotFoundError`: no
    calibrated band could judge even its own kind ([EXEC.5]).
    """
    folder = THRESHOLDS_DIR / verifier_profile
    own_path = folder / f"{verifier_profile}.json"
    if own_path.exists():
        if not is_admitted(own_path):
            raise FileNotFoundError(
                f"calibration does not admit profile {verifier_profile} for its own verifiers"
            )
        own = read_thresholds(own_path, verifier_profile)
    elif verifier_profile == DEFAULT_PROFILE:
        own = Thresholds(profile=verifier_profile)
    else:
        raise FileNotFoundError(f"no calibration for verifier profile {verifier_profile}")
    others = tuple(
        read_thresholds(path, path.stem)
        for path in sorted(folder.glob("*.json"))
        if path.stem != verifier_profile and is_admitted(path)
    )
    return replace(own, others=others)
