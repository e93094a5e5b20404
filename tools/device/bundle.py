#!/usr/bin/env python3
"""Pack what the GPU machine lacks into numbered pieces that each fit one device call.

Runs here (Python 3.11, stdlib plus a ``pip`` subprocess). Reads ``manifest.txt`` beside this
file, downloads the listed wheels for CPython 3.12 on manylinux x86-64 into a cache, installs
each artefact's wheels into a tree of its own (``pip install --target``, no dependencies, no
byte-code), moves the strip set out of the vLLM tree into the ``vllm-fa2`` and ``vllm-extra``
trees, packs every tree as a compressed tar (xz; gzip for the GGUF, which xz barely shrinks but
decodes at a tenth of gzip's speed), and cuts the archives, in carry order, into
``.devcarry/p01``, ``.devcarry/p02``, ... of at most 58 MiB each. Every piece holds a copy of
``manifest.json`` (sha256 of every chunk and archive, and how to reassemble);
``tools/device/unpack.py`` installs the pieces on the GPU machine. See docs/gpu-setup.md.

    python3 tools/device/bundle.py                 # all tiers (a, b, b+fa2, c)
    python3 tools/device/bundle.py --tier a        # only the torch-only GPU path
    python3 tools/device/bundle.py --find-links /tmp/vw   # a folder already holding wheels
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
MANIFEST_TXT = HERE / "manifest.txt"

# Carry order: the torch-only path first, so that a session can stop after its pieces; then
# vLLM stripped; then the stripped files, FA2 first (the likeliest to be wanted back).
ARTEFACTS = ("project", "model", "vllm-deps", "vllm", "vllm-fa2", "vllm-extra")
TIERS: dict[str, tuple[str, ...]] = {
    "a": ("project", "model"),
    "b": ("project", "model", "vllm-deps", "vllm"),
    "b+fa2": ("project", "model", "vllm-deps", "vllm", "vllm-fa2"),
    "c": ("project", "model", "vllm-deps", "vllm", "vllm-fa2", "vllm-extra"),
}
TIER_TEXT = {
    "a": "torch-only GPU path (project deps + model)",
    "b": "+ vLLM, stripped",
    "b+fa2": "+ vLLM, stripped, with FlashAttention-2 back",
    "c": "+ vLLM, full (every stripped file back)",
}
STRIP_FROM = "vllm"
STRIP_TO = ("vllm-fa2", "vllm-extra")  # artefacts made of files moved out of STRIP_FROM

MIB = 2**20
PIECE_BYTES = 58 * MIB  # one piece folder, manifest included
MANIFEST_RESERVE = 64 * 1024  # room kept in every piece for manifest.json (about 9 KB)
MIN_CHUNK = 64 * 1024  # below this much room, a piece is closed rather than given a sliver
DEFAULT_PRESET = 9  # measured in docs/gpu-setup.md: 9 beats 6 on the CUDA libraries
# Per artefact: "xz" (preset --preset), "gz" (level 6) or "none". The GGUF (Q4_1 weights) packs
# to 0.919 with xz -9 and 0.944 with gzip, but xz decodes it at ~18 MiB/s, gzip at ~170 MiB/s.
DEFAULT_COMPRESSION = {"model": "gz"}
SUFFIX = {"xz": "tar.xz", "gz": "tar.gz", "none": "tar"}
FORMAT_VERSION = 1  # bump when the archive layout changes, so cached archives are rebuilt
FIXED_MTIME = 1_735_689_600  # 2025-01-01: archives do not depend on when they were built

PYTHON_VERSION = "3.12"
# Newest glibc asked for: 2.31 (llguidance has nothing older); the vLLM and torch wheels need
# 2.28, and the image (Python 3.12.3, as Ubuntu 24.04 ships) most likely has 2.39.
PLATFORMS = (
    "manylinux_2_31_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_26_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux_2_5_x86_64",
    "manylinux1_x86_64",
)
REASSEMBLE = (
    "Per artefact: concatenate its chunks in index order (chunk i starts at byte `offset` of "
    "the archive), check sha256 of each chunk and of the whole, then `xz -dc` (.tar.xz) or "
    "`gzip -dc` (.tar.gz) ARCHIVE | tar -x -C SITE (or Python: "
    "tarfile.open(mode='r|*').extractall(SITE, filter='data')). "
    "SITE goes first on PYTHONPATH. tools/device/unpack.py does all of this."
)


@dataclass
class Manifest:
    """What manifest.txt asks for."""

    wheels: dict[str, list[str]] = field(default_factory=dict)  # artefact -> ["name==ver"]
    strip: dict[str, list[str]] = field(default_factory=dict)  # artefact -> [glob]


def parse_manifest(path: Path) -> Manifest:
    m = Manifest()
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if parts[0] == "strip":
            if len(parts) != 3 or parts[1] not in STRIP_TO:
                raise SystemExit(f"{path}:{lineno}: expected 'strip <{'|'.join(STRIP_TO)}> <path>'")
            m.strip.setdefault(parts[1], []).append(parts[2])
            continue
        if len(parts) != 2:
            raise SystemExit(f"{path}:{lineno}: expected '<artefact> <name>==<version>'")
        kind, value = parts
        if kind in ARTEFACTS and kind not in STRIP_TO:
            if "==" not in value:
                raise SystemExit(f"{path}:{lineno}: pin an exact version: {value}")
            m.wheels.setdefault(kind, []).append(value)
        else:
            raise SystemExit(f"{path}:{lineno}: unknown artefact {kind!r}")
    return m


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def find_wheel(cache: Path, req: str) -> Path | None:
    name, version = req.split("==")
    for whl in sorted(cache.glob("*.whl")):
        parts = whl.name[:-4].split("-")
        if len(parts) >= 5 and canon(parts[0]) == canon(name) and parts[1] == version:
            return whl
    return None


def pip_target_flags() -> list[str]:
    flags = ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp"]
    for abi in ("cp312", "abi3", "none"):
        flags += ["--abi", abi]
    for plat in PLATFORMS:
        flags += ["--platform", plat]
    return flags


def download(reqs: list[str], cache: Path, find_links: list[Path]) -> dict[str, Path]:
    """Return {requirement: wheel}, fetching only what the cache lacks."""
    cache.mkdir(parents=True, exist_ok=True)
    missing = [r for r in reqs if find_wheel(cache, r) is None]
    if missing:
        print(f"bundle: pip download {len(missing)} wheel(s) into {cache}", flush=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache)]
        cmd += pip_target_flags()
        for fl in find_links:
            cmd += ["--find-links", str(fl)]
        subprocess.run(cmd + missing, check=True)
    found: dict[str, Path] = {}
    for r in reqs:
        whl = find_wheel(cache, r)
        if whl is None:
            raise SystemExit(f"bundle: no wheel for {r} in {cache} after pip download")
        found[r] = whl
    return found


def install_tree(wheels: list[Path], tree: Path) -> None:
    if tree.exists():
        shutil.rmtree(tree)
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile"]
    cmd += ["--no-index", "--no-cache-dir", "--root-user-action=ignore", "--target", str(tree)]
    cmd += pip_target_flags()
    subprocess.run(cmd + [str(w) for w in wheels], check=True)
    # Console scripts carry this machine's interpreter in their first line: useless there.
    shutil.rmtree(tree / "bin", ignore_errors=True)


def apply_strip(src: Path, dst: Path, patterns: list[str]) -> list[str]:
    """Move what ``patterns`` match from ``src`` to the same places under ``dst``."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    moved: list[str] = []
    for pattern in patterns:
        matches = sorted(src.glob(pattern))
        if not matches:
            raise SystemExit(f"bundle: strip pattern {pattern!r} matches nothing in {src}")
        for path in matches:
            rel = path.relative_to(src)
            target = dst / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), str(target))
            moved.append(rel.as_posix())
    return moved


