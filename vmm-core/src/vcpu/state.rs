//! A vCPU's complete architectural state, as a snapshot saves it and a restore puts it back.
//!
//! Saved while the vCPU is parked outside `KVM_RUN` (the VM is paused), by the vCPU's own
//! thread. Restored on a freshly created vCPU before its thread first enters the guest, in the
//! order KVM needs: CPUID first (it decides which MSRs and XSAVE features exist), then the
//! multiprocessor state, registers, special registers, extended state, debug registers, the
//! LAPIC, MSRs, and last the pending events (an exception or NMI the guest was about to take).

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// Errors saving or restoring a vCPU's state.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    /// A KVM call failed.
    #[error("{op} failed: {source}")]
    Kvm {
        /// The ioctl.
        op: &'static str,
        /// errno from KVM.
        source: kvm_ioctls::Error,
    },
    /// KVM accepted only part of the saved MSRs.
    #[error("KVM restored {set} of {wanted} MSRs; MSR {failed:#x} was refused")]
    Msrs {
        /// How many were set.
        set: usize,
        /// How many were saved.
        wanted: usize,
        /// The first one refused.
        failed: u32,
    },
    /// The MSR or CPUID list could not be built.
    #[error("cannot build the MSR or CPUID list: {0:?}")]
    MsrList(vmm_sys_util::fam::Error),
}

fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuStateError {
    move |source| VcpuStateError::Kvm { op, source }
}

/// Everything KVM keeps of one vCPU.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    /// The CPUID entries the vCPU was given (restored first: they shape everything else).
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Runnable, halted, waiting for SIPI.
    pub mp_state: kvm_mp_state,
    /// General registers.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: kvm_sregs,
    /// FPU, SSE and AVX state.
    pub xsave: kvm_xsave,
    /// Extended control registers.
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
    /// The local APIC's registers.
    pub lapic: kvm_lapic_state,
    /// Every MSR KVM saves (TSC and kvm-clock's included), as index/value pairs.
    pub msrs: Vec<(u32, u64)>,
    /// Pending exceptions, interrupts and NMIs.
    pub events: kvm_vcpu_events,
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuState")
            .field("rip", &self.regs.rip)
            .field("mp_state", &self.mp_state.mp_state)
            .field("msrs", &self.msrs.len())
            .finish_non_exhaustive()
    }
}

/// Reads as many of `indices` as KVM will give: an MSR KVM lists but cannot read on this host
/// is left out (KVM stops at the first failure, so the rest is read again without it).
fn read_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<(u32, u64)>, VcpuStateError> {
    let mut wanted: Vec<u32> = indices.to_vec();
    let mut values = Vec::with_capacity(wanted.len());
    while !wanted.is_empty() {
        let entries: Vec<kvm_msr_entry> = wanted
            .iter()
            .take(kvm_bindings::KVM_MAX_MSR_ENTRIES)
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(VcpuStateError::MsrList)?;
        let read = vcpu.get_msrs(&mut msrs).map_err(kvm("KVM_GET_MSRS"))?;
        values.extend(msrs.as_slice()[..read].iter().map(|e| (e.index, e.data)));
        // The one at `read` failed (if any): skip it.
        let consumed = if read < entries.len() { read + 1 } else { read };
        wanted.drain(..consumed);
    }
    Ok(values)
}

impl VcpuState {
    /// Reads the state of `vcpu`, with the MSRs in `msr_indices` (KVM's save list).
    pub fn capture(vcpu: &VcpuFd, cpuid: &CpuId, msr_indices: &[u32]) -> Result<Self, VcpuStateError> {
        Ok(VcpuState {
            cpuid: cpuid.as_slice().to_vec(),
            mp_state: vcpu.get_mp_state().map_err(kvm("KVM_GET_MP_STATE"))?,
            regs: vcpu.get_regs().map_err(kvm("KVM_GET_REGS"))?,
            sregs: vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?,
            xsave: vcpu.get_xsave().map_err(kvm("KVM_GET_XSAVE"))?,
            xcrs: vcpu.get_xcrs().map_err(kvm("KVM_GET_XCRS"))?,
            debugregs: vcpu.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?,
            lapic: vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?,
            msrs: read_msrs(vcpu, msr_indices)?,
            events: vcpu.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?,
        })
    }

    /// Puts the state into a freshly created `vcpu`.
    pub fn apply(&self, vcpu: &VcpuFd) -> Result<(), VcpuStateError> {
        let cpuid = CpuId::from_entries(&self.cpuid).map_err(VcpuStateError::MsrList)?;
        vcpu.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))?;
        vcpu.set_mp_state(self.mp_state)
            .map_err(kvm("KVM_SET_MP_STATE"))?;
        vcpu.set_regs(&self.regs).map_err(kvm("KVM_SET_REGS"))?;
        vcpu.set_sregs(&self.sregs).map_err(kvm("KVM_SET_SREGS"))?;
        // SAFETY: `self.xsave` is a full `kvm_xsave` as KVM_GET_XSAVE filled it on this host
        // kind; KVM checks the feature bits it holds against the vCPU's CPUID set above.
        unsafe { vcpu.set_xsave(&self.xsave) }.map_err(kvm("KVM_SET_XSAVE"))?;
        vcpu.set_xcrs(&self.xcrs).map_err(kvm("KVM_SET_XCRS"))?;
        vcpu.set_debug_regs(&self.debugregs)
            .map_err(kvm("KVM_SET_DEBUGREGS"))?;
        vcpu.set_lapic(&self.lapic).map_err(kvm("KVM_SET_LAPIC"))?;
        for chunk in self.msrs.chunks(kvm_bindings::KVM_MAX_MSR_ENTRIES) {
            let entries: Vec<kvm_msr_entry> = chunk
                .iter()
                .map(|&(index, data)| kvm_msr_entry {
                    index,
                    data,
                    ..Default::default()
                })
                .collect();
            let msrs = Msrs::from_entries(&entries).map_err(VcpuStateError::MsrList)?;
            let set = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
            if set != entries.len() {
                return Err(VcpuStateError::Msrs {
                    set,
                    wanted: entries.len(),
                    failed: entries[set].index,
                });
            }
        }
        vcpu.set_vcpu_events(&self.events)
            .map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
        Ok(())
    }
}
