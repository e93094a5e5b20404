"""Preparing the model: one conversion, progress on standard error only, and progress bars
only on a terminal and never in ``--json`` modes. [MODEL.4]"""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest

SCRIPT = """
import sys
from executor.model import prepare_model, set_progress
set_progress(sys.argv[1] == "progress")
prepare_model("tiny")
"""


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except OSError:  # EIO: the other end is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "bars"), [("progress", True), ("json", False)])
def test_conversion_shows_bars_only_on_a_terminal_and_never_in_json_mode(tmp_path, mode, bars):
    env = {**os.environ, "VERIHIVE_CACHE": str(tmp_path / "cache")}
    master, terminal = pty.openpty()  # standard error is an 80-column terminal here
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", SCRIPT, mode],
            env=env,
            stdout=subprocess.PIPE,
            stderr=terminal,
        )
        os.close(terminal)
        err = _read_all(master)
        out = proc.communicate(timeout=600)[0]
    finally:
        os.close(master)
    assert proc.returncode == 0, err[-2000:]
    assert out == b""  # standard output stays for results (--json stays parseable)
    assert b"converting" in err
    assert (b"Converting and de-quantizing" in err) is bars
    (converted,) = (tmp_path / "cache").iterdir()  # one directory, renamed into place
    assert (converted / "model.safetensors").exists()


@pytest.mark.slow
def test_conversion_shows_no_bars_off_a_terminal(tmp_path):
    env = {**os.environ, "VERIHIVE_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, "progress"], env=env, capture_output=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == b"" and b"converting" in done.stderr
    assert b"Converting and de-quantizing" not in done.stderr  # a node's log file stays clean
