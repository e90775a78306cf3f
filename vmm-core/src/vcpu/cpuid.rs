//! CPUID for each vCPU: KVM's supported set, normalised so the guest sees the VM it runs in.
//!
//! Starting from `KVM_GET_SUPPORTED_CPUID`, [`normalize`] gives every vCPU its own APIC ID and a
//! consistent topology (one thread per core, all vCPUs cores of one package), sets the
//! hypervisor bit (Linux only uses kvm-clock and paravirt features when it is set), advertises
//! the TSC-deadline timer when KVM emulates it, and masks features the VMM does not emulate
//! (MONITOR/MWAIT, performance monitoring, thermal and power management).

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// Leaf 1 ECX: MONITOR/MWAIT.
const LEAF1_ECX_MONITOR: u32 = 1 << 3;
/// Leaf 1 ECX: CPL-qualified debug store.
const LEAF1_ECX_DS_CPL: u32 = 1 << 4;
/// Leaf 1 ECX: safer mode extensions.
const LEAF1_ECX_SMX: u32 = 1 << 6;
/// Leaf 1 ECX: enhanced SpeedStep.
const LEAF1_ECX_EST: u32 = 1 << 7;
/// Leaf 1 ECX: thermal monitor 2.
const LEAF1_ECX_TM2: u32 = 1 << 8;
/// Leaf 1 ECX: perfmon and debug capability MSR.
const LEAF1_ECX_PDCM: u32 = 1 << 15;
/// Leaf 1 ECX: TSC-deadline mode of the local APIC timer.
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 1 ECX: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: debug store.
const LEAF1_EDX_DS: u32 = 1 << 21;
/// Leaf 1 EDX: thermal monitor and clock control.
const LEAF1_EDX_ACPI: u32 = 1 << 22;
/// Leaf 1 EDX: the package has more than one logical processor (EBX[23:16] is valid).
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf 1 EDX: thermal monitor.
const LEAF1_EDX_TM: u32 = 1 << 29;
/// Leaf 1 EDX: pending break enable.
const LEAF1_EDX_PBE: u32 = 1 << 31;
/// Leaf 6 EAX: the APIC timer keeps running in deep C-states (the only power bit kept).
const LEAF6_EAX_ARAT: u32 = 1 << 2;
/// Leaf 0xB/0x1F level types.
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;
/// Leaf 0x8000_0001 ECX (AMD): core multi-processing legacy mode.
const AMD_ECX_CMP_LEGACY: u32 = 1 << 1;
/// KVM's paravirtual CPUID base leaf ("KVMKVMKVM").
const KVM_CPUID_SIGNATURE: u32 = 0x4000_0000;

/// CPU vendor, which decides the vendor-specific topology leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    /// GenuineIntel.
    Intel,
    /// AuthenticAMD or HygonGenuine.
    Amd,
    /// Anything else.
    Other,
}

/// What [`normalize`] needs to know besides the CPUID itself.
#[derive(Clone, Copy, Debug)]
pub struct CpuidContext {
    /// This vCPU's index, which is also its APIC ID.
    pub vcpu_id: u32,
    /// vCPUs in the VM.
    pub vcpu_count: u32,
    /// Whether KVM emulates the TSC-deadline timer (`KVM_CAP_TSC_DEADLINE_TIMER`).
    pub tsc_deadline: bool,
}

/// The vendor named by leaf 0.
pub fn vendor(cpuid: &CpuId) -> Vendor {
    let Some(leaf0) = cpuid.as_slice().iter().find(|e| e.function == 0) else {
        return Vendor::Other;
    };
    let mut name = [0u8; 12];
    name[..4].copy_from_slice(&leaf0.ebx.to_le_bytes());
    name[4..8].copy_from_slice(&leaf0.edx.to_le_bytes());
    name[8..].copy_from_slice(&leaf0.ecx.to_le_bytes());
    match &name {
        b"GenuineIntel" => Vendor::Intel,
        b"AuthenticAMD" | b"HygonGenuine" => Vendor::Amd,
        _ => Vendor::Other,
    }
}

/// Bits needed to number `count` items (`ceil(log2(count))`).
fn id_width(count: u32) -> u32 {
    count.max(1).next_power_of_two().trailing_zeros()
}

