"""An embedded network on loopback: 1 assembler, executors and verifiers, real gRPC.

Nodes share the read-only model weights in memory and nothing else: each has its own key and
its own gRPC server on 127.0.0.1, and all a node learns of another comes over gRPC.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc

from bft.assembler import AssemblerPolicy
from bft.crypto import SigningKey
from bft.measure import Thresholds
from bft.thresholds import load_thresholds
from bft.validators import make_genesis
from bft.verifier import VerifierCore
from executor.backend import DTYPES, Backend, BatchingBackend, TorchBackend
from executor.batching import ExecutionBatcher
from executor.core import DEFAULT_CHUNK_SIZE, ExecutorCore
from executor.model import LoadedModel
from verihive.assembler import AssemblerNode, AssemblerService, fetch_peer
from verihive.rpc import MAX_OPEN_MESSAGE_BYTES, add_bounded_servicer, make_server
from verihive.services import VERIFIER_WORKERS, ExecutorService, VerifierService

log = logging.getLogger(__name__)

DEFAULT_NETWORK_ID = "verihive-local"


@dataclass(frozen=True)
class LocalNetConfig:
    """Shape of the embedded network; ``policy.f``: tolerated faulty verifiers (committee 3f+1)."""

    policy: AssemblerPolicy = field(default_factory=lambda: AssemblerPolicy(DEFAULT_NETWORK_ID))
    """What the assembler binds into every request; its ``network_id`` is every node's."""
    num_executors: int = 2
    num_verifiers: int = 4
    chunk_size: int = DEFAULT_CHUNK_SIZE
    thresholds: Thresholds = field(default_factory=load_thresholds)
    executor_backend: str = "torch"
    """``torch`` or ``vllm`` (a CUDA GPU with vLLM, [EXEC.7])."""
    executor_device: str = "cpu"
    executor_dtype: str = "float32"
    """The executors' compute dtype; their profile must be admitted by the verifiers."""


ExecutorFault = Callable[[SigningKey, LoadedModel, LocalNetConfig], ExecutorCore]
"""Build executor 0 with the given key in place of an honest one."""
VerifierFault = Callable[[VerifierCore], tuple[VerifierCore, ...]]
"""Return the cores served under verifier 0's key, given its honest core: one liar, or the
honest core and a lying twin (two servers, one key)."""


@dataclass(frozen=True)
class Faults:
    """Byzantine nodes a driver puts into the network; ``None``: that node is honest.

    This module knows no byzantine modes: the fault libraries (``simnet.localnet.local_faults``
    for the CLI's ``--byzantine-*`` flags and the tests) build these.
    """

    executor: ExecutorFault | None = None
    verifier: VerifierFault | None = None


NO_FAULTS = Faults()


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
    loaded: LoadedModel,
    config: LocalNetConfig,
    exec_backend: Backend | None = None,
    faults: Faults = NO_FAULTS,
) -> Iterator[LocalNetwork]:
    """Start the network for ``loaded``; the byzantine executor, if any, is tried first.

    ``exec_backend``: the honest executors' backend if already built
    (:func:`make_executor_backend`, which it defaults to). ``faults``: executor 0 and verifier 0
    as a fault library builds them.
    """
    policy, network_id = config.policy, config.policy.network_id
    if config.num_verifiers < 3 * policy.f + 1:
        raise ValueError(f"f={policy.f} needs at least {3 * policy.f + 1} verifiers")
    backend = TorchBackend(loaded.model)  # the verifiers': torch-cpu-float32
    if exec_backend is None:
        exec_backend = make_executor_backend(loaded, config)
    check_admitted(exec_backend, config.thresholds)
    servers: list[grpc.Server] = []
    verifier_services: list[VerifierService] = []
    executor_services: list[ExecutorService] = []
    assembler_key = SigningKey.generate()
    admitted = frozenset({assembler_key.public_key})  # [ADMIT.1]
    try:
        executor_addresses = []
        for i in range(config.num_executors):
            key = SigningKey.generate()
            if i == 0 and faults.executor is not None:
                core = faults.executor(key, loaded, config)
            else:
                core = ExecutorCore(
                    key, exec_backend, loaded.model_id, network_id, config.chunk_size
                )
            server = make_server()
            batcher = None
            if core.backend is exec_backend and isinstance(exec_backend, BatchingBackend):
                batcher = ExecutionBatcher(core)  # concurrent requests, one GPU batch [EXEC.8]
            executor_service = ExecutorService(core, batcher, admitted=admitted)
            executor_services.append(executor_service)
            add_bounded_servicer(executor_service, server, "verihive.v1.Executor")
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
                network_id,
                config.thresholds,
            )
            cores: tuple[VerifierCore, ...] = (vcore,)
            if i == 0 and faults.verifier is not None:
                cores = faults.verifier(vcore)
            for vc in cores:
                service = VerifierService(vc, backend.info.name, admitted=admitted)
                server = make_server(VERIFIER_WORKERS, MAX_OPEN_MESSAGE_BYTES)
                add_bounded_servicer(service, server, "verihive.v1.Verifier")
                servers.append(server)
                verifier_services.append(service)
                verifier_addresses.append(_serve(server))
        executors = [
            fetch_peer(a, "executor", loaded.model_id, network_id)
            for a in executor_addresses
        ]
        verifiers = [
            fetch_peer(a, "verifier", loaded.model_id, network_id)
            for a in verifier_addresses
        ]
        node = AssemblerNode(
            assembler_key,
            policy,
            loaded.model_id,
            loaded.tokenizer,
            executors,
            verifiers,
            make_genesis(network_id, verifier_keys),
        )
        server = make_server(max_workers=4)
        add_bounded_servicer(AssemblerService(node), server, "verihive.v1.Assembler")
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
