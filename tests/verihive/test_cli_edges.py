"""The command line's edges: one line on stderr and a clear exit status, never a traceback.
[CLI.1]"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bft.errors import Malformed
from bft.limits import MAX_TOKENS
from verihive import cli, nodecli
from verihive.assembler import MAX_PROMPT_CHARS
from verihive.entry import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_PIPE, Main, command

BAD_BYTES = b"bad \xff\xfe bytes"
BAD = os.fsdecode(BAD_BYTES)
"""Invalid UTF-8 as Python hands it to a command in ``sys.argv`` (undecodable bytes escaped)."""
LONG = "x" * (MAX_PROMPT_CHARS + 1)
NOWHERE = "127.0.0.1:1"
"""An address nothing listens at: a call to it fails at once."""

MAINS: dict[str, Main] = {
    "bft-infer": cli.infer_main,
    "bft-verify": cli.verify_main,
    "bft-executor": nodecli.executor_main,
    "bft-assembler": nodecli.assembler_main,
    "bft-testnet": nodecli.testnet_main,
}


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


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (FileNotFoundError(2, "No such file or directory", "/no/such"), "error: /no/such: No such"),
        (ConnectionRefusedError(111, "Connection refused"), "error: Connection refused"),
        (Malformed("a field\nout of range"), "error: a field out of range"),
    ],
)
def test_invalid_files_and_input_reaching_the_top_are_one_line(capsys, error, line):
    @command
    def main(argv: list[str] | None = None) -> int:
        raise error

    assert main([]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith(line) and err.count("\n") == 1


# --- every bad argument: one line (or argparse's usage and one error line), exit 2


@pytest.fixture
def places(tmp_path: Path) -> dict[str, str]:
    """Return paths to substitute for ``{name}`` in a case's arguments."""
    (tmp_path / "dir").mkdir()
    (tmp_path / "garbage").write_bytes(b"\x00\xff\xfe garbage\n")
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "json").write_text('{"a": 1}\n')
    (tmp_path / "hexbad").write_text("zz\n")
    for name, content in (("addrbad", b"nope\n"), ("addrgarbage", b"\xff\xfe")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "address").write_bytes(content)
    places = {p.name: str(p) for p in tmp_path.iterdir()}
    places |= {"missing": str(tmp_path / "missing"), "new": str(tmp_path / "new")}
    places["badpath"] = str(tmp_path / BAD)
    places["tmp"] = str(tmp_path)
    return places


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a model loads or an embedded network starts."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model loaded before the arguments were checked")

    import executor.model
    import verihive.localnet

    for name in ("load_tiny", "load_smollm2"):
        monkeypatch.setattr(executor.model, name, refuse)
    monkeypatch.setattr(verihive.localnet, "start_local_network", refuse)


def _run(capsys, prog: str, args: list[str], places: dict[str, str]) -> tuple[int, str, str]:
    """Run ``prog`` in this process on ``args`` (``{name}`` replaced from ``places``); return
    the exit status, stdout and stderr."""
    argv = [a.format(**places) for a in args]
    capsys.readouterr()
    try:
        code = MAINS[prog](argv)
    except SystemExit as exc:  # argparse's own exit
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error(code: int, err: str, prog: str) -> None:
    """Check ``err`` is one ``error:`` line (or argparse's usage and one error line)."""
    assert code == EXIT_ERROR, err
    assert "Traceback" not in err and "debug_error_string" not in err, err
    lines = err.splitlines()
    if lines and lines[0].startswith("usage: "):  # argparse: usage, then "prog ...: error: ..."
        errors = [line for line in lines if ": error: " in line]
        assert errors == [lines[-1]] and lines[-1].startswith(prog), err
    else:
        assert len(lines) == 1 and lines[0].startswith("error: "), err


P = "What is the capital of France?"
T = ["--model", "tiny"]

