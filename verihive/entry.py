"""What every command-line entry point does at its edges: a reader that goes away (``| head``,
``| grep -q``) ends the command quietly, as it ends ``cat``; Ctrl-C ends it with one line, not a
traceback. [CLI.1]"""

from __future__ import annotations

import functools
import os
import sys
from typing import Protocol


class Main(Protocol):
    """A command's main function: arguments (``None``: ``sys.argv``) to exit status."""

    def __call__(self, argv: list[str] | None = None) -> int: ...


EXIT_PIPE = 141
"""Exit status of a command whose reader went away (128 + SIGPIPE, as shells report it)."""
EXIT_INTERRUPTED = 130
"""Exit status of a command stopped by Ctrl-C (128 + SIGINT)."""


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

    return run
