#!/usr/bin/env bash
# Regenerates keel/symbol-order.txt: the functions the static keel program runs, in order of
# first call, which keel/build.rs hands to lld so that they sit together in .text (most of a
# small VMM's resident memory is its own code; see keel/build.rs).
#
# Records three runs of the release musl keel under valgrind's callgrind:
#   1. start-up with Keel's seccomp filters compiled (valgrind refuses seccomp(2), so this run
#      ends there, after the compile);
#   2. the test guest booted to its power-off, filters off (as 1 otherwise);
#   3. a VM with an API socket, a disk and an entropy device, driven by `keel remote`.
# Then relinks keel and prints its peak RSS before and after. Needs valgrind and KVM; run it
# after changes to keel's start-up path or its dependencies (a stale file only costs memory).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind > /dev/null || { echo "keel-symbol-order: needs valgrind" >&2; exit 1; }
target=x86_64-unknown-linux-musl
keel=target/$target/release/keel
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cargo build -q --release --target "$target" -p keel --bin keel
(cd guest && cargo build -q --release --target-dir ../target/guest)
guest=target/guest/x86_64-unknown-none/release/keel-test-guest
rss() { /usr/bin/time -f %M "$keel" --kernel "$guest" --cpus boot=1 --memory size=128M 2>&1 > /dev/null | tail -n 1; }
before=$(rss)

grind() { valgrind --tool=callgrind --demangle=no --callgrind-out-file="$work/$1.out" "${@:2}" > /dev/null 2>&1 || true; }
grind seccomp "$keel" --kernel "$guest" --cpus boot=1 --memory size=128M
grind boot "$keel" --kernel "$guest" --cpus boot=1 --memory size=128M --no-seccomp
truncate -s 1M "$work/disk.img"
grind api "$keel" --kernel "$guest" --cpus boot=1 --memory size=128M --no-seccomp --rng \
  --disk "path=$work/disk.img" --api-socket "$work/api.sock" \
  --cmdline "keel.cpus=1 keel.ticks=0 keel.tick_tsc=2000000 keel.power_button" &
grinding=$!
for _ in $(seq 600); do [ -S "$work/api.sock" ] && break; sleep 0.1; done
for action in ping info counters metrics pause resume power-button; do
  "$keel" remote --api-socket "$work/api.sock" "$action" > /dev/null || true
  sleep 0.5
done
"$keel" remote --api-socket "$work/api.sock" shutdown-vmm > /dev/null 2>&1 || true
wait "$grinding" || true

# Function names in order of first appearance, run by run; callgrind marks recursion
# contexts with a '<n> suffix.
sed -n 's/^c\{0,1\}fn=([0-9]*) \(_.*\)$/\1/p' "$work/seccomp.out" "$work/boot.out" "$work/api.out" \
  | sed "s/'[0-9]*\$//" | awk '!seen[$0]++' > keel/symbol-order.txt
echo "keel-symbol-order: $(wc -l < keel/symbol-order.txt) functions in keel/symbol-order.txt"
cargo build -q --release --target "$target" -p keel --bin keel
echo "keel-symbol-order: peak RSS of a test-guest boot: ${before} KiB before, $(rss) KiB after"
