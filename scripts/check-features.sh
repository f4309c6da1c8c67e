#!/usr/bin/env bash
# Every published crate builds on its own: with its default features, with each feature alone,
# and with all of them. `cargo check` per crate and feature set (no codegen, so it is cheap).
set -euo pipefail
cd "$(dirname "$0")/.."

check() { # crate [cargo flags…]
  local crate=$1; shift
  echo "cargo check -p $crate $*"
  cargo check --quiet -p "$crate" "$@"
}

for crate in courier-core courier-nats courier-kafka courier-outbox courier courier-cli; do
  check "$crate"
  check "$crate" --all-features
  features=$(cargo metadata --no-deps --format-version 1 |
    python3 -c "import json,sys; m=json.load(sys.stdin); p=[p for p in m['packages'] if p['name']=='$crate'][0]; print(' '.join(f for f in p['features'] if f != 'default'))")
  for feature in $features; do
    check "$crate" --no-default-features --features "$feature"
  done
done
