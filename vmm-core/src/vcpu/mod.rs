//! vCPUs: creation and configuration ([`configure`]) and the per-thread run loop.
//!
//! The run loop is generic; what is x86-specific lives in [`cpuid`] and [`regs`].

pub mod cpuid;
pub mod regs;
pub mod state;

use std::sync::Arc;

use kvm_bindings::CpuId;
use kvm_ioctls::{VcpuExit, VcpuFd};
use log::{debug, error};

use crate::boot::EntryState;
use crate::boot_timer::BootTimer;
use crate::counters::{ExitCounters, ExitKind};
use crate::state::{Control, ExitReason, Step};
use crate::vm::IoBuses;

/// KVM's `KVM_SYSTEM_EVENT_*` types.
const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const SYSTEM_EVENT_RESET: u32 = 2;
const SYSTEM_EVENT_CRASH: u32 = 3;

/// Errors configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A KVM call failed.
    #[error("vCPU {index}: {op} failed: {source}")]
    Kvm {
        /// The vCPU.
        index: u32,
        /// The ioctl.
        op: &'static str,
        /// errno from KVM.
        source: kvm_ioctls::Error,
    },
    /// Register setup failed.
    #[error("vCPU {index}: {source}")]
    Regs {
        /// The vCPU.
        index: u32,
        /// Cause.
        source: regs::RegsError,
    },
}

/// What configuring a vCPU needs from the VM.
pub struct VcpuSetup<'a> {
    /// KVM's supported CPUID (normalised per vCPU from this).
    pub supported_cpuid: &'a CpuId,
    /// vCPUs in the VM.
    pub vcpu_count: u32,
    /// Whether KVM emulates the TSC-deadline timer.
    pub tsc_deadline: bool,
    /// Entry state for the boot vCPU (index 0); application processors wait for INIT/SIPI.
    pub entry: &'a EntryState,
}

/// Configures vCPU `index`: CPUID first (newer KVM rejects long-mode EFER before CPUID says the
/// CPU has long mode), then MSRs, FPU, LAPIC LINT pins and, for the boot vCPU, registers.
pub fn configure(vcpu: &VcpuFd, index: u32, setup: &VcpuSetup<'_>) -> Result<(), VcpuError> {
    let mut cpuid = setup.supported_cpuid.clone();
    cpuid::normalize(
        &mut cpuid,
        cpuid::CpuidContext {
            vcpu_id: index,
            vcpu_count: setup.vcpu_count,
            tsc_deadline: setup.tsc_deadline,
        },
    );
    vcpu.set_cpuid2(&cpuid).map_err(|source| VcpuError::Kvm {
        index,
        op: "KVM_SET_CPUID2",
        source,
    })?;
    let regs_err = |source| VcpuError::Regs { index, source };
    regs::setup_msrs(vcpu).map_err(regs_err)?;
    regs::setup_fpu(vcpu).map_err(regs_err)?;
    regs::setup_lint(vcpu).map_err(regs_err)?;
    if index == 0 {
        regs::setup_boot_registers(vcpu, setup.entry).map_err(regs_err)?;
    }
    Ok(())
}

/// What one exit asks the run loop to do.
enum Next {
    Continue,
    Exit(ExitReason),
}

/// What a vCPU thread needs besides its vCPU.
pub(crate) struct RunContext {
    pub(crate) index: u32,
    pub(crate) buses: Arc<IoBuses>,
    pub(crate) control: Arc<Control>,
    pub(crate) exits: Arc<ExitCounters>,
    /// Marked once, when the vCPU first comes back from the guest.
    pub(crate) first_exit: Option<BootTimer>,
    /// The MSRs a snapshot saves (`KVM_GET_MSR_INDEX_LIST`).
    pub(crate) msr_indices: Arc<Vec<u32>>,
}

