#!/usr/bin/env bash
# Runs every test of the workspace against real services: ensures they are up, then nextest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_all
cargo nextest run --workspace --all-features --no-fail-fast "$@"
