"""The command line's edges: one line on stderr and a clear exit status, never a traceback.
[CLI.1]"""

from __future__ import annotations

import subprocess
import sys

import pytest

from verihive.entry import EXIT_INTERRUPTED, EXIT_PIPE, command


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path):
    # `bft-testnet init --json | head -c0`: the reader is gone before the command prints.
    code = (
        "import sys; from verihive.nodecli import testnet_main; "
        "sys.exit(testnet_main(sys.argv[1:]))"
    )
    args = ["init", "--out", str(tmp_path / "net"), "--model", "tiny", "--json"]
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == EXIT_PIPE
    assert b"Traceback" not in err and b"BrokenPipeError" not in err


def test_ctrl_c_is_one_line(capsys):
    @command
    def main(argv: list[str] | None = None) -> int:
        raise KeyboardInterrupt

    assert main([]) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "interrupted\n"


@pytest.mark.parametrize("error", [ValueError, RuntimeError])
def test_other_errors_are_not_swallowed(error):
    @command
    def main(argv: list[str] | None = None) -> int:
        raise error("a bug")

    with pytest.raises(error):
        main([])
