#!/usr/bin/env bash
# Re-runs the challenge-sensitive tests under torch's other CPU kernels. (style rule 14a)
#
# A verifier's challenge is seeded by its signature over the commitment digest, so it hangs on
# the float bits of the tiny model's hidden states, and those differ between torch's CPU kernel
# variants (AVX512, AVX2, the portable "default" ones). The tests below derive what should
# happen from the actual challenges; running them under each variant this CPU has, besides the
# one torch picks (the plain `./dev test` run), proves that they do.
#
#   tools/ci/kernels.sh [pytest args]    from anywhere; uses the repository's .venv
#
# Runs ATEN_CPU_CAPABILITY=default always, and ATEN_CPU_CAPABILITY=avx2 when the CPU has AVX2.
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
    tests/executor/test_byzantine.py
    tests/executor/test_core.py
    tests/slashing
)

capabilities=(default)
if grep -qw avx2 /proc/cpuinfo 2>/dev/null; then
    capabilities+=(avx2)
fi
for capability in "${capabilities[@]}"; do
    echo "kernels: ATEN_CPU_CAPABILITY=$capability" >&2
    # torch falls back silently on a name it does not know: check that it took this one.
    ATEN_CPU_CAPABILITY=$capability .venv/bin/python -c \
        'import sys, torch; sys.exit(torch.backends.cpu.get_cpu_capability().lower() != sys.argv[1])' \
        "$capability" || { echo "kernels: torch did not take $capability" >&2; exit 1; }
    ATEN_CPU_CAPABILITY=$capability .venv/bin/python -m pytest -m "not gpu and not multihost" \
        -p no:cacheprovider "$@" "${FILES[@]}"
done
