#!/usr/bin/env bash
# Re-runs the challenge-sensitive tests under torch's other CPU kernels. (style rule 14a)
#
# A verifier's challenge is seeded by its signature over the commitment digest, so it hangs on
# the float bits of the tiny model's hidden states, and those differ between CPU kernel sets
# (bench/kernels.py: ATen, MKL and oneDNN capped at AVX512, AVX2 or the portable "default"). The tests below derive what should
# happen from the actual challenges; running them under each variant this CPU has, besides the
# one torch picks (the plain `./dev test` run), proves that they do.
#
#   tools/ci/kernels.sh [pytest args]    from anywhere; uses the repository's .venv
#
# On an AVX512 CPU: the avx2 and default sets; on an AVX2 CPU: default; elsewhere: none.
set -euo pipefail
cd "$(dirname "$0")/../.."

# The one list of challenge-sensitive tests: outcomes that depend on which layers, positions
# or sketch check a verifier's challenge draws, or on which request a search finds.
FILES=(
    tests/bft/test_bft_stateful.py
    tests/bft/test_challenge.py
    tests/bft/test_confirmation.py
    tests/bft/test_evidence.py
    tests/bft/test_quorum.py
    tests/bft/test_sequence_check.py
    tests/bft/test_verifier.py
    tests/simnet/test_executors.py
    tests/executor/test_core.py
    tests/slashing
    tests/trust
)

# The kernel sets this CPU offers, widest first (bench/kernels.py, [CAL.3]): the widest is the
# one torch picks by itself, which the plain run already covered.
read -r -a sets <<< "$(.venv/bin/python -m bench.kernels sets)"
for set in "${sets[@]:1}"; do
    mapfile -t kernel_env < <(.venv/bin/python -m bench.kernels env "$set")
    echo "kernels: $set (${kernel_env[*]})" >&2
    # torch falls back silently on a name it does not know: check that it took this one.
    env "${kernel_env[@]}" .venv/bin/python -m bench.kernels "$set" check ||
        { echo "kernels: torch did not take $set" >&2; exit 1; }
    env "${kernel_env[@]}" .venv/bin/python -m pytest -m "not gpu and not multihost" \
        -p no:cacheprovider "$@" "${FILES[@]}"
done
