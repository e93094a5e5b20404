#!/usr/bin/env python3
"""Install the pieces made by tools/device/bundle.py, one device call at a time.

Runs on the GPU machine (Python 3.12, stdlib only, no network):

    python3 tools/device/unpack.py .devcarry/p01    # stage + verify p01, install what is whole
    python3 tools/device/unpack.py --status         # what is staged, installed and missing
    python3 tools/device/unpack.py --image-report   # versions the image itself has

Each piece's chunks are copied into the staging folder (default /root/verihive-stage) and
checked against the sha256 in the piece's manifest.json. Once every chunk of an archive is
staged, the chunks are checked again, decompressed as one stream and extracted into the site folder
(default /root/verihive-site); a marker there makes it idempotent. Pieces may come in any order
and twice. Then: export PYTHONPATH=/root/verihive-site:$PWD
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import sys
import tarfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

DEFAULT_STAGE = Path("/root/verihive-stage")
DEFAULT_SITE = Path("/root/verihive-site")
MARKERS = ".verihive-unpack"  # folder inside the site: one marker per installed archive
MIB = 2**20

# Versions worth knowing on the image before relying on it (--image-report).
IMAGE_PACKAGES = (
    "torch", "triton", "transformers", "tokenizers", "safetensors", "huggingface-hub",
    "numpy", "regex", "typing_extensions", "anyio", "httpx", "protobuf", "grpcio",
    "cryptography", "cffi", "pydantic", "accelerate", "numba", "setuptools", "pyzmq", "msgspec",
    "uvloop", "aiohttp", "psutil", "py-cpuinfo", "prometheus_client", "vllm", "flashinfer-python",
)  # fmt: skip


class UnpackError(Exception):
    """A problem the caller must act on (re-send a piece, free disk, ...)."""


def read_blocks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while block := fh.read(4 * MIB):
            yield block


def load_json(path: Path) -> dict[str, Any]:
    with path.open() as fh:
        data: dict[str, Any] = json.load(fh)
    return data


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


class ChunkReader(io.RawIOBase):
    """The concatenation of several files, read once from the start."""

    def __init__(self, paths: Iterable[Path]) -> None:
        super().__init__()
        self._paths: Iterator[Path] = iter(paths)
        self._fh: io.BufferedReader | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf)
        while True:
            if self._fh is None:
                nxt = next(self._paths, None)
                if nxt is None:
                    return 0
                self._fh = nxt.open("rb")
            n = self._fh.readinto(view)
            if n:
                return n
            self._fh.close()
            self._fh = None

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        super().close()


class Unpacker:
    def __init__(self, stage: Path, site: Path) -> None:
        self.stage = stage
        self.site = site
        self.chunks = stage / "chunks"
        self.markers = site / MARKERS
        self.manifest: dict[str, Any] | None = None
        if (stage / "manifest.json").is_file():
            self.manifest = load_json(stage / "manifest.json")
        self.notes: list[str] = []

    # --- staging ------------------------------------------------------------------------------
    def adopt_manifest(self, manifest: dict[str, Any]) -> None:
        if manifest.get("format") != 1:
            raise UnpackError(f"unknown manifest format {manifest.get('format')!r}")
        old = self.manifest
        if old is not None and old.get("bundle_id") != manifest.get("bundle_id"):
            # A new bundle: keep only staged chunks whose checked digest it names too.
            want = {c["file"]: c for a in manifest["artefacts"] for c in a["chunks"]}
            if self.chunks.is_dir():
                for p in self.chunks.iterdir():
                    if p.suffix in (".ok", ".part"):
                        continue
                    if p.name not in want or not self.is_staged(want[p.name]):
                        self.unstage(p)
            self.notes.append(
                f"new bundle {manifest['bundle_id']} replaces staged {old.get('bundle_id')}"
            )
        self.stage.mkdir(parents=True, exist_ok=True)
        self.chunks.mkdir(exist_ok=True)
        write_json(self.stage / "manifest.json", manifest)
        self.manifest = manifest

    def chunk_index(self) -> dict[str, dict[str, Any]]:
        assert self.manifest is not None
        return {c["file"]: c for a in self.manifest["artefacts"] for c in a["chunks"]}

    def stage_piece(self, piece_dir: Path) -> tuple[str, int, int]:
        """Copy and verify one piece's chunks; return (piece, chunks copied, bytes)."""
        mpath = piece_dir / "manifest.json"
        if not mpath.is_file():
            raise UnpackError(f"{mpath} not found: is {piece_dir} a piece made by bundle.py?")
        manifest = load_json(mpath)
        piece = piece_dir.name
        if piece not in manifest["pieces"]:
            # Renamed on the way: recognise it by the chunk files it holds.
            present = {p.name for p in piece_dir.iterdir()}
            known = [p for p, files in manifest["pieces"].items() if set(files) <= present]
            if len(known) != 1:
                raise UnpackError(f"{piece_dir}: not one of the pieces {list(manifest['pieces'])}")
            piece = known[0]
        self.adopt_manifest(manifest)
        index = self.chunk_index()
        errors: list[str] = []
        copied = nbytes = 0
        for name in manifest["pieces"][piece]:
            want = index[name]
            dst = self.chunks / name
            if self.is_staged(want):
                continue
            src = piece_dir / name
            if not src.is_file():
                errors.append(f"{src}: missing")
                continue
            got = self.copy_verified(src, dst, want)
            if got is not None:
                errors.append(got)
                continue
            copied += 1
            nbytes += want["bytes"]
        if errors:
            raise UnpackError(
                f"{piece}: {len(errors)} bad chunk(s), not staged (its good chunks are); carry "
                "the piece again (rebuild it with tools/device/bundle.py if bad here too):\n  "
                + "\n  ".join(errors)
            )
        return piece, copied, nbytes

    def is_staged(self, chunk: dict[str, Any]) -> bool:
        """Staged = present, of the right size, and checked against this digest when copied."""
        p: Path = self.chunks / chunk["file"]
        ok = p.with_name(p.name + ".ok")
        return (
            p.is_file()
            and p.stat().st_size == int(chunk["bytes"])
            and ok.is_file()
            and ok.read_text().strip() == chunk["sha256"]
        )

    @staticmethod
    def unstage(path: Path) -> None:
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".ok").unlink(missing_ok=True)

    @staticmethod
    def copy_verified(src: Path, dst: Path, want: dict[str, Any]) -> str | None:
        h = hashlib.sha256()
        tmp = dst.with_name(dst.name + ".part")
        size = 0
        with tmp.open("wb") as fout:
            for block in read_blocks(src):
                h.update(block)
                fout.write(block)
                size += len(block)
        if size != want["bytes"] or h.hexdigest() != want["sha256"]:
            tmp.unlink()
            return (
                f"{src}: corrupt (sha256 {h.hexdigest()[:16]}…, {size} bytes; "
                f"expected {want['sha256'][:16]}…, {want['bytes']} bytes)"
            )
        os.replace(tmp, dst)
        dst.with_name(dst.name + ".ok").write_text(want["sha256"] + "\n")
        return None

    # --- installing ---------------------------------------------------------------------------
    def installed(self, art: dict[str, Any]) -> bool:
        marker = self.markers / f"{art['name']}.json"
        return marker.is_file() and bool(load_json(marker).get("sha256") == art["sha256"])

    def install_ready(self) -> list[str]:
        """Install every archive whose chunks are all staged; return the names installed."""
        assert self.manifest is not None
        done: list[str] = []
        errors: list[str] = []
        for art in self.manifest["artefacts"]:
            if self.installed(art) or not all(self.is_staged(c) for c in art["chunks"]):
                continue
            try:
                self.install(art)
            except (UnpackError, OSError, tarfile.TarError, EOFError) as exc:
                errors.append(f"{art['name']}: {exc}")
                continue
            done.append(art["name"])
        if errors:
            raise UnpackError(
                "; ".join(errors) + (f" (installed {','.join(done)})" if done else "")
            )
        return done

    def install(self, art: dict[str, Any]) -> None:
        paths = [self.chunks / c["file"] for c in art["chunks"]]
        whole = hashlib.sha256()
        for chunk, path in zip(art["chunks"], paths, strict=True):
            h = hashlib.sha256()
            for block in read_blocks(path):
                h.update(block)
                whole.update(block)
            if h.hexdigest() != chunk["sha256"]:
                self.unstage(path)
                raise UnpackError(
                    f"staged chunk {path} changed on disk (sha256 mismatch); removed it: carry "
                    f"piece {chunk['piece']} again"
                )
        if whole.hexdigest() != art["sha256"]:
            raise UnpackError(f"{art['name']}: archive sha256 mismatch after reassembly")
        self.site.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with (
            ChunkReader(paths) as raw,
            io.BufferedReader(raw, buffer_size=4 * MIB) as buffered,
            tarfile.open(fileobj=buffered, mode="r|*") as tar,  # xz, gz or plain
        ):
            tar.extractall(self.site, filter="data")
        self.markers.mkdir(exist_ok=True)
        write_json(
            self.markers / f"{art['name']}.json",
            {
                "sha256": art["sha256"],
                "bundle_id": self.manifest["bundle_id"] if self.manifest else None,
                "files": art["files"],
                "unpacked_bytes": art["unpacked_bytes"],
                "extract_s": round(time.perf_counter() - t0, 2),
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )

    # --- reporting ----------------------------------------------------------------------------
    def status_line(self) -> str:
        if self.manifest is None:
            return f"nothing staged in {self.stage}"
        m = self.manifest
        arts = {a["name"]: a for a in m["artefacts"]}
        chunks = {c["file"]: c for a in m["artefacts"] for c in a["chunks"]}
        owner = {c["file"]: a["name"] for a in m["artefacts"] for c in a["chunks"]}
        installed = [a["name"] for a in m["artefacts"] if self.installed(a)]

        def have(f: str) -> bool:
            return owner[f] in installed or self.is_staged(chunks[f])

        done = [p for p, files in m["pieces"].items() if all(have(f) for f in files)]
        missing = [p for p in m["pieces"] if p not in done]
        pending = [
            f"{a['name']}({sum(have(c['file']) for c in a['chunks'])}/{len(a['chunks'])})"
            for a in m["artefacts"]
            if a["name"] not in installed
        ]
        tiers = []
        for tier, names in m["tiers"].items():
            need = sorted(
                {c["piece"] for n in names for c in arts[n]["chunks"] if not have(c["file"])}
            )
            if all(n in installed for n in names):
                tiers.append(f"{tier}:ready")
            else:
                tiers.append(f"{tier}:needs " + (",".join(need) or "a re-run"))
        parts = [
            f"pieces done {','.join(done) or '-'}",
            f"missing {','.join(missing) or '-'}",
            f"installed {','.join(installed) or '-'}",
        ]
        if pending:
            parts.append(f"pending {' '.join(pending)}")
        parts.append("tiers " + " ".join(tiers))
        return " | ".join(parts)

    def gguf_paths(self) -> list[Path]:
        if self.manifest is None:
            return []
        out = []
        for a in self.manifest["artefacts"]:
            if self.installed(a):
                out += [self.site / g for g in a.get("gguf", [])]
        return out


def image_report(site: Path) -> str:
    """Versions of IMAGE_PACKAGES on the interpreter's own path (the site folder left out)."""
    from importlib import metadata

    site_s = str(site.resolve())
    path = [p for p in sys.path if p and not os.path.abspath(p).startswith(site_s)]
    found: dict[str, str] = {}
    for dist in metadata.distributions(path=path):
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        found.setdefault(name, dist.version)
    rows = []
    for pkg in IMAGE_PACKAGES:
        key = pkg.lower().replace("_", "-")
        rows.append(f"{pkg}={found.get(key, '-')}")
    libc = "-".join(platform.libc_ver())
    return f"python {sys.version.split()[0]} {libc} | " + " ".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("pieces", nargs="*", type=Path, help="piece folders, e.g. .devcarry/p01")
    ap.add_argument("--stage", type=Path, default=DEFAULT_STAGE, help="staging folder (kept)")
    ap.add_argument("--site", type=Path, default=DEFAULT_SITE, help="install folder (PYTHONPATH)")
    ap.add_argument("--status", action="store_true", help="only report")
    ap.add_argument("--image-report", action="store_true", help="versions the image itself has")
    args = ap.parse_args(argv)
    if not args.pieces and not args.status and not args.image_report:
        ap.error("name a piece folder, or --status, or --image-report")

    t0 = time.perf_counter()
    if args.image_report:
        print(image_report(args.site))
    un = Unpacker(args.stage, args.site)
    rc = 0
    staged: list[str] = []
    installed_now: list[str] = []
    for piece_dir in args.pieces:
        try:
            piece, copied, nbytes = un.stage_piece(piece_dir)
            staged.append(f"{piece}(+{copied} chunk(s), {nbytes / MIB:.1f} MiB)")
            installed_now += un.install_ready()
        except UnpackError as exc:
            print(f"unpack: ERROR {exc}", file=sys.stderr)
            rc = 2
        except OSError as exc:
            print(f"unpack: ERROR {exc}", file=sys.stderr)
            rc = 2
    line = un.status_line()
    head = []
    if staged:
        head.append("staged " + " ".join(staged))
    if installed_now:
        head.append("just installed " + ",".join(installed_now))
    for note in un.notes:
        head.append(note)
    if args.pieces or args.status:
        print(
            "unpack: " + " | ".join([*head, line]) + f" | {time.perf_counter() - t0:.1f}s",
            flush=True,
        )
        ggufs = un.gguf_paths()
        if ggufs and (args.status or installed_now):
            print("unpack: gguf " + " ".join(str(p) for p in ggufs))
        if un.markers.is_dir() and any(un.markers.iterdir()) and (installed_now or args.status):
            print(f"unpack: use  export PYTHONPATH={args.site}:$PWD")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