INVALID_ARGUMENTS = [
    # bft-infer: the prompt
    ("bft-infer", [*T, ""], "the prompt is empty"),
    ("bft-infer", [*T, " \n\t "], "the prompt is empty"),
    ("bft-infer", [*T, LONG], f"over the limit of {MAX_PROMPT_CHARS}"),
    ("bft-infer", [*T, BAD], "error: the prompt is not valid UTF-8"),
    ("bft-infer", ["--assembler", NOWHERE, BAD], "error: the prompt is not valid UTF-8"),
    ("bft-infer", ["--assembler", NOWHERE, LONG], "over the limit"),
    ("bft-infer", ["--assembler", NOWHERE, "  "], "the prompt is empty"),
    # bft-infer: sampling and policy numbers
    ("bft-infer", [*T, "--max-new-tokens", "0", P], "max_new_tokens"),
    ("bft-infer", [*T, "--max-new-tokens", str(10**9), P], "max_new_tokens"),
    ("bft-infer", [*T, "--max-new-tokens", "many", P], "--max-new-tokens"),
    ("bft-infer", [*T, "--temperature", "nan", P], "temperature"),
    ("bft-infer", [*T, "--temperature", "-1", P], "temperature"),
    ("bft-infer", [*T, "--temperature", "inf", P], "temperature"),
    ("bft-infer", [*T, "--top-p", "2", P], "top_p"),
    ("bft-infer", [*T, "--top-p", "0", P], "top_p"),
    ("bft-infer", [*T, "--top-k", "-1", P], "top_k"),
    ("bft-infer", [*T, "--top-k", str(10**30), P], "top_k"),
    ("bft-infer", [*T, "--executors", "0", P], "--executors"),
    ("bft-infer", [*T, "--executors", str(10**9), P], "--executors"),
    ("bft-infer", [*T, "--hedge", "0", P], "--hedge"),
    ("bft-infer", [*T, "--hedge", "-3", P], "--hedge"),
    ("bft-infer", [*T, "--layers-per-verifier", "0", P], "--layers-per-verifier"),
    ("bft-infer", [*T, "--layers-per-verifier", str(10**9), P], "--layers-per-verifier"),
    ("bft-infer", [*T, "--positions-per-verifier", "-1", P], "--positions-per-verifier"),
    ("bft-infer", [*T, "--positions-per-verifier", str(10**9), P], "--positions-per-verifier"),
    ("bft-infer", [*T, "--sequence-check", "nan", P], "--sequence-check"),
    ("bft-infer", [*T, "--model", "huge", P], "--model"),
    ("bft-infer", [*T, "--byzantine-executor", "nope", P], "--byzantine-executor"),
    # bft-infer: devices, addresses, output paths
    ("bft-infer", [*T, "--executor-device", "bogus", P], "--executor-device"),
    ("bft-infer", [*T, "--executor-device", "cuda:x", P], "--executor-device"),
    ("bft-infer", [*T, "--executor-device", BAD, P], "--executor-device"),
    ("bft-infer", [*T, "--executor-device", "cuda:99", P], "CUDA devices"),
    ("bft-infer", ["--assembler", "nope", P], "--assembler"),
    ("bft-infer", ["--assembler", "host:\u00b2", P], "--assembler"),
    ("bft-infer", ["--assembler", "host:70000", P], "--assembler"),
    ("bft-infer", ["--assembler", BAD, P], "not valid UTF-8"),
    ("bft-infer", [*T, "--receipt-out", "{dir}", P], "is a directory"),
    ("bft-infer", [*T, "--receipt-out", "{missing}/receipt.json", P], "no directory"),
    ("bft-infer", [*T, "--receipt-out", "{badpath}", P], "--receipt-out"),
    ("bft-infer", [*T, "--receipt-out", "", P], "--receipt-out"),
    ("bft-infer", [*T, "--evidence-out", "{dir}", P], "is a directory"),
    ("bft-infer", [*T, "--slashes-out", "{garbage}", P], "not a directory"),
    # bft-verify receipt: the pinned keys are an argument
    ("bft-verify", ["receipt", "{json}", "--validators", "{missing}"], "No such file"),
    ("bft-verify", ["receipt", "{json}", "--validators", "{dir}"], "Is a directory"),
    ("bft-verify", ["receipt", "{json}", "--validators", "{garbage}"], "not hex text"),
    ("bft-verify", ["receipt", "{json}", "--validators", "{hexbad}"], "not a hex key"),
    ("bft-verify", ["receipt", "{json}", "--validators", "/dev/zero"], "larger than"),
    ("bft-verify", ["receipt", "{badpath}"], "not valid UTF-8"),
    ("bft-verify", ["audit", "{garbage}", "--model", "huge"], "--model"),
    ("bft-verify", [], "command"),
    # bft-verify init, serve, status (the same for every role)
    ("bft-verify", ["init", "--home", "{garbage}"], "cannot make the home"),
    ("bft-verify", ["init", "--home", "{badpath}"], "not valid UTF-8"),
    ("bft-verify", ["init", "--home", "{new}", "--listen", "nope"], "node.listen"),
    ("bft-verify", ["init", "--home", "{new}", "--listen", "host:\u00b2"], "node.listen"),
    ("bft-verify", ["init", "--home", "{new}", "--listen", BAD], "not valid UTF-8"),
    ("bft-verify", ["init", "--home", "{new}", "--genesis", "{missing}"], "no genesis file"),
    ("bft-verify", ["init", "--home", "{new}", "--genesis", "{dir}"], "not a regular file"),
    ("bft-verify", ["init", "--home", "{new}", "--genesis", "{garbage}"], "not UTF-8"),
    ("bft-verify", ["init", "--home", "{new}", "--genesis", "{json}"], "unknown key"),
    ("bft-verify", ["serve", "--home", "{missing}"], "no config file"),
    ("bft-verify", ["serve", "--home", "{dir}"], "no config file"),
    ("bft-verify", ["serve", "--home", "{garbage}"], "Not a directory"),
    ("bft-verify", ["status"], "HOST:PORT or --home"),
    ("bft-verify", ["status", "nope"], "not a host:port"),
    ("bft-verify", ["status", "host:\u00b2"], "not a host:port"),
    ("bft-verify", ["status", BAD], "not valid UTF-8"),
    ("bft-verify", ["status", NOWHERE], "UNAVAILABLE"),
    ("bft-verify", ["status", "--home", "{missing}"], "not serving"),
    ("bft-verify", ["status", "--home", "{garbage}"], "cannot read"),
    ("bft-verify", ["status", "--home", "{addrbad}"], "not a host:port"),
    ("bft-verify", ["status", "--home", "{addrgarbage}"], "not a host:port"),
    # bft-executor and bft-assembler
    ("bft-executor", ["init", "--home", "{new}", "--assembler", "nope"], "executor.assemblers"),
    ("bft-executor", ["init", "--home", "{new}", "--assembler", BAD], "not valid UTF-8"),
    ("bft-executor", ["join", "--home", "{missing}", "--assembler", NOWHERE], "no config"),
    ("bft-executor", ["join", "--home", "{garbage}", "--assembler", NOWHERE], "Not a directory"),
    ("bft-executor", ["join", "--home", "{dir}", "--assembler", "nope"], "--assembler"),
    ("bft-executor", ["join", "--home", "{dir}", "--assembler", "host:\u00b2"], "--assembler"),
    (
        "bft-executor",
        ["join", "--home", "{dir}", "--assembler", NOWHERE, "--address", "x"],
        "--add",
    ),
    ("bft-executor", ["leave", "--home", "{missing}", "--assembler", NOWHERE], "no config"),
    ("bft-executor", ["leave", "--home", "{dir}", "--assembler", BAD], "not valid UTF-8"),
    ("bft-executor", ["status", "--home", "{addrgarbage}"], "not a host:port"),
    ("bft-executor", ["nope"], "invalid choice"),
    ("bft-assembler", ["init", "--home", "{new}", "--listen", "1.2.3.4:99999"], "node.listen"),
    ("bft-assembler", ["serve", "--home", "{missing}"], "no config file"),
    ("bft-assembler", ["status", NOWHERE, "--json"], "UNAVAILABLE"),
    # bft-testnet
    ("bft-testnet", ["init", "--out", "{new}", "--verifiers", "0"], "--verifiers"),
    ("bft-testnet", ["init", "--out", "{new}", "--verifiers", "2"], "needs at least 4"),
    ("bft-testnet", ["init", "--out", "{new}", "--verifiers", "-1"], "--verifiers"),
    ("bft-testnet", ["init", "--out", "{new}", "--verifiers", str(10**9)], "--verifiers"),
    ("bft-testnet", ["init", "--out", "{new}", "--executors", "0"], "--executors"),
    ("bft-testnet", ["init", "--out", "{new}", "--executors", str(10**9)], "--executors"),
    ("bft-testnet", ["init", "--out", "{new}", "--f", "-1"], "--f"),
    ("bft-testnet", ["init", "--out", "{new}", "--f", str(10**9)], "--f"),
    ("bft-testnet", ["init", "--out", "{new}", "--network-id", ""], "--network-id"),
    ("bft-testnet", ["init", "--out", "{new}", "--network-id", BAD], "not valid UTF-8"),
    ("bft-testnet", ["init", "--out", "{new}", "--network-id", "x" * 257], "--network-id"),
    ("bft-testnet", ["init", "--out", "{garbage}", "--model", "tiny"], "Not a directory"),
    ("bft-testnet", ["init", "--out", "{tmp}", "--model", "tiny"], "not empty"),
    ("bft-testnet", ["init", "--out", "{badpath}"], "not valid UTF-8"),
    ("bft-testnet", ["up", "{missing}"], "No such file"),
    ("bft-testnet", ["up", "{garbage}"], "Not a directory"),
    ("bft-testnet", ["up", "{dir}"], "no genesis file"),
    ("bft-testnet", ["up", "{dir}", "--timeout", "nan"], "--timeout"),
    ("bft-testnet", ["up", "{dir}", "--timeout", "-1"], "--timeout"),
    ("bft-testnet", ["up", "{dir}", "--timeout", "0"], "--timeout"),
    ("bft-testnet", ["up", "{dir}", "--timeout", "1e300"], "--timeout"),
    ("bft-testnet", ["down", "{missing}"], "not a testnet"),
    ("bft-testnet", ["down", "{garbage}"], "not a testnet"),
    ("bft-testnet", ["down", "{dir}"], "not a testnet"),
]


