//! The KVM VM: the file descriptor, in-kernel interrupt controllers and PIT, guest memory
//! registration, and the I/O buses vCPU exits are dispatched to.

use devices::bus::Bus;
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use devices::GuestMemoryMmap;

use crate::layout;

/// The port-I/O and MMIO buses of one VM, shared by its vCPU threads.
#[derive(Debug)]
pub struct IoBuses {
    /// Port I/O.
    pub pio: Bus,
    /// MMIO.
    pub mmio: Bus,
}

/// Errors creating the KVM VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A KVM call failed.
    #[error("{op} failed: {source}")]
    Kvm {
        /// The call.
        op: &'static str,
        /// errno from KVM.
        source: kvm_ioctls::Error,
    },
    /// KVM lacks a capability Keel needs.
    #[error("KVM lacks the {0} capability")]
    MissingCapability(&'static str),
    /// More vCPUs than KVM supports.
    #[error("KVM supports at most {max} vCPUs per VM; {requested} were configured")]
    TooManyVcpus {
        /// Configured.
        requested: u32,
        /// KVM's limit.
        max: usize,
    },
}

fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { op, source }
}

/// Opens `/dev/kvm` and checks the capabilities Keel relies on.
pub fn open_kvm(vcpus: u32) -> Result<Kvm, VmError> {
    let kvm = Kvm::new().map_err(kvm_err("opening /dev/kvm"))?;
    for (cap, name) in [
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
        (Cap::Pit2, "KVM_CAP_PIT2"),
        (Cap::PitState2, "KVM_CAP_PIT_STATE2"),
        (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
        (Cap::Irqfd, "KVM_CAP_IRQFD"),
        (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(VmError::MissingCapability(name));
        }
    }
    let max = kvm.get_max_vcpus();
    if vcpus as usize > max {
        return Err(VmError::TooManyVcpus {
            requested: vcpus,
            max,
        });
    }
    Ok(kvm)
}

/// Registers each region of `mem` as memory slot 0, 1, ... of `vm` (again, to change the
/// flags), with KVM logging the pages the guest dirties when `log_dirty` is set.
pub(crate) fn set_memory_slots(vm: &VmFd, mem: &GuestMemoryMmap, log_dirty: bool) -> Result<(), VmError> {
    for (region, slot) in mem.iter().zip(0u32..) {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|_| VmError::MissingCapability("host address of guest memory"))?;
        let region_info = kvm_userspace_memory_region {
            slot,
            flags: if log_dirty { kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES } else { 0 },
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mapping of `memory_size` bytes owned by `mem`, which the
        // caller keeps alive for as long as the VM fd (the `Vm` owns both and drops the VM fd
        // first); slots are distinct and the guest ranges do not overlap. Registering a slot
        // again with the same range only changes its flags.
        unsafe { vm.set_user_memory_region(region_info) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

/// Creates the VM: memory slots, TSS and identity-map pages, in-kernel PIC/IOAPIC/LAPICs, PIT.
pub fn create_vm(kvm: &Kvm, mem: &GuestMemoryMmap) -> Result<VmFd, VmError> {
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    set_memory_slots(&vm, mem, false)?;
    vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDRESS)
        .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
    let tss_address = usize::try_from(layout::KVM_TSS_ADDRESS).map_err(|_| VmError::Kvm {
        op: "KVM_SET_TSS_ADDR",
        source: kvm_ioctls::Error::new(libc::EINVAL),
    })?;
    vm.set_tss_address(tss_address)
        .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip()
        .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
    Ok(vm)
}
