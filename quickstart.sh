#!/usr/bin/env bash
# All-in-one quick start (what exists so far): back up a directory into a fresh store twice,
# list, verify, restore, and let stock rsync confirm the restore equals the source.
#   ./quickstart.sh [DIR]      (default: /etc; work files go to ./turku-quickstart/)
set -euo pipefail
src=${1:-/etc}
here=$(cd "$(dirname "$0")" && pwd)
work="$here/turku-quickstart"
command -v rsync >/dev/null || { apt-get update -qq && apt-get install -y -qq rsync; }
cargo build --release -q -p turku-storage --manifest-path "$here/Cargo.toml"
bin="${CARGO_TARGET_DIR:-$here/target}/release/turku-storage"
rm -rf "$work"
export TURKU_STORE="$work/store"
"$bin" init
echo "== first backup of $src"
"$bin" ingest --machine quickstart --source demo "$src"
echo "== second backup (unchanged files are not read)"
"$bin" ingest --machine quickstart --source demo "$src"
"$bin" snapshots
"$bin" verify
"$bin" stats
"$bin" export --machine quickstart --source demo --to "$work/restore"
echo "== differences between $src and the restore, as stock rsync sees them (none expected):"
rsync -ani --checksum -H --numeric-ids "$src/" "$work/restore/"
echo "== done; store in $work/store, restore in $work/restore"
