#!/usr/bin/env bash
# The nested lane: boots stock Debian kernels under Keel on hardware-style KVM.
#
# This machine's own KVM cannot run stock kernels (see README.md), so the lane starts an L1 Debian
# kernel under QEMU in pure emulation (TCG) with an AMD SVM CPU; L1 gets a real /dev/kvm, and its
# /init (l1-init.sh) boots each case's L2 kernel with Keel and reports marker lines on the serial
# console, which this script parses. Needs root on Debian (apt); no /dev/kvm needed.
#
# Usage: lanes/nested/run.sh [--cases "6.12:1 6.12:2:devices 6.1:1"] [--bench] [options]; --help for all.
set -euo pipefail

lane_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$lane_dir/../.." && pwd)
out=$repo/target/nested-lane
cache=${KEEL_CACHE:-$HOME/.cache/keel}
# shellcheck source=SCRIPTDIR/modules.sh
source "$lane_dir/modules.sh"

cases="6.12:1 6.12:2 6.1:1 6.12:1:reboot 6.12:1:panic 6.12:1:button 6.12:2:devices 6.1:1:devices 6.12:1:devices-mmio 6.12:1:snapshot 6.12:1:migrate"
bench=0
bench_runs=3
l1_kernel=6.12
l1_smp=1
l1_cpu="EPYC,+svm"
l1_threads=multi
case_timeout=120
shutdown_grace=15
max_l1_s=1500
l1_retries=1
mem_mib=256
qemu_machine=pc
keel_bin=
# Every Keel boot offers a virtio-rng over virtio-pci, which the L2 kernel must drive (MSI-X).
keel_args="--rng"
verbose=0
l2_cmdline="console=ttyS0 reboot=k panic=-1 quiet"
l2_image=vmlinuz

usage() {
  cat <<EOF
Usage: $0 [options]
  --cases "K:N[:A] ..." cases to run: L2 kernel K (6.12 or 6.1) with N vCPUs, doing A:
                       poweroff (default; expects a "guest shutdown" exit), reboot or panic
                       (panic=-1; both expect "guest reset"), devices (virtio-blk, -net,
                       -vsock over virtio-pci, driven by L2 and checked from L1, then
                       poweroff) or devices-mmio (the same over virtio-mmio)
                       [$cases]
  --bench              also boot each case under QEMU -accel kvm inside L1 and compare
  --bench-runs N       rounds of QEMU and Keel boots per case for --bench [$bench_runs]
  --l1 K               L1 kernel [$l1_kernel]
  --l1-smp N           L1 vCPUs (TCG threads) [$l1_smp]
  --l1-threads multi|single
                       TCG threading for L1: one host thread per vCPU, or all on one [$l1_threads]
  --l1-cpu MODEL       QEMU CPU model for L1; needs SVM [$l1_cpu]
  --case-timeout S     kill an L2 VMM after S seconds [$case_timeout]
  --max-l1-s S         kill an L1 boot after at most S seconds [$max_l1_s]
  --l1-retries N       boot a fresh L1 up to N times for the cases an L1 that stalled or
                       died left without a result [$l1_retries]
  --qemu-machine M     machine type for --bench: pc or microvm [$qemu_machine]
  --l2-cmdline TEXT    L2 kernel command line [$l2_cmdline]
  --l2-image vmlinuz|vmlinux
                       boot L2 from the bzImage (Linux boot protocol) or from the ELF inside it
                       (PVH entry: no decompressor in L2) [$l2_image]
  --keel-args "ARGS"   extra arguments for Keel in L1 (e.g. devices, for the L2 modules hook)
  --keel-bin PATH      use this static keel binary instead of building the keel program
                       (examples/vsock is taken from beside it if it is there)
  --verbose            show the whole L1 console while it runs (it is always logged)
Environment: KEEL_CACHE (downloads, default ~/.cache/keel), KEEL_LOG (keel's --log-level in L1: error, warn, info, debug, trace).
EOF
}

while [ $# -gt 0 ]; do
  case $1 in
    --cases) cases=$2; shift ;;
    --bench) bench=1 ;;
    --bench-runs) bench=1; bench_runs=$2; shift ;;
    --l1) l1_kernel=$2; shift ;;
    --l1-smp) l1_smp=$2; shift ;;
    --l1-cpu) l1_cpu=$2; shift ;;
    --l1-threads) l1_threads=$2; shift ;;
    --case-timeout) case_timeout=$2; shift ;;
    --max-l1-s) max_l1_s=$2; shift ;;
    --l1-retries) l1_retries=$2; shift ;;
    --qemu-machine) qemu_machine=$2; shift ;;
    --l2-cmdline) l2_cmdline=$2; shift ;;
    --l2-image) l2_image=$2; shift ;;
    --keel-bin) keel_bin=$(realpath "$2"); shift ;;
    --keel-args) keel_args=$2; shift ;;
    --verbose) verbose=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "nested-lane: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

