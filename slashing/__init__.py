"""Slash and penalty records that anyone re-checks offline ([SLASH.1], [SLASH.2]).

What a node does with a checked record (tombstones, penalties, the next validator set) lives in
:mod:`trust`.
"""
