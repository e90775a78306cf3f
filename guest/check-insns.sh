#!/usr/bin/env bash
# Fails if the guest binary contains an instruction that KVM's instruction emulator cannot execute.
#
#   check-insns.sh [elf]     (default: target/x86_64-unknown-none/release/keel-test-guest next to this script)
#
# On nested KVM without VMX/SVM (see README.md) guest code runs in KVM's emulator, which stops with "KVM internal
# error" on BMI1/BMI2, SSE/AVX (any xmm/ymm/zmm operand), CMPXCHG16B, XSAVE/XRSTOR and INT3. The whole image is
# disassembled as 64-bit code, then the 16-bit AP trampoline and the 32-bit entry paths again in their own modes.
# Padding between functions is ud2 (see linker.ld), so it does not trip the int3 check.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
elf=${1:-$here/target/x86_64-unknown-none/release/keel-test-guest}
[ -f "$elf" ] || { echo "check-insns: $elf not found (build first: cargo build --release)" >&2; exit 2; }

forbidden='\b(shlx|sarx|shrx|rorx|mulx|pdep|pext|andn|bextr|blsi|blsmsk|blsr|bzhi|cmpxchg16b|xsave[a-z0-9]*|xrstor[a-z0-9]*|fxsave[a-z0-9]*|fxrstor[a-z0-9]*|ldmxcsr|stmxcsr|int3)\b|\bint +0x3\b|[xyz]mm[0-9]'

address() {
    local value
    value=$(nm "$elf" | awk -v name="$1" '$3 == name { print $1 }')
    [ -n "$value" ] || { echo "check-insns: symbol $1 not found in $elf" >&2; exit 2; }
    echo "0x$value"
}

# disassemble <mode: i386:x86-64 | i386 | i8086> [start stop]
disassemble() {
    local mode=$1
    shift
    local range=()
    [ $# -eq 2 ] && range=(--start-address="$1" --stop-address="$2")
    local options=intel
    [ "$mode" = i8086 ] && options=intel,i8086 && mode=i386
    objdump -d -m "$mode" -M "$options" "${range[@]}" "$elf" | grep -E '^ +[0-9a-f]+:' || true
}

listing=$(
    disassemble i386:x86-64
    disassemble i386 "$(address pvh_entry32)" "$(address pvh_entry64)"
    disassemble i8086 "$(address ap_trampoline_start)" "$(address ap_gdt_pointer)"
    disassemble i386 "$(address ap_trampoline_end)" "$(address ap_entry64)"
)

if bad=$(grep -E "$forbidden" <<<"$listing"); then
    echo "check-insns: instructions KVM's emulator cannot run:" >&2
    echo "$bad" >&2
    exit 1
fi
echo "check-insns: ok, $(wc -l <<<"$listing") instructions checked in $elf"
