"""An embedded network on loopback: 1 assembler, executors and verifiers, real gRPC.

Nodes share the read-only model weights in memory and nothing else: each has its own key and
its own gRPC server on 127.0.0.1, and all a node learns of another comes over gRPC.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc

from bft.assembler import DEFAULT_SEQUENCE_CHECK_PPM, AssemblerPolicy
from bft.byzantine import make_byzantine_verifier
from bft.crypto import SigningKey
from bft.measure import Thresholds
from bft.thresholds import load_thresholds
from bft.validators import make_genesis
from bft.verifier import VerifierCore
from executor.backend import DTYPES, Backend, BatchingBackend, TorchBackend
from executor.batching import ExecutionBatcher
from executor.byzantine import make_byzantine_executor
from executor.core import DEFAULT_CHUNK_SIZE, ExecutorCore
from executor.model import LoadedModel
from proto import verihive_pb2_grpc as pb_grpc
from verihive.assembler import AssemblerNode, AssemblerService, fetch_peer
from verihive.rpc import MAX_OPEN_MESSAGE_BYTES, make_server
from verihive.services import ExecutorService, VerifierService

log = logging.getLogger(__name__)

DEFAULT_NETWORK_ID = "verihive-local"


@dataclass(frozen=True)
class LocalNetConfig:
    """Shape of the embedded network. ``f``: tolerated faulty verifiers (committee 3f+1)."""

    num_executors: int = 2
    num_verifiers: int = 4
    f: int = 1
    layers_per_verifier: int = 2
    positions_per_verifier: int = 4
    sequence_check_ppm: int = DEFAULT_SEQUENCE_CHECK_PPM
    hedge: int = 1
    hedge_verify_all: bool = False
    chunk_size: int = DEFAULT_CHUNK_SIZE
    byzantine_executor: str | None = None
    byzantine_verifier: str | None = None
    """Mode of ``bft.byzantine`` for verifier 0 (``double-vote``: an honest verifier plus a
    lying twin server with the same key)."""
    network_id: str = DEFAULT_NETWORK_ID
    thresholds: Thresholds = field(default_factory=load_thresholds)
    executor_backend: str = "torch"
    """``torch`` or ``vllm`` (a CUDA GPU with vLLM, [EXEC.7])."""
    executor_device: str = "cpu"
    executor_dtype: str = "float32"
    """The executors' compute dtype; their profile must be admitted by the verifiers."""


def make_executor_backend(loaded: LoadedModel, config: LocalNetConfig) -> Backend:
    """Return the honest executors' backend; refuse a profile the verifiers do not admit."""
    dtype = DTYPES[config.executor_dtype]
    backend: Backend
    if config.executor_backend == "vllm":
        from executor.model import get_smollm2_dir
        from executor.vllm_backend import VllmBackend

        if not loaded.name.startswith("SmolLM2"):
            raise ValueError("the vLLM backend serves the SmolLM2 model files only")
        backend = VllmBackend(get_smollm2_dir(), loaded.model, dtype=dtype)
    elif config.executor_backend == "torch":
        backend = TorchBackend(loaded.model, device=config.executor_device, dtype=dtype)
    else:
        raise ValueError(f"unknown executor backend {config.executor_backend!r}")
    check_admitted(backend, config.thresholds)
    return backend


def check_admitted(backend: Backend, thresholds: Thresholds) -> None:
    """Raise ``ValueError`` unless the verifiers' table admits ``backend``'s profile. [EXEC.5]"""
    profile = backend.info.profile
    if profile not in thresholds.profiles:
        admitted = ", ".join(thresholds.profiles)
        raise ValueError(f"executor profile {profile} is not admitted (admitted: {admitted})")


@dataclass
class LocalNetwork:
    """Handles of a running embedded network."""

    assembler_address: str
    executor_addresses: list[str]
    verifier_addresses: list[str]
    servers: list[grpc.Server]
    assembler: AssemblerNode
    verifier_services: list[VerifierService]
    executor_services: list[ExecutorService] = field(default_factory=list)

    def close(self, grace: float = 1.0) -> None:
        """Stop every server and release channels."""
        self.assembler.close()
        for s in self.verifier_services:
            s.close()
        for server in self.servers:
            server.stop(grace).wait()
        for e in self.executor_services:
            e.close()


