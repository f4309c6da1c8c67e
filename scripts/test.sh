#!/usr/bin/env bash
# Runs every test of the workspace against real services: ensures they are up, then nextest, then
# the doc tests (nextest does not run them; they hold the README's and every rustdoc example).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_all
cargo nextest run --workspace --all-features --no-fail-fast "$@"
cargo test --doc --workspace --all-features
