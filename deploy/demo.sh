#!/usr/bin/env bash
# The demo: a coordinator and two nodes on 127.0.0.1 run grid inference over real data.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
exec tensorgrid demo "$@"