def _serve(server: grpc.Server) -> str:
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return f"127.0.0.1:{port}"


@contextmanager
def start_local_network(
    loaded: LoadedModel, config: LocalNetConfig, exec_backend: Backend | None = None
) -> Iterator[LocalNetwork]:
    """Start the network for ``loaded``; the byzantine executor, if any, is tried first.

    ``exec_backend``: the honest executors' backend if already built
    (:func:`make_executor_backend`, which it defaults to).
    """
    if config.num_verifiers < 3 * config.f + 1:
        raise ValueError(f"f={config.f} needs at least {3 * config.f + 1} verifiers")
    backend = TorchBackend(loaded.model)  # the verifiers': torch-cpu-float32
    if exec_backend is None:
        exec_backend = make_executor_backend(loaded, config)
    check_admitted(exec_backend, config.thresholds)
    servers: list[grpc.Server] = []
    verifier_services: list[VerifierService] = []
    executor_services: list[ExecutorService] = []
    try:
        executor_addresses = []
        for i in range(config.num_executors):
            key = SigningKey.generate()
            if i == 0 and config.byzantine_executor:
                core = make_byzantine_executor(
                    config.byzantine_executor,
                    key,
                    loaded.model,
                    loaded.model_id,
                    config.network_id,
                    config.chunk_size,
                    device=config.executor_device,
                    dtype=DTYPES[config.executor_dtype],
                )
            else:
                core = ExecutorCore(
                    key, exec_backend, loaded.model_id, config.network_id, config.chunk_size
                )
            server = make_server()
            batcher = None
            if core.backend is exec_backend and isinstance(exec_backend, BatchingBackend):
                batcher = ExecutionBatcher(core)  # concurrent requests, one GPU batch [EXEC.8]
            executor_service = ExecutorService(core, batcher)
            executor_services.append(executor_service)
            pb_grpc.add_ExecutorServicer_to_server(executor_service, server)
            servers.append(server)
            executor_addresses.append(_serve(server))
        verifier_addresses = []
        verifier_keys = [SigningKey.generate() for _ in range(config.num_verifiers)]
        for i, vkey in enumerate(verifier_keys):
            vcore = VerifierCore(
                vkey,
                backend,
                loaded.model_id,
                backend.info.num_layers,
                backend.info.hidden_size,
                config.network_id,
                config.thresholds,
            )
            cores = [vcore]
            if i == 0 and config.byzantine_verifier == "double-vote":
                cores.append(make_byzantine_verifier("always-reject", vcore))  # the twin
            elif i == 0 and config.byzantine_verifier:
                cores = [make_byzantine_verifier(config.byzantine_verifier, vcore)]
            for vc in cores:
                service = VerifierService(vc, backend.info.name)
                server = make_server(max_message_bytes=MAX_OPEN_MESSAGE_BYTES)
                pb_grpc.add_VerifierServicer_to_server(service, server)
                servers.append(server)
                verifier_services.append(service)
                verifier_addresses.append(_serve(server))
        executors = [
            fetch_peer(a, "executor", loaded.model_id, config.network_id)
            for a in executor_addresses
        ]
        verifiers = [
            fetch_peer(a, "verifier", loaded.model_id, config.network_id)
            for a in verifier_addresses
        ]
        policy = AssemblerPolicy(
            network_id=config.network_id,
            f=config.f,
            layers_per_verifier=config.layers_per_verifier,
            positions_per_verifier=config.positions_per_verifier,
            sequence_check_ppm=config.sequence_check_ppm,
            hedge=config.hedge,
            hedge_verify_all=config.hedge_verify_all,
        )
        node = AssemblerNode(
            SigningKey.generate(),
            policy,
            loaded.model_id,
            loaded.tokenizer,
            executors,
            verifiers,
            make_genesis(config.network_id, verifier_keys),
        )
        server = make_server(max_workers=4)
        pb_grpc.add_AssemblerServicer_to_server(AssemblerService(node), server)
        servers.append(server)
        net = LocalNetwork(
            _serve(server),
            executor_addresses,
            verifier_addresses,
            servers,
            node,
            verifier_services,
            executor_services,
        )
    except BaseException:
        for s in servers:
            s.stop(0)
        for e in executor_services:
            e.close()
        raise
    try:
        yield net
    finally:
        net.close()
