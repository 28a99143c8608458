#!/usr/bin/env bash
# The kill campaign of docs/reliability.md: builds the release binary and the driver
# (examples/torture.rs), then kills daemons of a 3-cluster network KILLS times (default 1000)
# and prints the counts. Exit status 0 only if nothing was lost, stuck or wrongly applied.
#   scripts/torture.sh [KILLS] [driver options: --seed N, --dir DIR, --verify-every N, ...]
# Long: run it under `nice -n 19` on a shared machine. Needs the openssl CLI.
set -euo pipefail
cd "$(dirname "$0")/.."
kills=${1:-1000}
shift || true
command -v openssl >/dev/null || { echo "torture.sh: the openssl CLI is needed" >&2; exit 2; }
cargo build --locked --release --bin imcrypt --example torture
target=${CARGO_TARGET_DIR:-target}
exec "$target/release/examples/torture" "$kills" --bin "$target/release/imcrypt" "$@"
