"""The lock files drive the install: every dependency pinned, hashed and installed as pinned.

[determinism] item 2 (docs/decisions.md): ``./dev`` installs ``requirements/lock.txt`` and
``requirements/model.txt`` with ``--require-hashes --no-deps``; ``./dev lock`` refreshes them.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCKS = (ROOT / "requirements" / "lock.txt", ROOT / "requirements" / "model.txt")


def parse_lock(path: Path) -> dict[str, tuple[Version, list[str]]]:
    """Return ``{name: (version, hashes)}`` of the pip requirements file ``path``."""
    entries: dict[str, tuple[Version, list[str]]] = {}
    current: str | None = None
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip().rstrip("\\").strip()
        if not line:
            continue
        if line.startswith("--hash="):
            if current is None:
                raise ValueError(f"{path.name}: hash before any requirement")
            entries[current][1].append(line.removeprefix("--hash="))
            continue
        if line.startswith("-"):
            raise ValueError(f"{path.name}: unexpected option {line!r}")
        req = Requirement(line)
        (spec,) = req.specifier
        if spec.operator != "==":
            raise ValueError(f"{path.name}: {line!r} is not pinned with ==")
        current = canonicalize_name(req.name)
        entries[current] = (Version(spec.version), [])
    return entries


@pytest.fixture(scope="module")
def locked() -> dict[str, tuple[Version, list[str]]]:
    out: dict[str, tuple[Version, list[str]]] = {}
    for path in LOCKS:
        out |= parse_lock(path)
    return out


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    raw = project["dependencies"] + project["optional-dependencies"]["dev"]
    return [Requirement(r) for r in raw]


def test_every_locked_package_is_pinned_and_hashed(locked):
    assert len(locked) > 40  # the transitive closure, not just the direct dependencies
    for name, (_version, hashes) in locked.items():
        assert hashes, f"{name} has no hash"
        assert all(h.startswith("sha256:") and len(h) == 7 + 64 for h in hashes), name


def test_lock_satisfies_pyproject(locked):
    for req in project_requirements():
        name = canonicalize_name(req.name)
        assert name in locked, f"{req} is missing from requirements/lock.txt (./dev lock)"
        version = locked[name][0]
        assert req.specifier.contains(version, prereleases=True), (
            f"lock pins {name}=={version}, pyproject wants {req}: run ./dev lock"
        )


def test_torch_is_the_cpu_build(locked):
    version = locked["torch"][0]
    assert version.public == "2.13.0"
    assert version.local == "cpu"


def test_installed_versions_are_the_locked_ones(locked):
    for name, (version, _) in locked.items():
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            pytest.fail(f"{name} is locked but not installed: re-run ./dev")
        assert installed == version, f"{name}: installed {installed}, locked {version}"


def test_invalid_unpinned_lock_line_is_refused(tmp_path):
    bad = tmp_path / "lock.txt"
    bad.write_text("numpy>=2.0 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    with pytest.raises(ValueError, match="not pinned"):
        parse_lock(bad)
