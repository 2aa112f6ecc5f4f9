#!/usr/bin/env bash
# The test suite: unit tests, then integration tests with real processes on 127.0.0.1.
# PostgreSQL tests use TENSORGRID_TEST_PG (default: postgresql://postgres@127.0.0.1:5432/test).
# Tests run on TENSORGRID_TEST_WORKERS pytest-xdist workers (default 3: the integration tests
# mostly wait on their processes, so more workers than cores pay; at 3 on 2 cores the suite kept
# the CPU about 60% busy, but 4 and 5 are not yet proven: see the notes); 0 runs them in this process.
# 4 measured again on the shared 2-core machine: 1193 s against 949-955 s at 3, the CPU 100% busy
# whenever sampled (other work took 0.5-0.7 cores), so there a fourth worker only adds contention.
# Extra arguments go to pytest; an explicit -n/--numprocesses, -p no:xdist or --pdb wins.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$ROOT"
# tests/unit/test_deploy.py checks the systemd units with systemd-analyze, which Debian ships in
# its systemd package: a container may lack it. Installed here when we can (root and apt-get);
# otherwise those checks skip and say why.
if ! command -v systemd-analyze >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "[test] installing systemd-analyze (apt-get install systemd)" >&2
  apt-get install -y -q --no-install-recommends systemd >&2 ||
    echo "[test] could not install systemd: the unit checks will skip" >&2
fi
# tests/integration/test_dashboard.py drives Debian's Chromium with Playwright (whose own browser
# download is unreachable here): installed the same way. Without it that test fails and says how
# to install it (or TENSORGRID_SKIP_BROWSER=1 to skip it on purpose).
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "[test] installing chromium (apt-get install chromium) for the dashboard's browser test" >&2
  apt-get install -y -q --no-install-recommends chromium >&2 ||
    echo "[test] could not install chromium: the dashboard's browser test will fail" >&2
fi
# torch's OpenMP threads sleep when idle rather than spin (tests/conftest.py sets the same when
# pytest is run directly): the suite keeps more processes busy than there are cores, and
# spinning threads then burn CPU the others need (a torch test file measured 25% less CPU).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
parallel=(-n "${TENSORGRID_TEST_WORKERS:-3}" --dist loadgroup)
prev=""
for arg in "$@"; do
  case "$arg" in
    -n | -n* | --numprocesses | --numprocesses=* | --pdb | --trace) parallel=() ;;
    no:xdist) [ "$prev" = "-p" ] && parallel=() ;;
  esac
  prev="$arg"
done
# --durations: the slowest tests are listed at the end of every run (where the suite's time goes).
exec python -m pytest "${parallel[@]}" --durations=40 "$@"