@pytest.mark.parametrize(
    ("prog", "args", "says"),
    INVALID_ARGUMENTS,
    ids=[f"{prog}-{i}" for i, (prog, _, _) in enumerate(INVALID_ARGUMENTS)],
)
def test_invalid_argument_is_one_line_before_any_model_loads(
    capsys, places, no_model, prog, args, says
):
    code, _, err = _run(capsys, prog, args, places)
    assert_one_error(code, err, prog)
    assert says in err


VERDICTS = [
    # the offline checks print their verdict line on stdout ([RECEIPT.3], [EVID.4], [SLASH.1])
    (["receipt", "{missing}"], 2, "invalid: cannot read"),
    (["receipt", "{dir}"], 2, "invalid: cannot read"),
    (["receipt", "{garbage}"], 1, "invalid: receipt is not valid receipt JSON"),
    (["receipt", "{empty}"], 1, "invalid: receipt is not valid receipt JSON"),
    (["receipt", "{json}"], 1, "invalid: receipt is not valid receipt JSON"),
    (["receipt", "/dev/zero"], 2, "invalid: zero is larger than"),
    (["audit", "{missing}"], 2, "malformed: cannot read"),
    (["audit", "{dir}"], 2, "malformed: cannot read"),
    (["audit", "{garbage}"], 2, "malformed: not a verihive.v1.Evidence"),
    (["audit", "{empty}"], 2, "malformed:"),
    (["audit", "/dev/zero"], 2, "malformed: zero is larger than"),
    (["slash", "{missing}"], 2, "malformed: cannot read"),
    (["slash", "{dir}"], 2, "malformed: cannot read"),
    (["slash", "{garbage}"], 2, "malformed: not a verihive.v1.SlashProof"),
    (["slash", "{empty}"], 2, "malformed:"),
]


