#!/usr/bin/env bash
# Fails when keel/symbol-order.txt no longer names the static keel's functions (renamed by a
# code or dependency change), which would silently bring back the resident code it saves
# (see keel/build.rs). Usage: scripts/check-symbol-order.sh [KEEL_BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
keel=${1:-target/x86_64-unknown-linux-musl/release/keel}
listed=$(wc -l < keel/symbol-order.txt)
present=$(nm --defined-only "$keel" | awk '{print $NF}' | sort -u \
  | comm -12 - <(sort -u keel/symbol-order.txt) | wc -l)
percent=$(( present * 100 / listed ))
echo "symbol order: $present of $listed functions in keel/symbol-order.txt are in $keel ($percent%)"
if [ "$percent" -lt 90 ]; then
  echo "keel/symbol-order.txt is stale: run scripts/keel-symbol-order.sh and commit it" >&2
  exit 1
fi
