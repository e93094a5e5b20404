"""Byzantine modes for :mod:`verihive.localnet`'s embedded network (``bft-infer --byzantine-*``).

The embedded network knows no modes; it takes :class:`~verihive.localnet.Faults`, which
:func:`local_faults` builds from the mode names of :mod:`simnet.executors` and
:mod:`simnet.verifiers`.
"""

from __future__ import annotations

from bft.crypto import SigningKey
from bft.verifier import VerifierCore
from executor.backend import DTYPES
from executor.core import ExecutorCore
from executor.model import LoadedModel
from simnet.executors import MODES, make_byzantine_executor
from simnet.verifiers import VERIFIER_MODES, make_byzantine_verifier
from verihive.localnet import ExecutorFault, Faults, LocalNetConfig, VerifierFault


def local_faults(executor: str | None = None, verifier: str | None = None) -> Faults:
    """Return faults that make executor 0 lie as ``executor`` and verifier 0 as ``verifier``.

    ``double-vote`` serves verifier 0's key twice: the honest core and an always-reject twin.
    Raises ``ValueError`` on an unknown mode.
    """
    if executor is not None and executor not in MODES:
        raise ValueError(f"unknown byzantine mode {executor!r}; choose from {', '.join(MODES)}")
    if verifier is not None and verifier not in VERIFIER_MODES:
        raise ValueError(
            f"unknown byzantine verifier mode {verifier!r}; "
            f"choose from {', '.join(VERIFIER_MODES)}"
        )
    return Faults(
        executor=None if executor is None else _executor_fault(executor),
        verifier=None if verifier is None else _verifier_fault(verifier),
    )


def _executor_fault(mode: str) -> ExecutorFault:
    def build(key: SigningKey, loaded: LoadedModel, config: LocalNetConfig) -> ExecutorCore:
        return make_byzantine_executor(
            mode,
            key,
            loaded.model,
            loaded.model_id,
            config.policy.network_id,
            config.chunk_size,
            device=config.executor_device,
            dtype=DTYPES[config.executor_dtype],
        )

    return build


def _verifier_fault(mode: str) -> VerifierFault:
    def build(honest: VerifierCore) -> tuple[VerifierCore, ...]:
        if mode == "double-vote":
            return honest, make_byzantine_verifier("always-reject", honest)  # the twin
        return (make_byzantine_verifier(mode, honest),)

    return build
