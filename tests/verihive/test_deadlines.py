"""A committee member that answers too late, over real gRPC on loopback (tiny model). [ASM.7]

The assembler's attempt machine closes the votes when its deadline passes ([ASM.7], [RPC.2]):
the late member's vote does not count and is not waited for, and the three honest ACCEPTs
certify (q = 2f+1 = 3 of n = 4, [ASM.4]; liveness with one slow member, [GUAR.3]).
"""

from __future__ import annotations

from bft.assembler import Outcome
from bft.attempt import Deadlines
from bft.messages import SamplingParams, Verdict
from bft.verifier import VerifierCore
from executor.model import LoadedModel
from simnet.verifiers import LateVerifier
from verihive.localnet import Faults, LocalNetConfig, start_local_network

VOTES_S = 10.0
"""The assembler's deadline for the votes: ample for the tiny model's honest members."""


def test_late_member_is_not_waited_for(tiny: LoadedModel) -> None:
    late: list[LateVerifier] = []

    def make_late(honest: VerifierCore) -> tuple[VerifierCore, ...]:
        late.append(LateVerifier.of(honest))
        return (late[0],)

    config = LocalNetConfig(num_executors=1)
    with start_local_network(tiny, config, faults=Faults(verifier=make_late)) as net:
        try:
            net.assembler.deadlines = Deadlines(execute_s=300.0, verify_s=VOTES_S)
            _text, attempts = net.assembler.infer("Hello?", SamplingParams(max_new_tokens=4))
            (a,) = attempts
            assert a.outcome is Outcome.CERTIFIED, a.reason
            assert a.tally is not None and len(a.tally.committee) == 4
            voters = {v.verifier_key for v in a.votes}
            assert late[0].key.public_key not in voters and len(voters) == 3
            assert all(v.verdict is Verdict.ACCEPT for v in a.votes)
            assert not late[0].released.is_set()  # answered without it
        finally:
            late[0].release()
