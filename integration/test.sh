#!/usr/bin/env bash
# The whole test suite: prepare Docker and the fixture image, then run every test, the
# end-to-end ones on the real engine included. Tests that need Docker fail without it; none skip.
set -euo pipefail
cd "$(dirname "$0")/.."
bash integration/setup.sh >/dev/null
# Containers a killed earlier run left behind would be counted as this run's leaks; clear them first.
stale=$(docker ps -aq --filter label=docker-worker.managed)
if [ -n "$stale" ]; then
    echo "test.sh: removing containers an interrupted earlier run left: $stale" >&2
    docker rm -f $stale >/dev/null
fi
cargo test --workspace --all-targets "$@"
leftover=$(docker ps -aq --filter label=docker-worker.managed)
if [ -n "$leftover" ]; then
    echo "test.sh: the tests left containers behind:" >&2
    docker ps -a --filter label=docker-worker.managed >&2
    exit 1
fi
