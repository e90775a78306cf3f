#!/usr/bin/env bash
# Java beside Rust and the C ABI, in one run: the same placement and VM work through
# `cargo bench -p benches --bench capi` (Rust, and libkeel through dlopen) and through the Java
# binding (dev.keel.Bench, JNA), then one table.
#
#   bindings/java/bench.sh [VM_RUNS [ROUNDS]]   # default 20 VM runs per variant, 3 rounds
#
# Each round runs the Rust bench, then the Java one; the table shows the median of the rounds'
# figures, so a burst of load on the machine hits both sides alike. The Rust bench builds libkeel
# (profile capi) and the test guest; the Java bench uses that same libkeel.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
runs=${1:-20}
rounds=${2:-3}
cd "$root"
out=$root/target/bench-java
rm -rf "$out"
mkdir -p "$out"
guest=${KEEL_TEST_GUEST:-$root/target/guest/x86_64-unknown-none/release/keel-test-guest}

(cd bindings/java && mvn -q -B -Dstyle.color=never test-compile)
for round in $(seq "$rounds"); do
  echo "-- round $round/$rounds: Rust and C ABI (cargo bench -p benches --bench capi -- $runs)"
  cargo bench --quiet -p benches --bench capi -- "$runs" | tee "$out/rust-$round.txt"
  ln -sf libkeel.so target/capi/libkeel.so.0
  echo "-- round $round/$rounds: Java (dev.keel.Bench, JNA on $(java -version 2>&1 | head -1))"
  # exec:exec starts a plain JVM (not Maven's) with the test classpath.
  (cd bindings/java && mvn -q -B -Dstyle.color=never org.codehaus.mojo:exec-maven-plugin:3.6.2:exec \
    -Dexec.executable=java -Dexec.classpathScope=test \
    -Dexec.args="-Dkeel.library.path=$root/target/capi -cp %classpath dev.keel.Bench $guest $runs") \
    | sed 's/\x1b\[[0-9;]*m//g' | tee "$out/java-$round.txt"
done

# One figure per round, from each output; then their median.
ns() { awk -v pat="$1" 'index($0, pat) { for (i = 1; i <= NF; i++) if ($i == "ns/call") print $(i-1) }' "$2"; }
ms() { awk -v pat="$1" -v key="$2" 'index($0, pat) == 3 { for (i = 1; i <= NF; i++) if ($i == key) { print $(i+1); exit } }' "$3"; }
jv() { awk -v key="$1" '$1 == key { print $2 }' "$2"; }
median() {
  local values
  values=$(sort -g)
  [ -n "$values" ] || { echo "bench.sh: a figure is missing from $out" >&2; exit 1; }
  printf '%s\n' "$values" | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}
over_rounds() { for round in $(seq "$rounds"); do "$@" "$round"; done | median; }
r_ns() { ns "$1" "$out/rust-$2.txt"; }
r_ms() { ms "$1" "$2" "$out/rust-$3.txt"; }
j_v() { jv "$1" "$out/java-$2.txt"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

rust_ready=$(over_rounds r_ns "request ready-made")
rust_json=$(over_rounds r_ns "parsing the same JSON")
c_abi=$(over_rounds r_ns "C ABI (JSON request)")
java_place=$(over_rounds j_v java_placement_ns)
java_cold=$(over_rounds j_v java_placement_cold_ns)
java_raw=$(over_rounds j_v java_placement_raw_ns)
rust_min=$(over_rounds r_ms "Rust " min)
rust_med=$(over_rounds r_ms "Rust " median)
c_min=$(over_rounds r_ms "C ABI " min)
c_med=$(over_rounds r_ms "C ABI " median)
jcb_min=$(over_rounds j_v java_vm_callback_min_ms)
jcb_med=$(over_rounds j_v java_vm_callback_median_ms)
jfd_min=$(over_rounds j_v java_vm_devnull_min_ms)
jfd_med=$(over_rounds j_v java_vm_devnull_median_ms)

echo
echo "== side by side (median of $rounds rounds; load average now: $(cut -d' ' -f1-3 /proc/loadavg))"
echo "placement: decide + commit + release on 200 hosts, per call (each round: median of 5 x 20,000)"
printf '  %-34s %11s   %s\n' "" "ns/call" "/ Rust ready-made"
printf '  %-34s %8s ns   %s\n' "Rust, request ready-made" "$rust_ready" "1.00"
printf '  %-34s %8s ns   %s\n' "Rust, parsing the same JSON" "$rust_json" "$(ratio "$rust_json" "$rust_ready")"
printf '  %-34s %8s ns   %s\n' "C ABI (JSON request)" "$c_abi" "$(ratio "$c_abi" "$rust_ready")"
printf '  %-34s %8s ns   %s   (Java / C ABI %s)\n' "Java (JNA, JSON request), warm" "$java_place" "$(ratio "$java_place" "$rust_ready")" "$(ratio "$java_place" "$c_abi")"
printf '  %-34s %8s ns   %s   (Java / C ABI %s)\n' "Java, the 4 calls through raw JNA" "$java_raw" "$(ratio "$java_raw" "$rust_ready")" "$(ratio "$java_raw" "$c_abi")"
printf '  %-34s %8s ns   %s   (first 20,000 calls, JIT still compiling)\n' "Java, cold" "$java_cold" "$(ratio "$java_cold" "$rust_ready")"
echo "VM: test guest, config -> start -> reset exit -> freed, 1 vCPU, 128 MiB ($runs runs a round)"
printf '  %-34s %8s %10s   %s\n' "" "min ms" "median ms" "median / Rust"
printf '  %-34s %8s %10s   %s\n' "Rust (console to a sink)" "$rust_min" "$rust_med" "1.00"
printf '  %-34s %8s %10s   %s\n' "C ABI (C console callback)" "$c_min" "$c_med" "$(ratio "$c_med" "$rust_med")"
printf '  %-34s %8s %10s   %s\n' "Java (Java console callback)" "$jcb_min" "$jcb_med" "$(ratio "$jcb_med" "$rust_med")"
printf '  %-34s %8s %10s   %s\n' "Java (console on /dev/null)" "$jfd_min" "$jfd_med" "$(ratio "$jfd_med" "$rust_med")"
