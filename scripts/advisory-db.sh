#!/usr/bin/env bash
# Refreshes the vendored snapshot of the RustSec advisory database that `cargo deny` reads in
# CI (ci/advisory-db/; CI cannot reach GitHub at run time, so the snapshot is committed).
#
#   scripts/advisory-db.sh [SOURCE]
#
# SOURCE is a git URL or a local clone of https://github.com/rustsec/advisory-db (default: that
# URL). Copies the advisories (crates/), the licence files and the upstream commit into the
# directory cargo deny expects, writes SNAPSHOT (commit, commit date, source), and runs
# `cargo deny check advisories` against it. Review and commit the result.
#
# Always `--offline`: without it cargo deny "updates" the snapshot with git, finds this
# repository around it and hard-resets it (uncommitted changes are lost).
set -euo pipefail
cd "$(dirname "$0")/.."

source=${1:-https://github.com/rustsec/advisory-db}
# The directory name cargo deny derives from db-urls in deny.toml ("advisory-db-" + a hash of
# the URL); cargo deny names it in its error when it is missing.
dest=ci/advisory-db/advisory-db-3157b0e258782691

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ -d "$source" ]; then
  git clone --quiet --depth 1 "file://$(cd "$source" && pwd)" "$tmp/db"
else
  git clone --quiet --depth 1 "$source" "$tmp/db"
fi
commit=$(git -C "$tmp/db" log -1 --format=%H)
date=$(git -C "$tmp/db" log -1 --format=%cI)

rm -rf "$dest"
mkdir -p "$dest"
cp -r "$tmp/db/crates" "$tmp/db/LICENSE.txt" "$tmp/db/LICENSES" "$dest/"
[ -d "$tmp/db/rust" ] && cp -r "$tmp/db/rust" "$dest/"
cat >"$dest/SNAPSHOT" <<EOT
source: https://github.com/rustsec/advisory-db
commit: $commit
commit date: $date
copied: $(date -u +%Y-%m-%dT%H:%M:%SZ) by scripts/advisory-db.sh
licence: CC0-1.0, advisories imported from GHSA CC-BY-4.0 (see LICENSE.txt)
EOT
echo "snapshot of $commit ($date) in $dest"
cargo fetch --locked
cargo deny --locked --offline check advisories
