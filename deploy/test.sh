#!/usr/bin/env bash
# The test suite: unit tests, then integration tests with real processes on 127.0.0.1.
# PostgreSQL tests use TENSORGRID_TEST_PG (default: postgresql://postgres@127.0.0.1:5432/test).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$ROOT"
exec python -m pytest "$@"
