#!/usr/bin/env bash
# The snapshot of the RustSec advisory database that `cargo deny` reads in CI, committed as
# ci/advisory-db.tar.gz (CI cannot reach GitHub at run time).
#
#   scripts/advisory-db.sh --unpack   unpacks the snapshot where cargo deny looks for its
#                                     databases ($CARGO_HOME/advisory-dbs), unless the same
#                                     snapshot is there already (what .ci/run does)
#   scripts/advisory-db.sh [SOURCE]   makes a new snapshot from SOURCE, a git URL or a local
#                                     clone of https://github.com/rustsec/advisory-db (default:
#                                     that URL), and checks the advisories against it; review
#                                     and commit ci/advisory-db.tar.gz
#
# The snapshot is unpacked outside the repository on purpose: cargo deny without --offline
# "updates" its database with git, and in a directory inside this repository git would find
# the repository around it and cargo deny would hard-reset it.
set -euo pipefail
cd "$(dirname "$0")/.."

tarball=ci/advisory-db.tar.gz
# The directory name cargo deny derives from db-urls in deny.toml ("advisory-db-" + a hash
# of the URL); cargo deny names it in its error when it is missing.
name=advisory-db-3157b0e258782691
dbs="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"

unpack() {
  local want have
  want=$(tar -xzOf "$tarball" "$name/SNAPSHOT" | grep '^commit:')
  have=$(grep '^commit:' "$dbs/$name/SNAPSHOT" 2>/dev/null || true)
  if [ "$want" != "$have" ]; then
    rm -rf "${dbs:?}/$name"
    mkdir -p "$dbs"
    tar -xzf "$tarball" -C "$dbs"
    # cargo deny reads the database's age from its git HEAD, so the snapshot becomes a
    # one-commit repository of its own, dated as the upstream commit.
    local date
    date=$(grep '^commit date:' "$dbs/$name/SNAPSHOT" | cut -d' ' -f3)
    git -C "$dbs/$name" init --quiet
    git -C "$dbs/$name" add --all
    GIT_AUTHOR_DATE=$date GIT_COMMITTER_DATE=$date \
      git -C "$dbs/$name" -c user.name=imcrypt -c user.email=ci@imcrypt.invalid \
      commit --quiet --no-gpg-sign -m "RustSec advisory database snapshot ($want)"
  fi
  echo "advisory database: $want ($dbs/$name)"
}

if [ "${1:-}" = --unpack ]; then
  unpack
  exit
fi

source=${1:-https://github.com/rustsec/advisory-db}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ -d "$source" ]; then
  git clone --quiet --depth 1 "file://$(cd "$source" && pwd)" "$tmp/db"
else
  git clone --quiet --depth 1 "$source" "$tmp/db"
fi
commit=$(git -C "$tmp/db" log -1 --format=%H)
date=$(git -C "$tmp/db" log -1 --format=%cI)

mkdir -p "$tmp/out/$name"
cp -r "$tmp/db/crates" "$tmp/db/LICENSE.txt" "$tmp/db/LICENSES" "$tmp/out/$name/"
[ -d "$tmp/db/rust" ] && cp -r "$tmp/db/rust" "$tmp/out/$name/"
cat >"$tmp/out/$name/SNAPSHOT" <<EOT
source: https://github.com/rustsec/advisory-db
commit: $commit
commit date: $date
copied: $(date -u +%Y-%m-%dT%H:%M:%SZ) by scripts/advisory-db.sh
licence: CC0-1.0, advisories imported from GHSA CC-BY-4.0 (see LICENSE.txt)
EOT
# Reproducible: the same snapshot gives the same bytes.
tar -C "$tmp/out" --sort=name --mtime="$date" --owner=0 --group=0 --numeric-owner -cf - "$name" \
  | gzip -9n >"$tarball"
echo "snapshot of $commit ($date) in $tarball"
unpack
cargo fetch --locked
cargo deny --locked --offline check advisories
