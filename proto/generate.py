"""Regenerate the Python code for ``proto/verihive.proto``. Run: ``./dev python -m proto.generate``.

The output is committed; ``tests/proto/test_generated.py`` checks that regenerating with the
pinned grpcio-tools and mypy-protobuf gives identical files.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTPUTS = ("verihive_pb2.py", "verihive_pb2.pyi", "verihive_pb2_grpc.py", "verihive_pb2_grpc.pyi")


def generate(out_root: Path) -> list[Path]:
    """Run protoc for ``proto/verihive.proto`` with output under ``out_root``; return the files."""
    from grpc_tools import protoc  # dev dependency only

    (out_root / "proto").mkdir(parents=True, exist_ok=True)
    bindir = Path(sys.executable).parent
    args = [
        "protoc",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"-I{ROOT}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        str(ROOT / "proto" / "verihive.proto"),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    return [out_root / "proto" / name for name in OUTPUTS]


if __name__ == "__main__":
    for path in generate(ROOT):
        print(path.relative_to(ROOT))
    sys.exit(0)