say() { echo "nested-lane: $*" >&2; }
die() { say "error: $*"; exit 1; }

# Kernels are named by the Debian meta-package that tracks them; run time resolves the version.
meta_package() {
  case $1 in
    6.1) echo linux-image-cloud-amd64 ;;
    6.12) echo linux-image-6.12-cloud-amd64 ;;
    *) die "unknown kernel '$1' (known: 6.1, 6.12)" ;;
  esac
}

for c in $cases; do
  [[ $c =~ ^[0-9.]+:[1-9][0-9]*(:(poweroff|reboot|panic|button|devices|devices-mmio|snapshot|migrate))?$ ]] \
    || die "bad case '$c': expected <kernel>:<vcpus>[:poweroff|reboot|panic|button|devices|devices-mmio|snapshot|migrate], e.g. 6.12:2"
  meta_package "${c%%:*}" > /dev/null
done
meta_package "$l1_kernel" > /dev/null
[[ $l2_image =~ ^vmlinu[zx]$ ]] || die "--l2-image must be vmlinuz or vmlinux"
[[ $l1_retries =~ ^[0-9]+$ ]] || die "--l1-retries: '$l1_retries' is not a number"
for n in "$bench_runs" "$l1_smp" "$case_timeout" "$max_l1_s"; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || die "'$n' is not a positive number"
done
l2_kernels=$(for c in $cases; do echo "${c%%:*}"; done | sort -u)

# ldd says so for static binaries (glibc: "statically linked"/"not a dynamic executable").
is_static() { { ldd "$1" 2>&1 || true; } | grep -q -e 'statically linked' -e 'not a dynamic executable'; }

# --- 1. Host packages ----------------------------------------------------------------------------
install_packages() {
  local missing=() pkg
  for pkg in qemu-system-x86 busybox-static cpio zstd lz4 xz-utils e2fsprogs; do
    dpkg-query -W -f='${Status}' "$pkg" 2> /dev/null | grep -q 'ok installed' || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "missing packages ${missing[*]}; run as root or install them"
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
}
command -v dpkg-query > /dev/null || die "this lane needs a Debian host (dpkg, apt)"
install_packages
busybox=$(command -v busybox) || die "busybox not found"
is_static "$busybox" || die "$busybox is not static (install busybox-static)"

# --- 2. Kernels ----------------------------------------------------------------------------------
kernel_dir() { echo "$cache/debian-$1"; }
# shellcheck disable=SC2086 # l2_kernels is a list of words
for k in $(printf '%s\n' $l2_kernels "$l1_kernel" | sort -u); do
  say "kernel $k: $(meta_package "$k")"
  "$repo/scripts/fetch-debian-kernel.sh" "$(meta_package "$k")" "$(kernel_dir "$k")" > /dev/null \
    || die "cannot fetch kernel $k"
done

# --- 3. Keel -------------------------------------------------------------------------------------
# L1 has no libraries, so the binaries must be static: the musl target. The keel program is the
# VMM; examples/vsock is both ends of the vsock checks (in L2 over AF_VSOCK, in L1 over Unix
# sockets).
musl_targets=()
if [ -z "$keel_bin" ]; then
  musl_targets+=(-p keel --bin keel)
  keel_bin=$repo/target/x86_64-unknown-linux-musl/release/keel
fi
vsock_bin=$(dirname "$keel_bin")/examples/vsock
[ -x "$vsock_bin" ] || vsock_bin=$(dirname "$keel_bin")/vsock
if [ ! -x "$vsock_bin" ]; then
  musl_targets+=(-p examples --example vsock)
  vsock_bin=$repo/target/x86_64-unknown-linux-musl/release/examples/vsock
