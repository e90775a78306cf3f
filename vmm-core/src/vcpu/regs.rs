//! Architectural register state at boot: MSRs, FPU, LAPIC LINT pins, and the boot vCPU's
//! general and segment registers for the chosen entry protocol.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;

use crate::boot::{gdt, EntryProtocol, EntryState};
use crate::layout;

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// MISC_ENABLE: fast string operations enabled.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRdefType: MTRRs enabled, default type write-back.
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;
/// RFLAGS bit 1 is reserved and always set.
const RFLAGS_RESERVED: u64 = 0x2;

const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Errors while setting up registers, naming the KVM call.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A KVM ioctl failed.
    #[error("{op} failed: {source}")]
    Kvm {
        /// The ioctl.
        op: &'static str,
        /// errno from KVM.
        source: kvm_ioctls::Error,
    },
    /// KVM accepted only part of the boot MSRs.
    #[error("KVM set {set} of {wanted} boot MSRs; MSR {failed:#x} was refused")]
    Msrs {
        /// How many were set.
        set: usize,
        /// How many were given.
        wanted: usize,
        /// The first one refused.
        failed: u32,
    },
    /// The MSR list could not be built.
    #[error("cannot build the MSR list: {0:?}")]
    MsrList(vmm_sys_util::fam::Error),
}

fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { op, source }
}

/// Boot MSRs. The system-call MSRs must be accepted; MISC_ENABLE and the MTRR default type are
/// set where KVM accepts them (they are not in `KVM_GET_MSR_INDEX_LIST`, yet without the MTRR
/// default type Linux finds "all blank" MTRRs and turns PAT off).
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    const REQUIRED: [(u32, u64); 8] = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
    ];
    const BEST_EFFORT: [(u32, u64); 3] = [
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ];
    let mut pending: Vec<kvm_msr_entry> = REQUIRED
        .iter()
        .chain(BEST_EFFORT.iter())
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let wanted = pending.len();
    // KVM_SET_MSRS stops at the first MSR it refuses; skip that one and go on with the rest.
    while !pending.is_empty() {
        let msrs = Msrs::from_entries(&pending).map_err(RegsError::MsrList)?;
        let set = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
        let Some(refused) = pending.get(set).map(|entry| entry.index) else {
            break;
        };
        if REQUIRED.iter().any(|&(index, _)| index == refused) {
            return Err(RegsError::Msrs {
                set,
                wanted,
                failed: refused,
            });
        }
        log::debug!("KVM refused boot MSR {refused:#x}; left at its reset value");
        pending.drain(..=set);
    }
    Ok(())
}

/// x87 control word and MXCSR at their reset values.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("KVM_SET_FPU"))
}

/// LINT0 as ExtINT (the 8259 PIC's output) and LINT1 as NMI, as PC firmware programs them.
pub fn setup_lint(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut lapic = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
    for (offset, mode) in [
        (APIC_LVT_LINT0, APIC_MODE_EXTINT),
        (APIC_LVT_LINT1, APIC_MODE_NMI),
    ] {
        let mut bytes = [0u8; 4];
        for (dst, src) in bytes.iter_mut().zip(&lapic.regs[offset..offset + 4]) {
            *dst = *src as u8;
        }
        let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (dst, src) in lapic.regs[offset..offset + 4]
            .iter_mut()
            .zip(value.to_le_bytes())
        {
            *dst = src as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(kvm("KVM_SET_LAPIC"))
}

/// The boot vCPU's segment and control registers for `protocol`.
pub fn boot_sregs(mut sregs: kvm_sregs, protocol: EntryProtocol) -> kvm_sregs {
    let table = match protocol {
        EntryProtocol::Linux64 => &gdt::GDT_LONG_MODE,
        EntryProtocol::Pvh => &gdt::GDT_PVH,
    };
    let code = gdt::segment(table, 1);
    let data = gdt::segment(table, 2);
    let tss = gdt::segment(table, 3);
    sregs.gdt.base = layout::BOOT_GDT_START;
    sregs.gdt.limit = gdt::GDT_LIMIT;
    sregs.idt.base = layout::BOOT_IDT_START;
    sregs.idt.limit = 0;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    match protocol {
        EntryProtocol::Linux64 => {
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
            sregs.cr3 = layout::PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        EntryProtocol::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    sregs
}

/// Loads the entry state into the boot vCPU.
pub fn setup_boot_registers(vcpu: &VcpuFd, entry: &EntryState) -> Result<(), RegsError> {
    let sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    vcpu.set_sregs(&boot_sregs(sregs, entry.protocol))
        .map_err(kvm("KVM_SET_SREGS"))?;
    let regs = kvm_regs {
        rflags: RFLAGS_RESERVED,
        rip: entry.rip,
        rsp: entry.rsp,
        rbp: entry.rsp,
        rsi: entry.rsi,
        rbx: entry.rbx,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm("KVM_SET_REGS"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_sregs_enable_paging_and_lma() {
        let sregs = boot_sregs(kvm_sregs::default(), EntryProtocol::Linux64);
        assert_eq!(
            sregs.cr0 & (X86_CR0_PE | X86_CR0_PG),
            X86_CR0_PE | X86_CR0_PG
        );
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(sregs.cr3, layout::PML4_START);
        assert_eq!(sregs.cs.l, 1);
        assert_eq!(sregs.gdt.limit, 31);
    }

    #[test]
    fn pvh_sregs_are_protected_mode_without_paging() {
        let sregs = boot_sregs(kvm_sregs::default(), EntryProtocol::Pvh);
        assert_eq!(sregs.cr0, X86_CR0_PE | X86_CR0_ET);
        assert_eq!((sregs.efer, sregs.cr4), (0, 0));
        assert_eq!((sregs.cs.l, sregs.cs.db), (0, 1));
        assert_eq!(sregs.tr.type_, 0xb);
    }
}
