"""What every command-line entry point does at its edges: a reader that goes away (``| head``,
``| grep -q``) ends the command quietly, as it ends ``cat``; Ctrl-C ends it with one line, not a
traceback; a file or address that fails, or input the protocol refuses, is one line ``error: ...``
on standard error and exit status 2. The argument types below refuse a bad argument before any
model loads. [CLI.1]"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from bft.errors import ProtocolError


class Main(Protocol):
    """A command's main function: arguments (``None``: ``sys.argv``) to exit status."""

    def __call__(self, argv: list[str] | None = None) -> int: ...


EXIT_PIPE = 141
"""Exit status of a command whose reader went away (128 + SIGPIPE, as shells report it)."""
EXIT_INTERRUPTED = 130
"""Exit status of a command stopped by Ctrl-C (128 + SIGINT)."""
EXIT_ERROR = 2
"""Exit status of a command given a bad argument, file or answer."""


def command(main: Main) -> Main:
    """Return ``main`` with the edges above handled."""

    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except BrokenPipeError:
            # Whatever is still buffered for stdout would raise again at exit: point it nowhere.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return EXIT_PIPE
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except OSError as exc:  # a file, directory or socket this machine refused
            return report(compute_os_error_line(exc))
        except ProtocolError as exc:  # input the protocol refuses: a file's content, an answer
            return report(str(exc))

    return run


def report(message: str) -> int:
    """Print ``message`` as one ``error:`` line on standard error; return :data:`EXIT_ERROR`."""
    print(f"error: {one_line(message)}", file=sys.stderr)
    return EXIT_ERROR


def one_line(text: str) -> str:
    """Return ``text`` with every run of whitespace, newlines included, as one space."""
    return " ".join(text.split())


def compute_os_error_line(exc: OSError) -> str:
    """Return ``exc`` as ``PATH: why`` (``why`` alone where no file is named)."""
    why = exc.strerror or str(exc)
    return f"{os.fsdecode(exc.filename)}: {why}" if exc.filename is not None else why


def is_utf8(text: str) -> bool:
    """Return whether ``text`` (an argument: undecodable bytes come as lone surrogates) is
    valid UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def utf8_text(text: str) -> str:
    """``type=`` of a text argument: ``text`` if valid UTF-8."""
    if not is_utf8(text):
        raise argparse.ArgumentTypeError("not valid UTF-8")
    return text


def utf8_path(text: str) -> Path:
    """``type=`` of a path argument: ``text`` as a path, if non-empty and valid UTF-8."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path")
    return Path(utf8_text(text))


def host_port(text: str) -> str:
    """``type=`` of a ``HOST:PORT`` argument (port 1..65535)."""
    from verihive.rpc import check_address

    port = text.rpartition(":")[2]
    if not utf8_text(text).isascii() or not (port.isascii() and port.isdigit()):
        raise argparse.ArgumentTypeError(f"not a host:port address: {text[:64]!r}")
    try:
        return check_address(text)
    except ProtocolError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def int_in(low: int, high: int) -> Callable[[str], int]:
    """Return the ``type=`` of an integer argument in ``[low, high]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text[:64]!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text[:64]} is not in [{low}, {high}]")
        return value

    return parse


def seconds(text: str) -> float:
    """``type=`` of a duration argument: a finite number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text[:64]!r}") from None
    if not (math.isfinite(value) and 0.0 < value <= 365 * 86400):
        raise argparse.ArgumentTypeError(f"{text[:64]} is not a number of seconds in (0, 1 year]")
    return value