@pytest.mark.parametrize(("args", "status", "says"), VERDICTS)
def test_invalid_file_of_an_offline_check_is_one_verdict_line(
    capsys, places, no_model, args, status, says
):
    code, out, err = _run(capsys, "bft-verify", args, places)
    assert code == status
    assert err == ""
    assert out.startswith(says) and out.count("\n") == 1, out


def test_invalid_prompt_for_the_tokenizer_is_the_networks_one_line(capsys, places):
    # Only the tokenizer can tell the prompt plus --max-new-tokens is over MAX_TOKENS: the
    # embedded network refuses it, and the refusal is one line, not a gRPC dump.
    args = [*T, "--max-new-tokens", str(MAX_TOKENS), P]
    code, _, err = _run(capsys, "bft-infer", args, places)
    assert_one_error(code, err, "bft-infer")
    assert err.startswith("error: the network refused the request: INVALID_ARGUMENT")


# --- the two findings of the issue, as a user meets them: real argv bytes, a real process


def _bft_infer(*args: str | bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "verihive.cli", *args],
        capture_output=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def _assert_one_line(proc: subprocess.CompletedProcess[bytes], line: bytes) -> None:
    assert b"Traceback" not in proc.stderr and b"debug_error_string" not in proc.stderr
    assert proc.stderr == line + b"\n"
    assert proc.returncode == EXIT_ERROR
    assert proc.stdout == b""


def test_invalid_prompt_over_the_limit_is_one_line():
    proc = _bft_infer("--model", "tiny", "x" * 70_000)
    line = f"error: the prompt is 70000 characters, over the limit of {MAX_PROMPT_CHARS}"
    _assert_one_line(proc, line.encode())


@pytest.mark.parametrize("where", [["--model", "tiny"], ["--assembler", NOWHERE]])
def test_invalid_utf8_prompt_is_one_line(where: list[str]):
    proc = _bft_infer(*where, BAD_BYTES)
    _assert_one_line(proc, b"error: the prompt is not valid UTF-8")


def test_invalid_utf8_path_is_refused_by_the_parser(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "verihive.nodecli", "serve", "--home", bytes(tmp_path) + b"/\xff"],
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == EXIT_ERROR and b"Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        b"verihive.nodecli serve: error: argument --home: not valid UTF-8"
    )
