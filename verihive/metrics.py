"""Prometheus metrics of a node, all named ``verihive_*``, served over HTTP at ``/metrics``.
[NODE.4]

Each node process exports what its role does: the assembler its requests, attempts, certification
latency, disputes, slashes and penalties; a verifier its votes by verdict and check; an executor
its commitments and the bytes of openings it served; every node its model load time and, from
:mod:`verihive.rpc`, the errors its servers mapped to gRPC statuses.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

REQUESTS = Counter(
    "verihive_requests", "Client requests this assembler answered, by outcome", ["outcome"]
)
ATTEMPTS = Counter("verihive_attempts", "Attempts this assembler settled, by outcome", ["outcome"])
CERTIFICATION_SECONDS = Histogram(
    "verihive_certification_seconds",
    "Time from a client request to its certified answer, in seconds",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 150, 300, 900),
)
DISPUTES = Counter("verihive_disputes", "Accusations this assembler opened a dispute for")
SLASHES = Counter("verihive_slashes", "Keys this assembler slashed, by offence", ["offence"])
PENALTIES = Counter("verihive_penalties", "False accusations this assembler recorded")
VOTES = Counter(
    "verihive_votes",
    "Votes this verifier signed, by verdict and the check its evidence names",
    ["verdict", "check"],
)
EXECUTIONS = Counter("verihive_executions", "Commitments this executor answered Execute with")
OPENED_BYTES = Counter("verihive_opened_bytes", "Bytes of openings this executor served")
JOINS = Counter(
    "verihive_joins",
    "Joins and leaves this assembler answered, by outcome and why a refused one was refused",
    ["outcome", "reason"],
)
MODEL_LOAD_SECONDS = Gauge("verihive_model_load_seconds", "Time this node took to load its model")


def serve_metrics(listen: str) -> str:
    """Serve ``/metrics`` on ``listen`` (host:port, port 0: any); return the address taken."""
    host, _, port = listen.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host)
    return f"{host}:{server.server_port}"
