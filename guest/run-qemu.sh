#!/usr/bin/env bash
# Boots Keel's test guest under QEMU's microvm machine on KVM, through PVH, with the serial console on stdio.
#
#   run-qemu.sh <elf> <smp> [append words...]
#
# Exit status: QEMU's. The guest's default exit plan (reset,debug,s5) ends at the isa-debug-exit device, which
# makes QEMU exit with 33 = (0x10 << 1) | 1; a triple fault (keel.fault=triple) makes it exit with 0
# (-no-reboot turns the reset into an exit). Extra QEMU options can be passed in $QEMU_EXTRA_ARGS.
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: $0 <elf> <smp> [append words...]" >&2
    exit 2
fi
elf=$1
smp=$2
shift 2

# shellcheck disable=SC2086 # QEMU_EXTRA_ARGS is a list of words on purpose.
exec qemu-system-x86_64 \
    -M microvm,x-option-roms=off,rtc=on \
    -enable-kvm -cpu host,-arch-capabilities \
    -m "${MEM:-128}" -smp "$smp" \
    -nodefaults -no-user-config -nographic -no-reboot \
    -serial stdio \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
    -kernel "$elf" \
    -append "$*" \
    ${QEMU_EXTRA_ARGS:-}