/// Runs a vCPU until the VM exits. Meant to be the body of the vCPU's thread.
pub(crate) fn run(mut vcpu: VcpuFd, context: RunContext) {
    let RunContext {
        index,
        buses,
        control,
        exits,
        mut first_exit,
        msr_indices,
    } = context;
    let immediate_exit: *mut u8 = &mut vcpu.get_kvm_run().immediate_exit;
    // SAFETY: `immediate_exit` is this thread's own vCPU's `kvm_run` byte, mapped for as long as
    // `vcpu` lives. `registered` is a local and `vcpu` a parameter, so on return and on
    // unwinding alike `registered` is dropped first: `vcpu_exited` runs before the unmapping.
    unsafe { control.register_vcpu(index as usize, immediate_exit) };
    let registered = Registered {
        control: &control,
        index,
    };
    loop {
        // SAFETY: as above; `vcpu` is alive for the whole loop.
        match unsafe { control.before_run(index as usize, immediate_exit) } {
            Step::Run => {}
            Step::Exit => break,
            Step::Save => {
                let saved = vcpu
                    .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
                    .map_err(|err| format!("KVM_GET_CPUID2 failed: {err}"))
                    .and_then(|cpuid| {
                        state::VcpuState::capture(&vcpu, &cpuid, &msr_indices)
                            .map_err(|err| err.to_string())
                    });
                control.deliver_vcpu_state(index as usize, saved);
                continue;
            }
        }
        let result = vcpu.run();
        if let Some(timer) = first_exit.take() {
            timer.mark("first exit from the guest (boot vCPU)");
        }
        let next = match result {
            Ok(exit) => handle_exit(exit, index, &buses, &exits),
            Err(err) if err.errno() == libc::EINTR || err.errno() == libc::EAGAIN => {
                exits.record(ExitKind::Interrupted);
                Next::Continue
            }
            Err(err) => Next::Exit(ExitReason::Failed {
                vcpu: Some(index),
                detail: format!("KVM_RUN failed: {err}"),
            }),
        };
        if let Next::Exit(mut reason) = next {
            if let ExitReason::InternalError { rip, suberror, .. } = &mut reason {
                // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR, which makes `internal` the
                // union member KVM filled in.
                *suberror = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
                *rip = vcpu.get_regs().ok().map(|regs| regs.rip);
            }
            match &reason {
                ExitReason::Reset | ExitReason::Shutdown => debug!("vCPU {index}: {reason}"),
                _ => error!("vCPU {index}: {reason}"),
            }
            control.request_exit(reason);
        }
    }
    // Unregister before the fd (and its kvm_run mapping) goes away.
    drop(registered);
    drop(vcpu);
}

/// Unregisters a vCPU from the control block when dropped, so that even a vCPU thread that
/// panics (an embedder may build with `panic = "unwind"`) stops other threads from writing to
/// its `kvm_run` page before that page is unmapped, and still counts as exited.
struct Registered<'a> {
    control: &'a Control,
    index: u32,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.control.request_exit(ExitReason::Failed {
                vcpu: Some(self.index),
                detail: "the vCPU thread panicked".to_string(),
            });
        }
        self.control.vcpu_exited(self.index as usize);
    }
}

fn handle_exit(exit: VcpuExit<'_>, index: u32, buses: &IoBuses, exits: &ExitCounters) -> Next {
    exits.record(match &exit {
        VcpuExit::IoIn(..) => ExitKind::IoIn,
        VcpuExit::IoOut(..) => ExitKind::IoOut,
        VcpuExit::MmioRead(..) => ExitKind::MmioRead,
        VcpuExit::MmioWrite(..) => ExitKind::MmioWrite,
        VcpuExit::Hlt => ExitKind::Hlt,
        VcpuExit::Intr => ExitKind::Interrupted,
        _ => ExitKind::Other,
    });
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !buses.pio.read(u64::from(port), data) {
                data.fill(0xff);
            }
            Next::Continue
        }
        VcpuExit::IoOut(port, data) => {
            if !buses.pio.write(u64::from(port), data) {
                log::trace!("vCPU {index}: write to unclaimed port {port:#x} ignored");
            }
            Next::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            if !buses.mmio.read(addr, data) {
                debug!("vCPU {index}: read from unclaimed MMIO {addr:#x}");
                data.fill(0xff);
            }
            Next::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !buses.mmio.write(addr, data) {
                debug!("vCPU {index}: write to unclaimed MMIO {addr:#x} ignored");
            }
            Next::Continue
        }
        VcpuExit::Hlt | VcpuExit::Intr | VcpuExit::IrqWindowOpen => Next::Continue,
        VcpuExit::Shutdown => Next::Exit(ExitReason::TripleFault { vcpu: index }),
        VcpuExit::SystemEvent(kind, _) => match kind {
            SYSTEM_EVENT_SHUTDOWN => Next::Exit(ExitReason::Shutdown),
            SYSTEM_EVENT_RESET => Next::Exit(ExitReason::Reset),
            SYSTEM_EVENT_CRASH => Next::Exit(ExitReason::Failed {
                vcpu: Some(index),
                detail: "guest crash system event".into(),
            }),
            other => {
                devices::guest_warn!("vCPU {index}: unknown system event {other}");
                Next::Continue
            }
        },
        VcpuExit::InternalError => Next::Exit(ExitReason::InternalError {
            vcpu: index,
            suberror: 0,
            rip: None,
        }),
        VcpuExit::FailEntry(reason, _) => Next::Exit(ExitReason::EntryFailed {
            vcpu: index,
            reason,
        }),
        other => Next::Exit(ExitReason::Failed {
            vcpu: Some(index),
            detail: format!("unexpected exit {other:?}"),
        }),
    }
}
