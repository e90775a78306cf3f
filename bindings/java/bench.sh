#!/usr/bin/env bash
# Java beside Rust and the C ABI, in one run: the same placement and VM work through
# `cargo bench -p benches --bench capi` (Rust, and libkeel through dlopen) and through the Java
# binding (dev.keel.bench.Bench, JNA), then one table.
#
#   bindings/java/bench.sh [VM_RUNS]      # default 20 VM runs per variant
#
# The Rust bench builds libkeel (profile capi) and the test guest; the Java bench then uses that
# same libkeel. Java runs after Rust (not interleaved), on the same machine, in the same minute.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
runs=${1:-20}
cd "$root"
out=$root/target/bench-java
mkdir -p "$out"

echo "-- Rust and C ABI: cargo bench -p benches --bench capi -- $runs"
cargo bench --quiet -p benches --bench capi -- "$runs" | tee "$out/rust.txt"
ln -sf libkeel.so target/capi/libkeel.so.0
guest=${KEEL_TEST_GUEST:-$root/target/guest/x86_64-unknown-none/release/keel-test-guest}

echo "-- Java: dev.keel.bench.Bench (JNA on $(java -version 2>&1 | head -1))"
(
  cd bindings/java
  mvn -q -B -Dstyle.color=never test-compile
  # exec:exec starts a plain JVM (not Maven's) with the test classpath.
  mvn -q -B -Dstyle.color=never org.codehaus.mojo:exec-maven-plugin:3.6.2:exec -Dexec.executable=java \
    -Dexec.classpathScope=test \
    -Dexec.args="-Dkeel.library.path=$root/target/capi -cp %classpath dev.keel.bench.Bench $guest $runs"
) | tee "$out/java.txt"

# The numbers, from both outputs.
ns() { awk -v pat="$1" 'index($0, pat) { for (i = 1; i <= NF; i++) if ($i == "ns/call") print $(i-1) }' "$out/rust.txt"; }
ms() { awk -v pat="$1" -v key="$2" 'index($0, pat) == 3 { for (i = 1; i <= NF; i++) if ($i == key) { print $(i+1); exit } }' "$out/rust.txt"; }
java() { sed 's/\x1b\[[0-9;]*m//g' "$out/java.txt" | awk -v key="$1" '$1 == key { print $2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

rust_ready=$(ns "request ready-made") rust_json=$(ns "parsing the same JSON") c_abi=$(ns "C ABI (JSON request)")
java_place=$(java java_placement_ns)
rust_min=$(ms "Rust " min) rust_med=$(ms "Rust " median) c_min=$(ms "C ABI " min) c_med=$(ms "C ABI " median)
jcb_min=$(java java_vm_callback_min_ms) jcb_med=$(java java_vm_callback_median_ms)
jfd_min=$(java java_vm_devnull_min_ms) jfd_med=$(java java_vm_devnull_median_ms)
for value in "$rust_ready" "$rust_json" "$c_abi" "$java_place" "$rust_min" "$c_min" "$jcb_min" "$jfd_min"; do
  [ -n "$value" ] || { echo "bench.sh: a number is missing from $out/rust.txt or $out/java.txt" >&2; exit 1; }
done

echo
echo "== side by side"
echo "placement: decide + commit + release on 200 hosts, per call (median of 5 rounds of 20,000)"
printf '  %-34s %8s ns   %s\n' "Rust, request ready-made" "$rust_ready" "1.00"
printf '  %-34s %8s ns   %s\n' "Rust, parsing the same JSON" "$rust_json" "$(ratio "$rust_json" "$rust_ready")"
printf '  %-34s %8s ns   %s\n' "C ABI (JSON request)" "$c_abi" "$(ratio "$c_abi" "$rust_ready")"
printf '  %-34s %8s ns   %s   (Java / C ABI %s)\n' "Java (JNA, JSON request)" "$java_place" "$(ratio "$java_place" "$rust_ready")" "$(ratio "$java_place" "$c_abi")"
echo "VM: test guest, config -> start -> reset exit -> freed, 1 vCPU, 128 MiB ($runs runs each)"
printf '  %-34s %8s %10s   %s\n' "" "min ms" "median ms" "median / Rust"
printf '  %-34s %8s %10s   %s\n' "Rust (console to a sink)" "$rust_min" "$rust_med" "1.00"
printf '  %-34s %8s %10s   %s\n' "C ABI (C console callback)" "$c_min" "$c_med" "$(ratio "$c_med" "$rust_med")"
printf '  %-34s %8s %10s   %s\n' "Java (Java console callback)" "$jcb_min" "$jcb_med" "$(ratio "$jcb_med" "$rust_med")"
printf '  %-34s %8s %10s   %s\n' "Java (console on /dev/null)" "$jfd_min" "$jfd_med" "$(ratio "$jfd_med" "$rust_med")"
