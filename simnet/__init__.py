"""Fault libraries: byzantine executors and verifiers for the drivers of the protocol cores.

- :mod:`simnet.executors`: named ways for an executor to lie (``--byzantine-executor``);
- :mod:`simnet.verifiers`: named ways for a verifier to vote falsely (``--byzantine-verifier``);
- :mod:`simnet.localnet`: both as :class:`verihive.localnet.Faults` for the embedded network.

Tests, benchmarks and the CLI's ``--byzantine-*`` flags import this package; nothing in the
protocol packages or the node shells does (docs/architecture.md). The deterministic scheduler,
scenarios, invariants and the chaos driver come with issue [simnet].
"""