fi
if [ ${#musl_targets[@]} -gt 0 ]; then
  command -v cargo > /dev/null || die "cargo not found: install Rust with rustup (the repo pins the toolchain)"
  say "building ${musl_targets[*]} for x86_64-unknown-linux-musl, static"
  (cd "$repo" && CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1} cargo build -q --release \
    --target x86_64-unknown-linux-musl "${musl_targets[@]}") \
    || die "cargo build of ${musl_targets[*]} for x86_64-unknown-linux-musl failed"
fi
for bin in "$keel_bin" "$vsock_bin"; do
  [ -x "$bin" ] || die "no binary at $bin"
  is_static "$bin" || die "$bin is not static; L1 and L2 have no libraries"
done

# --- Cached initramfs parts ----------------------------------------------------------------------
# build_part <output> <builder> <input-file>...: runs "<builder> <output>" only when the names or
# contents of the inputs changed since the last build (their hash is kept in <output>.inputs).
build_part() {
  local output=$1 builder=$2 sum
  shift 2
  sum=$({ printf '%s\n' "$builder" "$@"; cat "$@"; } | sha256sum | cut -d' ' -f1)
  if [ -s "$output" ] && [ "$(cat "$output.inputs" 2> /dev/null)" = "$sum" ]; then
    return 0
  fi
  say "building $(basename "$output")"
  mkdir -p "$(dirname "$output")"
  "$builder" "$output.tmp"
  mv "$output.tmp" "$output"
  echo "$sum" > "$output.inputs"
}

# pack <dir> [compressor]: a newc cpio archive of dir's contents, owned by root, on stdout.
# Linux unpacks concatenated archives, so each part of an initramfs can be built on its own.
pack() {
  (cd "$1" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | ${2:-cat}
}

# A fresh staging directory with busybox and an /init.
stage() {
  local dir=$1 init=$2
  rm -rf "$dir"
  mkdir -p "$dir"/{bin,dev,proc,sys,tmp,lib/modules}
  cp "$busybox" "$dir/bin/busybox"
  install -m 755 "$init" "$dir/init"
}

# --- 4. L2 initramfs, one per L2 kernel (it carries that kernel's modules) -----------------------
module_list() { sed 's/#.*//' "$lane_dir/$1" | xargs; }
# Builds the initramfs of kernel $k (set by the loop below; build_part passes only the output).
build_l2_initrd() {
  local output=$1 staging=$out/staging/l2-$k
  stage "$staging" "$lane_dir/l2-init.sh"
  cp "$lane_dir/l2-devices.sh" "$staging/devices.sh"
  cp "$vsock_bin" "$staging/bin/vsock"
  # shellcheck disable=SC2046 # the lists are module names, one word each
  copy_modules "$(kernel_dir "$k")/modules" "$staging/lib/modules" $(module_list l2-modules.list)
  # shellcheck disable=SC2046
  copy_modules "$(kernel_dir "$k")/modules" "$staging/lib/modules/devices" \
    $(module_list l2-device-modules.list)
  pack "$staging" "gzip -9" > "$output"
}
for k in $l2_kernels; do
  build_part "$out/l2/$k/initrd.cpio.gz" build_l2_initrd "$busybox" "$lane_dir/l2-init.sh" \
    "$lane_dir/l2-devices.sh" "$vsock_bin" "$lane_dir/l2-modules.list" \
    "$lane_dir/l2-device-modules.list" "$lane_dir/modules.sh" "$(kernel_dir "$k")/version"
done

# --- 5. L1 initramfs: base (busybox, init, KVM modules) + Keel + L2 images [+ QEMU] + config -----
build_l1_base() {
  local staging=$out/staging/l1-base
  stage "$staging" "$lane_dir/l1-init.sh"
  # loop: L1 mounts the device cases' disk image to read back what L2 wrote; tun: their TAP.
  copy_modules "$(kernel_dir "$l1_kernel")/modules" "$staging/lib/modules" kvm_amd loop tun
  pack "$staging" "gzip -9" > "$1"
}
build_part "$out/l1/base.cpio.gz" build_l1_base "$busybox" "$lane_dir/l1-init.sh" \
  "$lane_dir/modules.sh" "$(kernel_dir "$l1_kernel")/version"

build_keel_part() {
  local staging=$out/staging/keel
  rm -rf "$staging" && mkdir -p "$staging/bin"
  cp "$keel_bin" "$staging/bin/keel"
  cp "$vsock_bin" "$staging/bin/vsock"
  pack "$staging" "gzip -6" > "$1"
}
build_part "$out/l1/keel.cpio.gz" build_keel_part "$keel_bin" "$vsock_bin"

# The L2 kernels are compressed already: an uncompressed archive spares L1 a slow decompression.
l2_inputs=()
for k in $l2_kernels; do l2_inputs+=("$(kernel_dir "$k")/$l2_image" "$out/l2/$k/initrd.cpio.gz"); done
build_l2_part() {
  local staging=$out/staging/l2-images k
  rm -rf "$staging"
  for k in $l2_kernels; do
    mkdir -p "$staging/l2/$k"
    cp "$(kernel_dir "$k")/$l2_image" "$staging/l2/$k/$l2_image"
    cp "$out/l2/$k/initrd.cpio.gz" "$staging/l2/$k/initrd.cpio.gz"
  done
  pack "$staging" > "$1"
}
build_part "$out/l1/l2-images.cpio" build_l2_part "${l2_inputs[@]}"

# For --bench: this host's QEMU, its libraries at their own paths, and the firmware it loads.
qemu_bin=$(command -v qemu-system-x86_64)
qemu_libs() { ldd "$qemu_bin" | awk '/=> \//{print $3} /^[ \t]*\/lib/{print $1}'; }
qemu_firmware() {
  local name dir
  # pc: SeaBIOS, its Linux loader and the TPR patching ROM; microvm: qboot.
  # pvh.bin: the option ROM that boots an ELF kernel through its PVH entry (--l2-image vmlinux).
  for name in bios-256k.bin linuxboot_dma.bin kvmvapic.bin bios-microvm.bin pvh.bin; do
    for dir in /usr/share/qemu /usr/share/seabios; do
      [ -e "$dir/$name" ] && { echo "$dir/$name"; break; }
    done
  done
}
build_qemu_part() {
  local staging=$out/staging/qemu lib file
  rm -rf "$staging" && mkdir -p "$staging/qemu/bin" "$staging/qemu/share"
  cp "$qemu_bin" "$staging/qemu/bin/"
  for lib in $(qemu_libs); do
    mkdir -p "$staging$(dirname "$lib")"
    cp -L "$lib" "$staging$lib"
  done
  for file in $(qemu_firmware); do cp -L "$file" "$staging/qemu/share/"; done
  pack "$staging" "gzip -6" > "$1"
}
parts=("$out/l1/base.cpio.gz" "$out/l1/keel.cpio.gz" "$out/l1/l2-images.cpio")

# The device and migrate cases' disk: a fresh, empty ext4 file system made by this host's mkfs.ext4 (every
# run, so no state carries over). L1 copies it for each case and mounts it afterwards.
if [[ " $cases " == *:devices* || " $cases " == *:migrate* ]]; then
  build_disk_part() {
    local staging=$out/staging/disk
    rm -rf "$staging" && mkdir -p "$staging/l2"
    mkfs.ext4 -q -F -L keel-lane "$staging/l2/disk.ext4" 32M
    pack "$staging" "gzip -1" > "$1"
  }
  build_disk_part "$out/l1/disk.cpio.gz"
  parts+=("$out/l1/disk.cpio.gz")
fi
if [ "$bench" = 1 ]; then
  # shellcheck disable=SC2046
  build_part "$out/l1/qemu.cpio.gz" build_qemu_part "$qemu_bin" $(qemu_libs) $(qemu_firmware)
  parts+=("$out/l1/qemu.cpio.gz")
fi

# The run's settings, read by l1-init.sh, and the initramfs with them (small, so rebuilt for
# every L1 boot). write_initrd <cases>.
write_initrd() {
  local conf=$out/staging/conf part
  rm -rf "$conf" && mkdir -p "$conf/etc"
  cat > "$conf/etc/lane.conf" <<EOF
CASES="$1"
BENCH_RUNS=$(( bench * bench_runs ))
MEM_MIB=$mem_mib
L2_CMDLINE="$l2_cmdline"
CASE_TIMEOUT=$case_timeout
SHUTDOWN_GRACE=$shutdown_grace
KEEL_LOG="${KEEL_LOG:-warn}"
QEMU_MACHINE=$qemu_machine
L2_IMAGE=$l2_image
KEEL_ARGS="$keel_args"
EOF
  pack "$conf" > "$out/l1/conf.cpio"
  # Linux finds an uncompressed archive only at a 4-byte aligned offset and skips zero bytes
  # between archives, so each part is padded to a multiple of 4.
  for part in "${parts[@]}" "$out/l1/conf.cpio"; do
    cat "$part"
    head -c $(( (4 - $(stat -c %s "$part") % 4) % 4 )) /dev/zero
  done > "$out/l1/initrd.img"
  rm -rf "$out/staging"   # the parts are what is cached; the copies they were packed from are not
}

# --- 6. Run L1 -----------------------------------------------------------------------------------
# L1 under TCG can stall as a whole (seen once in CI: no console output for over an hour, every
# watchdog inside L1 silent). Two guards, both on this side:
# - a stall watchdog kills QEMU when the console has been silent for longer than any case can
#   legitimately be (a stuck L2 VMM is killed by L1 after --case-timeout, which prints);
# - a hard limit per L1 boot: its boot plus every case's worst time, capped by --max-l1-s.
# When L1 stalls or dies before its last case, a fresh L1 boots once more (--l1-retries) for the
# cases still without a result, and the stall is reported with the console's last lines. Each
# case still passes only on its own result line.
ncases=$(wc -w <<< "$cases")
hard_timeout=$(( 180 + ncases * (case_timeout + shutdown_grace + 5) * (1 + 2 * bench * bench_runs) ))
[ "$hard_timeout" -le "$max_l1_s" ] || hard_timeout=$max_l1_s
stall_s=$(( case_timeout + shutdown_grace + 120 ))
stamp=$(date +%Y%m%d-%H%M%S)
log=$out/console-$stamp.log
: > "$log"
ln -sfn "$(basename "$log")" "$out/console.log"
# Keep the logs of the last 20 runs.
find "$out" -maxdepth 1 -name 'console-*.log' | sort | head -n -19 | xargs -r rm -f

# stall_watchdog <pidfile> <log>: kills the QEMU in <pidfile> once <log> has not grown for
# $stall_s seconds, and leaves a note in $out/l1/stalled.
stall_watchdog() {
  local size last=-1 quiet=0 pid
  while sleep 5; do
    size=$(stat -c %s "$2" 2> /dev/null || echo 0)
    if [ "$size" = "$last" ]; then quiet=$(( quiet + 5 )); else quiet=0; last=$size; fi
    if [ "$quiet" -ge "$stall_s" ]; then
      pid=$(cat "$1" 2> /dev/null) || continue
      echo "no console output for ${quiet}s" > "$out/l1/stalled"
      kill -KILL "$pid" 2> /dev/null
      return
    fi
  done
}

# boot_l1 <cases>: one L1 boot running <cases>, its console appended to $log. Sets qemu_status.
boot_l1() {
  write_initrd "$1"
  rm -f "$out/l1/qemu.pid" "$out/l1/stalled"
  say "booting L1 ($l1_kernel, -smp $l1_smp, $l1_threads-threaded TCG, -cpu $l1_cpu) with cases: $1; log: $log"
  stall_watchdog "$out/l1/qemu.pid" "$log" &
  local watchdog=$!
  set +e
  # stdin from /dev/null: QEMU leaves the terminal alone and Ctrl-C stops the run. -net none: no
  # NIC, so SeaBIOS does not spend emulated time in the iPXE option ROM.
  timeout -k 10 "$hard_timeout" qemu-system-x86_64 -accel "tcg,thread=$l1_threads" -cpu "$l1_cpu" \
    -smp "$l1_smp" -m 2048 -nographic -no-reboot -net none -pidfile "$out/l1/qemu.pid" \
    -kernel "$(kernel_dir "$l1_kernel")/vmlinuz" \
    -initrd "$out/l1/initrd.img" -append "console=ttyS0 panic=-1 quiet" < /dev/null 2>&1 \
    | sed -u 's/\r$//' | tee -a "$log" \
    | if [ "$verbose" = 1 ]; then cat; else grep --line-buffered -e '^KEEL-' || true; fi
  qemu_status=${PIPESTATUS[0]}
  set -e
  kill "$watchdog" 2> /dev/null || true
  wait "$watchdog" 2> /dev/null || true
  [ "$qemu_status" != 124 ] || say "L1 did not finish within ${hard_timeout}s and was killed"
  if [ -e "$out/l1/stalled" ]; then
    say "L1 stalled ($(cat "$out/l1/stalled")) and was killed; its console's last lines:"
    tail -n 25 "$log" | sed 's/^/  | /' >&2
  fi
}

# cases_left: the cases of this run without a result line in $log.
cases_left() {
  local c
  for c in $cases; do grep -q "^KEEL-LANE case=$c " "$log" || echo "$c"; done | xargs
}

started=$(date +%s)
attempt=0
stalls=0
todo=$cases
while :; do
  boot_l1 "$todo"
  grep -q '^KEEL-LANE done' "$log" && break
  stalls=$(( stalls + 1 ))
  todo=$(cases_left)
  if [ -z "$todo" ] || [ "$attempt" -ge "$l1_retries" ]; then break; fi
  attempt=$(( attempt + 1 ))
  say "L1 ended before its last case (QEMU status $qemu_status); retry $attempt of $l1_retries in a fresh L1 for: $todo"
  echo "KEEL-LANE-RETRY attempt=$attempt cases=${todo// /,}" >> "$log"
done
elapsed=$(( $(date +%s) - started ))

# --- Results -------------------------------------------------------------------------------------
failed=0
echo
row='%-15s %-6s %-5s %-15s %-7s %-6s %-13s %-12s %-7s %s\n'
# shellcheck disable=SC2059 # one format for the header and the rows
printf "$row" case status exit vm_exit boot_s nproc memtotal_kib clocksource wall_s reason
for c in $cases; do
  line=$(grep -m1 "^KEEL-LANE case=$c " "$log" || true)
  if [ -z "$line" ]; then
    printf '%-15s %-6s (no result line)\n' "$c" missing
    failed=1
    continue
  fi
  # shellcheck disable=SC2086 # the line is key=value words
  # shellcheck disable=SC2154,SC2059 # the variables come from the line's key=value words
  (declare ${line#KEEL-LANE } 2> /dev/null
   printf "$row" "$case" "$status" "$exit" "$vm_exit" "$boot_s" "$nproc" "$memtotal_kib" \
     "$clocksource" "$wall_s" "$reason")
  grep -q "^KEEL-LANE case=$c status=pass " "$log" || failed=1
done
if [ "$bench" = 1 ]; then
  # Boot times here swing with the host's load (TCG shares two cores with other work), so the
  # minimum over the rounds is the figure to compare, as for the other VMM benchmarks.
  echo
  awk '/^KEEL-BENCH / {
      for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
      key = f["kernel"] " " f["vcpus"]
      if (!(key in n)) order[++keys] = key
      n[key]++
      if (f["keel_s"] != "-" && (!(key in k) || f["keel_s"] + 0 < k[key])) k[key] = f["keel_s"] + 0
      if (f["qemu_s"] != "-" && (!(key in q) || f["qemu_s"] + 0 < q[key])) q[key] = f["qemu_s"] + 0
    }
    END {
      printf "%-7s %-6s %-5s %-11s %-11s %s\n", "kernel", "vcpus", "runs", "keel_min_s", "qemu_min_s", "keel/qemu"
      for (i = 1; i <= keys; i++) {
        key = order[i]
        split(key, p, " ")
        ratio = (key in k && key in q && q[key] > 0) ? sprintf("%.2f", k[key] / q[key]) : "-"
        printf "%-7s %-6s %-5s %-11s %-11s %s\n", p[1], p[2], n[key], \
          (key in k) ? sprintf("%.2f", k[key]) : "-", (key in q) ? sprintf("%.2f", q[key]) : "-", ratio
      }
    }' "$log"
fi
grep '^KEEL-LANE l1 ' "$log" || true
for k in $l2_kernels; do echo "L2 kernel $k: $(cat "$(kernel_dir "$k")/version")"; done
echo "L1 kernel $l1_kernel: $(cat "$(kernel_dir "$l1_kernel")/version"); L1 run: ${elapsed}s; log: $log"
# What a failure looks like, so that the log need not be opened for the common cases.
for c in $cases; do
  grep -q "^KEEL-LANE case=$c status=pass " "$log" && continue
  echo "--- $c: last lines of the L2 console and Keel's stderr"
  grep -F -e "L2|$c| " -e "VMM|$c| " "$log" | tail -n 15 || true
done
[ "$stalls" = 0 ] || say "L1 ended early $stalls time(s) (stall, crash or time limit); see KEEL-LANE-RETRY in $log"
if ! grep -q '^KEEL-LANE done' "$log"; then
  say "L1 did not finish (no 'KEEL-LANE done'; QEMU status $qemu_status): see $log"
  grep -E '^\[ *[0-9.]+\] .*(Oops|BUG|panic|Call Trace)' "$log" | head -n 5 || true
  failed=1
fi
[ "$failed" = 0 ] || { say "FAILED"; exit 1; }
say "all cases passed"
