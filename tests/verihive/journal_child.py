"""A node process for the restart tests: the test network's executor or one of its verifiers,
with a journal, serving on loopback until killed. [NODE.1]

    python -m tests.verihive.journal_child executor JOURNAL [--no-execute]
    python -m tests.verihive.journal_child verifier JOURNAL [--validator N] [--no-verify]

It prints the port it serves on as one line on standard output once it serves.

``--no-execute`` / ``--no-verify``: the restarted node must answer from its journal; computing
anew raises (so a test sees that it did not).
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from bft.errors import Unavailable
from tests.support import ADMITTED, get_network
from verihive.journal import Journal
from verihive.rpc import MAX_OPEN_MESSAGE_BYTES, add_bounded_servicer, make_server
from verihive.services import ExecutorService, VerifierService


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=("executor", "verifier"))
    p.add_argument("journal", type=Path)
    p.add_argument("--no-execute", action="store_true")
    p.add_argument("--no-verify", action="store_true")
    p.add_argument("--validator", type=int, default=0, help="which validator's key to serve")
    args = p.parse_args()
    net = get_network()
    journal = Journal(args.journal)
    server = make_server(max_message_bytes=MAX_OPEN_MESSAGE_BYTES)
    if args.role == "executor":
        core = net.executor
        if args.no_execute:

            def refuse(*_args: object) -> None:
                raise Unavailable("this process must answer from its journal")

            core.execute_fresh = refuse  # type: ignore[method-assign,assignment]
        service = ExecutorService(core, journal=journal, admitted=ADMITTED)
        add_bounded_servicer(service, server, "verihive.v1.Executor")
    else:
        verifier = net.verifiers[net.validators[args.validator]]
        if args.no_verify:

            def refuse_run(*_args: object) -> None:
                raise Unavailable("this process must answer from its journal")

            verifier.run = refuse_run  # type: ignore[method-assign,assignment]
        service = VerifierService(
            verifier, net.backend.info.name, journal=journal, admitted=ADMITTED
        )
        add_bounded_servicer(service, server, "verihive.v1.Verifier")
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)  # the parent reads it: serving from now on
    sys.stdout.close()
    threading.Event().wait()


if __name__ == "__main__":
    main()