/// Rewrites `cpuid` (KVM's supported set) for one vCPU.
pub fn normalize(cpuid: &mut CpuId, ctx: CpuidContext) {
    let vendor = vendor(cpuid);
    let count = ctx.vcpu_count.max(1);
    let apic_id = ctx.vcpu_id;
    let core_bits = id_width(count);

    for entry in cpuid.as_mut_slice() {
        match entry.function {
            0x1 => {
                // EBX: APIC ID, addressable logical processors, CLFLUSH line size (8 * 8 bytes).
                entry.ebx = (apic_id << 24) | (count.next_power_of_two().min(255) << 16) | (8 << 8);
                entry.ecx |= LEAF1_ECX_HYPERVISOR;
                entry.ecx &= !(LEAF1_ECX_MONITOR
                    | LEAF1_ECX_DS_CPL
                    | LEAF1_ECX_SMX
                    | LEAF1_ECX_EST
                    | LEAF1_ECX_TM2
                    | LEAF1_ECX_PDCM);
                if ctx.tsc_deadline {
                    entry.ecx |= LEAF1_ECX_TSC_DEADLINE;
                } else {
                    entry.ecx &= !LEAF1_ECX_TSC_DEADLINE;
                }
                entry.edx &= !(LEAF1_EDX_DS | LEAF1_EDX_ACPI | LEAF1_EDX_TM | LEAF1_EDX_PBE);
                if count > 1 {
                    entry.edx |= LEAF1_EDX_HTT;
                } else {
                    entry.edx &= !LEAF1_EDX_HTT;
                }
            }
            0x4 if vendor == Vendor::Intel => {
                // Deterministic cache parameters: EAX[31:26] cores per package - 1,
                // EAX[25:14] logical processors sharing this cache - 1.
                let level = (entry.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                entry.eax = (entry.eax & 0x3fff) | ((sharing & 0xfff) << 14) | ((count - 1) << 26);
            }
            0x5 => {
                // MONITOR/MWAIT is masked, so its leaf says nothing.
                entry.eax = 0;
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
            }
            0x6 => {
                entry.eax &= LEAF6_EAX_ARAT;
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
            }
            0xa => {
                // No virtual PMU is exposed.
                entry.eax = 0;
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
            }
            0x8000_0001 if vendor == Vendor::Amd => {
                // CmpLegacy: the package has more than one core (as leaf 1's HTT says).
                if count > 1 {
                    entry.ecx |= AMD_ECX_CMP_LEGACY;
                } else {
                    entry.ecx &= !AMD_ECX_CMP_LEGACY;
                }
            }
            0x8000_0008 if vendor == Vendor::Amd => {
                // ECX[15:12]: APIC ID bits for cores; ECX[7:0]: cores in the package - 1.
                entry.ecx = (entry.ecx & !0xf0ff) | (core_bits << 12) | ((count - 1) & 0xff);
            }
            0x8000_001e if vendor == Vendor::Amd => {
                entry.eax = apic_id;
                entry.ebx = apic_id & 0xff; // one thread per core
                entry.ecx = 0; // one node
                entry.edx = 0;
            }
            KVM_CPUID_SIGNATURE => {
                entry.eax = entry.eax.max(KVM_CPUID_SIGNATURE + 1);
            }
            _ => {}
        }
    }

    rebuild_topology_leaves(cpuid, apic_id, count, core_bits);
}

/// Replaces the extended topology leaves (0xB, and 0x1F when the host has it) with complete
/// ones: SMT level, core level and the terminating invalid level. KVM's supported CPUID may
/// carry only some sub-leaves (on AMD hosts, often sub-leaf 0 alone); a guest that finds no core
/// level counts every vCPU as its own package, and Linux then distrusts the TSC across packages.
fn rebuild_topology_leaves(cpuid: &mut CpuId, apic_id: u32, count: u32, core_bits: u32) {
    let has_0x1f = cpuid.as_slice().iter().any(|e| e.function == 0x1f);
    let mut kept: Vec<kvm_cpuid_entry2> = cpuid
        .as_slice()
        .iter()
        .filter(|e| e.function != 0xb && e.function != 0x1f)
        .copied()
        .collect();
    let leaves: &[u32] = if has_0x1f { &[0xb, 0x1f] } else { &[0xb] };
    for &function in leaves {
        for index in 0..3 {
            let mut entry = kvm_cpuid_entry2 {
                function,
                index,
                flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                ..Default::default()
            };
            topology_level(&mut entry, apic_id, count, core_bits);
            kept.push(entry);
        }
    }
    for entry in kept.iter_mut() {
        if entry.function == 0 && entry.eax < 0xb {
            entry.eax = 0xb;
        }
    }
    match CpuId::from_entries(&kept) {
        Ok(rebuilt) => *cpuid = rebuilt,
        Err(err) => log::warn!("cpuid: cannot rebuild the topology leaves: {err:?}"),
    }
}

/// Fills one sub-leaf of the extended topology leaves (0xB / 0x1F).
fn topology_level(entry: &mut kvm_cpuid_entry2, apic_id: u32, count: u32, core_bits: u32) {
    let (shift, processors, level_type) = match entry.index {
        0 => (0, 1, LEVEL_TYPE_SMT),
        1 => (core_bits, count, LEVEL_TYPE_CORE),
        _ => (0, 0, 0),
    };
    entry.eax = shift;
    entry.ebx = processors;
    entry.ecx = (level_type << 8) | (entry.index & 0xff);
    entry.edx = apic_id;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        function: u32,
        index: u32,
        eax: u32,
        ebx: u32,
        ecx: u32,
        edx: u32,
    ) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    fn intel_like() -> CpuId {
        let mut ebx = [0u32; 3];
        for (i, chunk) in b"GenuineIntel".chunks(4).enumerate() {
            ebx[i] = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
        CpuId::from_entries(&[
            entry(0, 0, 0x1f, ebx[0], ebx[2], ebx[1]),
            entry(
                1,
                0,
                0x906ea,
                0xff00_0800,
                LEAF1_ECX_MONITOR | LEAF1_ECX_PDCM,
                0,
            ),
            entry(4, 3, (3 << 5) | 0x1, 0, 0, 0),
            entry(0xa, 0, 0x0803_0004, 0, 0, 0),
            entry(0xb, 0, 1, 2, 0x100, 7),
            entry(0xb, 1, 4, 16, 0x201, 7),
            entry(0x4000_0000, 0, 0x4000_0001, 0, 0, 0),
        ])
        .unwrap()
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn each_vcpu_gets_its_apic_id_and_the_vm_topology() {
        for (vcpu_id, count) in [(0, 1), (3, 4), (5, 6)] {
            let mut cpuid = intel_like();
            normalize(
                &mut cpuid,
                CpuidContext {
                    vcpu_id,
                    vcpu_count: count,
                    tsc_deadline: true,
                },
            );
            let leaf1 = find(&cpuid, 1, 0);
            assert_eq!(leaf1.ebx >> 24, vcpu_id);
            assert!((leaf1.ebx >> 16 & 0xff) >= count);
            assert_ne!(leaf1.ecx & LEAF1_ECX_HYPERVISOR, 0);
            assert_ne!(leaf1.ecx & LEAF1_ECX_TSC_DEADLINE, 0);
            assert_eq!(leaf1.ecx & (LEAF1_ECX_MONITOR | LEAF1_ECX_PDCM), 0);
            assert_eq!(leaf1.edx & LEAF1_EDX_HTT != 0, count > 1);
            let smt = find(&cpuid, 0xb, 0);
            let core = find(&cpuid, 0xb, 1);
            assert_eq!(
                (smt.ebx, smt.edx, smt.ecx >> 8),
                (1, vcpu_id, LEVEL_TYPE_SMT)
            );
            assert_eq!(
                (core.ebx, core.edx, core.ecx >> 8),
                (count, vcpu_id, LEVEL_TYPE_CORE)
            );
            assert!(1 << core.eax >= count);
            assert_eq!(find(&cpuid, 4, 3).eax >> 26, count - 1);
            assert_eq!(find(&cpuid, 0xa, 0).eax, 0, "PMU hidden");
        }
    }

    #[test]
    fn tsc_deadline_follows_kvm_support() {
        let mut cpuid = intel_like();
        find(&cpuid, 1, 0);
        for e in cpuid.as_mut_slice() {
            if e.function == 1 {
                e.ecx |= LEAF1_ECX_TSC_DEADLINE;
            }
        }
        normalize(
            &mut cpuid,
            CpuidContext {
                vcpu_id: 0,
                vcpu_count: 1,
                tsc_deadline: false,
            },
        );
        assert_eq!(find(&cpuid, 1, 0).ecx & LEAF1_ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn topology_leaf_is_added_when_missing() {
        let mut cpuid =
            CpuId::from_entries(&[entry(0, 0, 0xd, 0, 0, 0), entry(1, 0, 0, 0, 0, 0)]).unwrap();
        normalize(
            &mut cpuid,
            CpuidContext {
                vcpu_id: 1,
                vcpu_count: 2,
                tsc_deadline: false,
            },
        );
        assert_eq!(find(&cpuid, 0xb, 1).ebx, 2);
        assert_eq!(find(&cpuid, 0xb, 0).edx, 1);
    }

    #[test]
    fn a_partial_topology_leaf_is_completed() {
        // What KVM reports on some AMD hosts: leaf 0xB with sub-leaf 0 only.
        let mut cpuid = CpuId::from_entries(&[
            entry(0, 0, 0x10, 0, 0, 0),
            entry(1, 0, 0, 0, 0, 0),
            entry(0xb, 0, 1, 1, 0x100, 0),
        ])
        .unwrap();
        normalize(
            &mut cpuid,
            CpuidContext {
                vcpu_id: 1,
                vcpu_count: 2,
                tsc_deadline: false,
            },
        );
        let core = find(&cpuid, 0xb, 1);
        assert_eq!((core.ebx, core.ecx >> 8, core.edx), (2, LEVEL_TYPE_CORE, 1));
        assert_eq!(find(&cpuid, 0xb, 2).ecx >> 8, 0, "terminating level");
        let leaf_0xb = cpuid
            .as_slice()
            .iter()
            .filter(|e| e.function == 0xb)
            .count();
        assert_eq!(leaf_0xb, 3, "no duplicate sub-leaves");
    }

    #[test]
    fn id_width_is_ceil_log2() {
        assert_eq!([1, 2, 3, 4, 5, 254].map(id_width), [0, 1, 2, 2, 3, 8]);
    }
}