def tree_stats(tree: Path) -> tuple[int, int]:
    files = size = 0
    for p in tree.rglob("*"):
        if p.is_file() and not p.is_symlink():
            files += 1
            size += p.stat().st_size
    return files, size


def _tar_filter(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = FIXED_MTIME
    info.mode = 0o755 if info.isdir() or info.mode & 0o100 else 0o644
    return info


def pack_tree(tree: Path, out: Path, compression: str, preset: int) -> dict[str, Any]:
    """Write ``tree`` as a deterministic, compressed tar; return size, sha256, seconds."""
    t0 = time.perf_counter()
    entries = sorted(p for p in tree.rglob("*"))
    with contextlib.ExitStack() as stack:
        fileobj: io.BufferedIOBase
        if compression == "xz":
            fileobj = stack.enter_context(
                lzma.open(out, "wb", format=lzma.FORMAT_XZ, preset=preset)
            )
        elif compression == "gz":
            raw = stack.enter_context(out.open("wb"))
            # No file name and mtime 0 in the header: the same tree gives the same bytes.
            fileobj = stack.enter_context(
                gzip.GzipFile(filename="", mode="wb", compresslevel=6, fileobj=raw, mtime=0)
            )
        else:
            fileobj = stack.enter_context(out.open("wb"))
        tar = stack.enter_context(
            tarfile.open(fileobj=fileobj, mode="w", format=tarfile.PAX_FORMAT)
        )
        for p in entries:
            tar.add(p, arcname=p.relative_to(tree).as_posix(), recursive=False, filter=_tar_filter)
    seconds = time.perf_counter() - t0
    return {"bytes": out.stat().st_size, "sha256": sha256_file(out), "compress_s": seconds}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(4 * MIB):
            h.update(block)
    return h.hexdigest()


def time_decompress(path: Path) -> float:
    """Seconds to stream-decompress and parse the archive on one core (nothing written)."""
    t0 = time.perf_counter()
    with tarfile.open(path, mode="r|*") as tar:
        for member in tar:
            fh = tar.extractfile(member)
            if fh is not None:
                while fh.read(4 * MIB):
                    pass
    return time.perf_counter() - t0


def plan_chunks(
    sizes: list[tuple[str, int]],
    piece_bytes: int,
    suffix: dict[str, str],
    compression: dict[str, str],
) -> dict[str, list[dict[str, Any]]]:
    """Cut the archives, in order, into chunks filling pieces of ``piece_bytes``."""
    budget = piece_bytes - MANIFEST_RESERVE
    piece, room = 1, budget
    plan: dict[str, list[dict[str, Any]]] = {}
    for name, size in sizes:
        offset, index = 0, 0
        plan[name] = []
        while offset < size:
            if room < MIN_CHUNK and room < size - offset:
                piece, room = piece + 1, budget
            n = min(room, size - offset)
            plan[name].append(
                {
                    "file": f"{name}.{suffix[compression[name]]}.{index:03d}",
                    "piece": f"p{piece:02d}",
                    "offset": offset,
                    "bytes": n,
                }
            )
            offset += n
            room -= n
            index += 1
    return plan


def copy_range(src: Path, dst: Path, start: int, length: int) -> str:
    h = hashlib.sha256()
    with src.open("rb") as fin, dst.open("wb") as fout:
        fin.seek(start)
        left = length
        while left:
            block = fin.read(min(4 * MIB, left))
            if not block:
                raise SystemExit(f"bundle: {src} is shorter than planned")
            h.update(block)
            fout.write(block)
            left -= len(block)
    return h.hexdigest()


def clean_out(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for p in out.iterdir():
        if p.is_dir() and re.fullmatch(r"p\d\d", p.name):
            shutil.rmtree(p)
        elif p.name in ("manifest.json", "SUMMARY.txt"):
            p.unlink()


def fmt_mib(n: int) -> str:
    return f"{n / MIB:.1f} MiB"


def _build_one(job: dict[str, Any]) -> dict[str, Any]:
    """Pack one tree (runs in a worker process); return the archive's record."""
    tree, out = Path(job["tree"]), Path(job["out"])
    info = pack_tree(tree, out, job["compression"], job["preset"])
    files, unpacked = tree_stats(tree)
    info.update(files=files, unpacked_bytes=unpacked, key=job["key"])
    info["gguf"] = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*.gguf"))
    save_info(out, info)
    return info


def save_info(out: Path, info: dict[str, Any]) -> None:
    (out.parent / (out.name + ".json")).write_text(json.dumps(info, indent=1) + "\n")


def cached_archive(out: Path, key: str) -> dict[str, Any] | None:
    """The record of an archive built earlier from the same inputs, if it is intact."""
    meta = out.parent / (out.name + ".json")
    if not (out.is_file() and meta.is_file()):
        return None
    info: dict[str, Any] = json.loads(meta.read_text())
    if info.get("key") != key or info.get("bytes") != out.stat().st_size:
        return None
    if sha256_file(out) != info.get("sha256"):
        return None
    return info


def archive_key(
    art: str, wheels: list[Path], strip: dict[str, list[str]], compression: str, preset: int
) -> str:
    blob = json.dumps(
        {
            "format": FORMAT_VERSION,
            "artefact": art,
            "wheels": [(w.name, w.stat().st_size) for w in wheels],
            "strip": strip if art == STRIP_FROM or art in STRIP_TO else [],
            "compression": compression,
            "preset": preset if compression == "xz" else None,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--tier",
        choices=("a", "b", "c"),
        default="c",
        help="build up to this tier: a (torch path), b (+ vLLM stripped), c (+ the rest)",
    )
    ap.add_argument("--out", type=Path, default=REPO / ".devcarry", help="pieces go here")
    ap.add_argument(
        "--cache",
        type=Path,
        default=Path.home() / ".cache" / "verihive-devcarry" / "wheels",
        help="wheel cache (kept between runs)",
    )
    ap.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/verihive-devcarry-work"),
        help="scratch: installed trees, and whole archives reused by the next run",
    )
    ap.add_argument(
        "--find-links", type=Path, action="append", default=[], help="extra wheel folder for pip"
    )
    ap.add_argument("--preset", type=int, default=DEFAULT_PRESET, help="xz preset (0-9)")
    ap.add_argument(
        "--model-compression",
        choices=sorted(SUFFIX),
        default=DEFAULT_COMPRESSION["model"],
        help="how the GGUF is packed (default gz)",
    )
    ap.add_argument(
        "--piece-mib",
        type=float,
        default=PIECE_BYTES / MIB,
        help="piece size limit in MiB (default 58: a call carries 64 MiB, the repo included)",
    )
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compressors")
    ap.add_argument("--rebuild", action="store_true", help="ignore archives of earlier runs")
    ap.add_argument(
        "--time-decompress",
        action="store_true",
        help="also time each archive's decompression here (one core, after packing)",
    )
    ap.add_argument("--manifest", type=Path, default=MANIFEST_TXT)
    args = ap.parse_args(argv)

    wanted = TIERS[args.tier]
    piece_bytes = int(args.piece_mib * MIB)
    t_start = time.perf_counter()
    man = parse_manifest(args.manifest)

    reqs = [r for a in wanted if a in man.wheels for r in man.wheels[a]]
    wheels = download(reqs, args.cache, args.find_links)
    art_wheels = {a: [wheels[r] for r in man.wheels.get(a, [])] for a in wanted}
    for art in STRIP_TO:
        art_wheels[art] = art_wheels.get(STRIP_FROM, [])

    archives = args.work / "archives"
    archives.mkdir(parents=True, exist_ok=True)
    compression = {a: "xz" for a in wanted}
    compression["model"] = args.model_compression
    outs = {a: archives / f"{a}.{SUFFIX[compression[a]]}" for a in wanted}
    keys = {
        a: archive_key(a, art_wheels[a], man.strip, compression[a], args.preset) for a in wanted
    }
    infos: dict[str, dict[str, Any]] = {}
    if not args.rebuild:
        for a in wanted:
            info = cached_archive(outs[a], keys[a])
            if info is not None:
                infos[a] = info
                print(f"bundle: {a}: reusing {outs[a]}", flush=True)
    todo = [a for a in wanted if a not in infos]
    installs = [a for a in todo if a not in STRIP_TO]
    if any(a in STRIP_TO for a in todo) and STRIP_FROM not in installs:
        installs.append(STRIP_FROM)  # the stripped files come out of vllm's tree

    trees: dict[str, Path] = {}
    for art in installs:
        tree = args.work / "tree" / art
        print(f"bundle: installing {art} ({len(art_wheels[art])} wheel(s))", flush=True)
        install_tree(art_wheels[art], tree)
        trees[art] = tree
    if STRIP_FROM in trees:
        for art in STRIP_TO:  # always all of them: the vllm tree must lose every stripped file
            trees[art] = args.work / "tree" / art
            apply_strip(trees[STRIP_FROM], trees[art], man.strip.get(art, []))

    jobs = [
        {
            "tree": str(trees[a]),
            "out": str(outs[a]),
            "compression": compression[a],
            "preset": args.preset,
            "key": keys[a],
        }
        for a in todo
        if a in wanted
    ]
    jobs.sort(key=lambda j: -tree_stats(Path(j["tree"]))[1])  # biggest first keeps cores busy
    if jobs:
        print(f"bundle: packing {len(jobs)} archive(s), xz preset {args.preset}", flush=True)
        with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = {pool.submit(_build_one, j): j for j in jobs}
            for fut in concurrent.futures.as_completed(futures):
                name = Path(futures[fut]["out"]).name
                info = fut.result()
                infos[name.split(".")[0]] = info
                print(f"bundle:   {name}: {fmt_mib(info['bytes'])} in {info['compress_s']:.0f} s")

    if args.time_decompress:  # one archive at a time, after packing: one core, no contention
        for a in wanted:
            if "decompress_s_here" not in infos[a]:
                infos[a]["decompress_s_here"] = time_decompress(outs[a])
                save_info(outs[a], infos[a])
                print(f"bundle:   {a}: unpacks in {infos[a]['decompress_s_here']:.1f} s here")

    plan = plan_chunks([(a, infos[a]["bytes"]) for a in wanted], piece_bytes, SUFFIX, compression)
    clean_out(args.out)
    artefacts: list[dict[str, Any]] = []
    pieces: dict[str, list[str]] = {}
    for art in wanted:
        info = infos[art]
        for chunk in plan[art]:
            pdir = args.out / chunk["piece"]
            pdir.mkdir(exist_ok=True)
            chunk["sha256"] = copy_range(
                outs[art], pdir / chunk["file"], chunk["offset"], chunk["bytes"]
            )
            pieces.setdefault(chunk["piece"], []).append(chunk["file"])
        entry: dict[str, Any] = {
            "name": art,
            "format": SUFFIX[compression[art]],
            "bytes": info["bytes"],
            "sha256": info["sha256"],
            "unpacked_bytes": info["unpacked_bytes"],
            "files": info["files"],
            "compress_s_here": round(info["compress_s"], 1),
            "chunks": plan[art],
        }
        if "decompress_s_here" in info:
            entry["decompress_s_here"] = round(info["decompress_s_here"], 2)
        if art in man.wheels:
            entry["wheels"] = [{"file": w.name, "bytes": w.stat().st_size} for w in art_wheels[art]]
        if art in STRIP_TO:
            entry["stripped_from"] = STRIP_FROM
            entry["strip"] = man.strip.get(art, [])
        if info.get("gguf"):
            entry["gguf"] = info["gguf"]
        artefacts.append(entry)

    ids = "".join(a["sha256"] for a in artefacts).encode()
    manifest: dict[str, Any] = {
        "format": 1,
        "bundle_id": hashlib.sha256(ids).hexdigest()[:16],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": PYTHON_VERSION,
        "xz_preset": args.preset,
        "piece_limit_bytes": piece_bytes,
        "reassemble": REASSEMBLE,
        "tiers": {t: list(arts) for t, arts in TIERS.items() if set(arts) <= set(wanted)},
        "tier_text": {t: TIER_TEXT[t] for t, arts in TIERS.items() if set(arts) <= set(wanted)},
        "pieces": dict(sorted(pieces.items())),
        "artefacts": artefacts,
    }
    text = json.dumps(manifest, indent=1) + "\n"
    if len(text.encode()) > MANIFEST_RESERVE:
        raise SystemExit("bundle: manifest.json outgrew the room kept for it")
    (args.out / "manifest.json").write_text(text)
    for piece in pieces:
        (args.out / piece / "manifest.json").write_text(text)
        total = sum(p.stat().st_size for p in (args.out / piece).iterdir())
        if total > piece_bytes:
            raise SystemExit(f"bundle: {piece} is {total} bytes, over {piece_bytes}")

    summary = summarize(manifest, args.out)
    summary += f"\nbuilt in {time.perf_counter() - t_start:.0f} s\n"
    (args.out / "SUMMARY.txt").write_text(summary)
    print(summary, end="")
    return 0


def summarize(manifest: dict[str, Any], out: Path) -> str:
    lines = [f"bundle {manifest['bundle_id']}  ({out})", ""]
    lines.append(
        f"{'artefact':11s} {'wheels':>7s} {'wheel MiB':>9s} {'unpacked':>10s} "
        f"{'packed':>9s} {'ratio':>6s} {'pack s':>6s} {'unpack s':>8s}  pieces"
    )
    for a in manifest["artefacts"]:
        wheels = a.get("wheels", [])
        wbytes = sum(w["bytes"] for w in wheels)
        pcs = sorted({c["piece"] for c in a["chunks"]})
        un = a.get("decompress_s_here")
        unpacked = a["unpacked_bytes"]
        lines.append(
            f"{a['name']:11s} {len(wheels):7d} {wbytes / MIB:9.1f} {unpacked / MIB:10.1f} "
            f"{a['bytes'] / MIB:9.1f} {a['bytes'] / max(1, a['unpacked_bytes']):6.3f} "
            f"{a['compress_s_here']:6.0f} {'' if un is None else f'{un:8.1f}':>8s}  "
            f"{','.join(pcs)}"
        )
    lines.append("")
    for piece, files in manifest["pieces"].items():
        size = sum((out / piece / f).stat().st_size for f in files)
        lines.append(f"{piece}: {size / MIB:5.1f} MiB  {' '.join(files)}")
    lines.append("")
    for tier, arts in manifest["tiers"].items():
        needed = sorted(
            {c["piece"] for a in manifest["artefacts"] if a["name"] in arts for c in a["chunks"]}
        )
        size = sum(a["bytes"] for a in manifest["artefacts"] if a["name"] in arts)
        lines.append(
            f"tier {tier} ({manifest['tier_text'][tier]}): {len(needed)} call(s) "
            f"{needed[0]}..{needed[-1]}, {size / MIB:.1f} MiB compressed"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
