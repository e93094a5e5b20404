#!/usr/bin/env bash
# Install Debian packages a test needs (as root, non-interactive), e.g. tools/ci/debian.sh prometheus
# for promtool. Tests call it when the tool is missing and skip, saying why, when it fails.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then echo "debian.sh: needs root to apt-get install $*" >&2; exit 1; fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "$@" >/dev/null
