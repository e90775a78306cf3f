#!/usr/bin/env bash
# Proves the README's first command works on a fresh machine: the pinned toolchain installed
# but without the x86_64-unknown-none target (rustup does not add a toolchain file's `targets`
# to a toolchain that is already there).
#
# It builds a scratch RUSTUP_HOME whose copy of the pinned toolchain lacks the none and musl
# targets (big files hard-linked, rustup's metadata copied so nothing in the real home
# changes), then, with that home:
#   1. KEEL_NO_TARGET_INSTALL=1 cargo run --release --example boot
#      must fail before booting, printing the exact `rustup target add` command;
#   2. cargo run --release --example boot   (README command 1, as a new user types it)
#      must install the target itself, say so on stderr, boot the test guest and exit 0.
# Needs network access to the Rust distribution server (as `rustup target add` does) and
# /dev/kvm for step 2. Usage: scripts/check-fresh-toolchain.sh
set -euo pipefail
cd "$(dirname "$0")/.."

real_home=${RUSTUP_HOME:-$HOME/.rustup}
toolchain=$(rustup show active-toolchain | awk '{print $1}')
sysroot=$(rustc --print sysroot)
scratch=$(mktemp -d /tmp/keel-fresh-rustup.XXXXXX)
trap 'rm -rf "$scratch"' EXIT

mkdir -p "$scratch/toolchains" "$scratch/tmp" "$scratch/downloads"
cp "$real_home/settings.toml" "$scratch/"
dest="$scratch/toolchains/$toolchain"
cp -al "$sysroot/." "$dest/"
# rustup rewrites these when it adds a component: give the copy its own files, not links.
for f in "$dest"/lib/rustlib/*; do
  if [ -f "$f" ]; then
    rm "$f"
    cp "$sysroot/lib/rustlib/$(basename "$f")" "$f"
  fi
done
for target in x86_64-unknown-none x86_64-unknown-linux-musl; do
  rm -rf "$dest/lib/rustlib/$target" "$dest/lib/rustlib/manifest-rust-std-$target"
  sed -i "/^rust-std-$target\$/d" "$dest/lib/rustlib/components"
done
# rustup's own record of the installed components: drop the two targets' entries.
python3 - "$dest/lib/rustlib/multirust-config.toml" <<'PY'
import re, sys
path = sys.argv[1]
text = open(path).read()
blocks = re.split(r"(?=\[\[components\]\])", text)
keep = [b for b in blocks
        if not re.search(r'target = "x86_64-unknown-(none|linux-musl)"', b)]
open(path, "w").write("".join(keep))
PY

export RUSTUP_HOME=$scratch
installed=$(rustup target list --installed)
if grep -q x86_64-unknown-none <<<"$installed"; then
  echo "check-fresh-toolchain: the scratch toolchain still has x86_64-unknown-none" >&2
  exit 1
fi
echo "scratch toolchain $toolchain has: $installed"

echo "-- 1. with KEEL_NO_TARGET_INSTALL=1: must fail and name the command"
if KEEL_NO_TARGET_INSTALL=1 cargo run --release --quiet --example boot >"$scratch/no-install.log" 2>&1; then
  cat "$scratch/no-install.log"
  echo "check-fresh-toolchain: the demo succeeded without the target" >&2
  exit 1
fi
cat "$scratch/no-install.log"
grep -q "rustup target add x86_64-unknown-none" "$scratch/no-install.log" || {
  echo "check-fresh-toolchain: the error does not name the command to run" >&2
  exit 1
}

echo "-- 2. README command 1: must install the target and boot"
cargo run --release --quiet --example boot 2>&1 | tee "$scratch/demo.log"
grep -q "running \`rustup target add x86_64-unknown-none\`" "$scratch/demo.log" || {
  echo "check-fresh-toolchain: the demo did not say it installed the target" >&2
  exit 1
}
grep -q "keel-guest: selfcheck ok" "$scratch/demo.log" || {
  echo "check-fresh-toolchain: the test guest did not run" >&2
  exit 1
}
rustup target list --installed | grep -q x86_64-unknown-none
echo "check-fresh-toolchain: ok"
