#!/usr/bin/env bash
# Creates .venv with the pinned packages, the runtime's (requirements.lock) and the development
# tools' (requirements-dev.lock): once, and again only when either lock or pyproject.toml changes.
# Installs TensorGrid into it in editable mode. Sourced by deploy/demo.sh and deploy/test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TENSORGRID_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[bootstrap] creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.tensorgrid-lock"
LOCKS=("$ROOT/requirements.lock" "$ROOT/requirements-dev.lock")
WANT="$(sha256sum "${LOCKS[@]}" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "[bootstrap] installing pinned packages (first run takes a minute or two)" >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "${LOCKS[0]}" -r "${LOCKS[1]}"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e "$ROOT"
  echo "$WANT" > "$STAMP"
fi
# Contracts toolchain (solcjs, anvil, OpenZeppelin) from contracts/package-lock.json: again only
# when the lock file changes (its hash is stamped inside node_modules).
NPM_STAMP="$ROOT/contracts/node_modules/.tensorgrid-lock"
NPM_WANT="$(sha256sum "$ROOT/contracts/package-lock.json" | cut -d' ' -f1)"
if [ ! -d "$ROOT/contracts/node_modules" ] || [ "$(cat "$NPM_STAMP" 2>/dev/null)" != "$NPM_WANT" ]; then
  echo "[bootstrap] installing contract tools (npm ci in contracts/)" >&2
  # --prefer-offline: packages already in npm's cache (integrity-checked against the lock) are not
  # revalidated with the registry one request at a time; measured 12 s instead of 18-28 s here.
  npm ci --prefix "$ROOT/contracts" --no-audit --no-fund --prefer-offline >&2
  echo "$NPM_WANT" > "$NPM_STAMP"
fi
# The Node.js client test's packages (@grpc/grpc-js, ethers) from tests/js/package-lock.json, the same way.
JS_STAMP="$ROOT/tests/js/node_modules/.tensorgrid-lock"
JS_WANT="$(sha256sum "$ROOT/tests/js/package-lock.json" | cut -d' ' -f1)"
if [ ! -d "$ROOT/tests/js/node_modules" ] || [ "$(cat "$JS_STAMP" 2>/dev/null)" != "$JS_WANT" ]; then
  echo "[bootstrap] installing the JS client test's packages (npm ci in tests/js/)" >&2
  npm ci --prefix "$ROOT/tests/js" --no-audit --no-fund --prefer-offline >&2
  echo "$JS_WANT" > "$JS_STAMP"
fi
export PATH="$VENV/bin:$PATH"
