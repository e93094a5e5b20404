"""The offences of the slashing tests, whose checked records the trust tests consume."""

from tests.slashing.conftest import (
    double_vote,
    false_accusation,
    whole_run_fraud,
    whole_run_records,
)

__all__ = ["double_vote", "false_accusation", "whole_run_fraud", "whole_run_records"]
