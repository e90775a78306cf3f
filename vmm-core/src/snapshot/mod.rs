//! Snapshots: a paused VM saved to a directory and restored, in another process if need be.
//!
//! A snapshot directory holds two files: `memory`, the guest's RAM regions one after another
//! (mapped `MAP_PRIVATE` on restore, so the restored VM starts at once and reads pages in as
//! it touches them, and never writes back into the snapshot), and `state`, everything else in
//! the format of [`file`]: the config the VM was built from, each vCPU's registers, the
//! in-kernel interrupt controllers, PIT and clock, and every device's state. A snapshot is
//! restored only into a VM of the same shape (vCPUs, memory, transport, devices by id and
//! type); the error names what differs. Device back ends are opened afresh from the restoring
//! config, so a disk may be given at a new path or a NIC on a new TAP device.

pub mod file;

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use devices::legacy::{CmosRtc, GedState, RtcState, SerialSnapshot, SystemClock};
use devices::virtio::mmio::{MmioSnapshot, MmioTransport};
use devices::virtio::pci::{VirtioPciDevice, VirtioPciSnapshot};
use devices::virtio::snapshot::SnapshotError as DeviceSnapshotError;
use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};
use vm_memory::{
    Address, Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap, MmapRegion,
};
use devices::GuestMemoryMmap;

use crate::config::{VirtioTransport, VmConfig};
use crate::event_loop::SharedSerial;
use crate::sync::lock;
use crate::vcpu::state::VcpuState;
use file::StateFileError;

/// Name of the guest-memory file in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";
/// Name of the state file in a snapshot directory.
pub const STATE_FILE: &str = "state";

/// Why a snapshot could not be taken or restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The VM is not in a state that allows it.
    #[error("{0}")]
    State(String),
    /// The snapshot directory or a file in it.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The state file is damaged, of another format, or not a snapshot.
    #[error("{path}: {source}")]
    File {
        /// The state file.
        path: PathBuf,
        /// Cause.
        source: StateFileError,
    },
    /// The state file's contents do not parse.
    #[error("{path}: the snapshot state does not parse: {source}")]
    Parse {
        /// The state file.
        path: PathBuf,
        /// Cause.
        source: serde_json::Error,
    },
    /// The snapshot was taken from a VM of another shape.
    #[error("the snapshot does not fit this VM: {what}: the snapshot has {saved}, this VM {now}")]
    Shape {
        /// What differs.
        what: String,
        /// In the snapshot.
        saved: String,
        /// In the VM being restored.
        now: String,
    },
    /// A KVM call failed.
    #[error("{op} failed: {source}")]
    Kvm {
        /// The ioctl.
        op: &'static str,
        /// errno from KVM.
        source: kvm_ioctls::Error,
    },
    /// A vCPU's state could not be saved or restored.
    #[error("vCPU {index}: {detail}")]
    Vcpu {
        /// The vCPU.
        index: usize,
        /// What failed.
        detail: String,
    },
    /// A device's state could not be saved or restored.
    #[error("device `{id}`: {source}")]
    Device {
        /// The device.
        id: String,
        /// Cause.
        source: DeviceSnapshotError,
    },
    /// A device that cannot be snapshotted, or a legacy device's state refused.
    #[error("device `{id}`: {detail}")]
    Unsupported {
        /// The device.
        id: String,
        /// Why.
        detail: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The in-kernel devices KVM emulates for the VM: the two PICs, the IOAPIC, the PIT and the
/// clock (kvm-clock's reference).
#[derive(Serialize, Deserialize)]
pub(crate) struct KvmVmState {
    pic_master: kvm_irqchip,
    pic_slave: kvm_irqchip,
    ioapic: kvm_irqchip,
    pit: kvm_pit_state2,
    clock: kvm_clock_data,
}

fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SnapshotError {
    move |source| SnapshotError::Kvm { op, source }
}

impl KvmVmState {
    pub(crate) fn capture(vm: &VmFd) -> Result<Self, SnapshotError> {
        let chip = |id| -> Result<kvm_irqchip, SnapshotError> {
            let mut chip = kvm_irqchip {
                chip_id: id,
                ..Default::default()
            };
            vm.get_irqchip(&mut chip).map_err(kvm("KVM_GET_IRQCHIP"))?;
            Ok(chip)
        };
        let mut clock = vm.get_clock().map_err(kvm("KVM_GET_CLOCK"))?;
        // KVM_SET_CLOCK takes only the time; the flags it reports are not for setting.
        clock.flags = 0;
        Ok(KvmVmState {
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(KVM_IRQCHIP_IOAPIC)?,
            pit: vm.get_pit2().map_err(kvm("KVM_GET_PIT2"))?,
            clock,
        })
    }

    pub(crate) fn apply(&self, vm: &VmFd) -> Result<(), SnapshotError> {
        vm.set_clock(&self.clock).map_err(kvm("KVM_SET_CLOCK"))?;
        for chip in [&self.pic_master, &self.pic_slave, &self.ioapic] {
            vm.set_irqchip(chip).map_err(kvm("KVM_SET_IRQCHIP"))?;
        }
        vm.set_pit2(&self.pit).map_err(kvm("KVM_SET_PIT2"))
    }
}

/// A virtio device's saved state, by transport.
#[derive(Serialize, Deserialize)]
pub(crate) enum TransportState {
    /// On virtio-mmio.
    Mmio(MmioSnapshot),
    /// On virtio-PCI, in `slot` of bus 0.
    Pci {
        slot: u8,
        function: Box<VirtioPciSnapshot>,
    },
}

/// One virtio device in a snapshot.
#[derive(Serialize, Deserialize)]
pub(crate) struct VirtioSnapshot {
    pub id: String,
    pub device_type: u32,
    pub transport: TransportState,
}

/// Everything but guest memory.
#[derive(Serialize, Deserialize)]
pub(crate) struct VmSnapshot {
    /// The Keel that took it.
    pub keel_version: String,
    /// The config the VM was built from.
    pub config: VmConfig,
    /// Guest RAM regions (guest address, length), in the memory file's order.
    pub memory_regions: Vec<(u64, u64)>,
    pub vcpus: Vec<VcpuState>,
    pub vm: KvmVmState,
    pub serial: SerialSnapshot,
    pub rtc: RtcState,
    pub ged: GedState,
    pub virtio: Vec<VirtioSnapshot>,
}

/// What a running VM's handle needs to take a snapshot.
pub(crate) struct SnapshotSources {
    pub vm_fd: Arc<VmFd>,
    pub memory: GuestMemoryMmap,
    /// The config, with the rate limits changed since the VM was built.
    pub config: Mutex<VmConfig>,
    pub serial: SharedSerial,
    pub rtc: Arc<Mutex<CmosRtc<SystemClock>>>,
    pub mmio: Vec<(String, u32, Arc<Mutex<MmioTransport>>)>,
    /// Devices on virtio-PCI: id, type, slot, function.
    pub pci: Vec<(String, u32, u8, Arc<Mutex<VirtioPciDevice>>)>,
}

impl SnapshotSources {
    /// After a restore, once the interrupt controllers and vCPUs hold their saved state:
    /// raises each running device's queue interrupts again (see
    /// `TransportState::raise_after_restore`).
    pub(crate) fn raise_after_restore(&self) {
        for (_, _, transport) in &self.mmio {
            lock(transport).raise_after_restore();
        }
        for (_, _, _, function) in &self.pci {
            lock(function).raise_after_restore();
        }
    }

    /// Saves every device and the in-kernel state; the vCPU states come from their threads.
    pub(crate) fn capture(
        &self,
        vcpus: Vec<VcpuState>,
        ged: GedState,
    ) -> Result<VmSnapshot, SnapshotError> {
        let mut virtio = Vec::new();
        for (id, device_type, transport) in &self.mmio {
            let saved = lock(transport)
                .save_state()
                .map_err(|source| SnapshotError::Device {
                    id: id.clone(),
                    source,
                })?;
            virtio.push(VirtioSnapshot {
                id: id.clone(),
                device_type: *device_type,
                transport: TransportState::Mmio(saved),
            });
        }
        for (id, device_type, slot, function) in &self.pci {
            let saved = lock(function)
                .save_state()
                .map_err(|source| SnapshotError::Device {
                    id: id.clone(),
                    source,
                })?;
            virtio.push(VirtioSnapshot {
                id: id.clone(),
                device_type: *device_type,
                transport: TransportState::Pci {
                    slot: *slot,
                    function: Box::new(saved),
                },
            });
        }
        Ok(VmSnapshot {
            keel_version: env!("CARGO_PKG_VERSION").to_string(),
            config: lock(&self.config).clone(),
            memory_regions: self
                .memory
                .iter()
                .map(|region| (region.start_addr().0, region.len()))
                .collect(),
            vcpus,
            vm: KvmVmState::capture(&self.vm_fd)?,
            serial: lock(&self.serial).state(),
            rtc: lock(&self.rtc).state(),
            ged,
            virtio,
        })
    }
}

/// Writes `snapshot` and `memory` into `dir` (created if missing).
///
/// The memory goes to a temporary file first, synced; only then is the old state file
/// removed, the memory file renamed into place and the new state file written (atomically):
/// a directory with a state file always has the memory that goes with it, and an error while
/// the memory is written (a full disk) leaves an older snapshot there as it was. Renaming
/// rather than rewriting in place also keeps a VM restored from this directory safe: its
/// memory is a private mapping of the old file, which lives on until it is unmapped.
pub(crate) fn write(dir: &Path, snapshot: &VmSnapshot, memory: &GuestMemoryMmap) -> Result<(), SnapshotError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let state_path = dir.join(STATE_FILE);
    let memory_path = dir.join(MEMORY_FILE);
    let payload = serde_json::to_vec(snapshot).map_err(|source| SnapshotError::Parse {
        path: state_path.clone(),
        source,
    })?;
    let partial = dir.join(format!(".{MEMORY_FILE}.tmp-{}", std::process::id()));
    let committed = write_memory(&partial, memory).and_then(|()| {
        match std::fs::remove_file(&state_path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(io(&state_path)(err)),
        }
        std::fs::rename(&partial, &memory_path).map_err(io(&memory_path))
    });
    if let Err(err) = committed {
        let _ = std::fs::remove_file(&partial);
        return Err(err);
    }
    file::write_atomic(&state_path, &file::encode(&payload)).map_err(|source| SnapshotError::File {
        path: state_path,
        source,
    })
}

/// Writes guest memory to `path`, synced. Pages an anonymous region never had backed are left
/// as holes (a sparse file: they read as the zeroes they are), so an idle guest's snapshot
/// costs what it uses, not what it was given.
fn write_memory(path: &Path, memory: &GuestMemoryMmap) -> Result<(), SnapshotError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io(path))?;
    let failed = |err: vm_memory::GuestMemoryError| io(path)(std::io::Error::other(err.to_string()));
    let mut file_offset = 0u64;
    for region in memory.iter() {
        let runs = match crate::resident::backed_pages(region) {
            Some(bitmap) => page_runs(&bitmap, region.len()),
            None => vec![(0, region.len())],
        };
        for (start, len) in runs {
            let len = usize::try_from(len)
                .map_err(|_| io(path)(std::io::Error::other("a region larger than the address space")))?;
            file.seek(SeekFrom::Start(file_offset + start)).map_err(io(path))?;
            memory
                .write_all_volatile_to(region.start_addr().unchecked_add(start), &mut file, len)
                .map_err(failed)?;
        }
        file_offset += region.len();
    }
    // The holes at the end, if any.
    file.set_len(file_offset).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

/// The (offset, length) byte runs of the pages set in `bitmap`, within a region of `len` bytes.
fn page_runs(bitmap: &[u64], len: u64) -> Vec<(u64, u64)> {
    const PAGE: u64 = 4096;
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (word_index, &word) in bitmap.iter().enumerate() {
        let mut word = word;
        while word != 0 {
            let page = word_index as u64 * 64 + u64::from(word.trailing_zeros());
            word &= word - 1;
            let start = page * PAGE;
            if start >= len {
                break;
            }
            let size = (len - start).min(PAGE);
            match runs.last_mut() {
                Some((run_start, run_len)) if *run_start + *run_len == start => *run_len += size,
                _ => runs.push((start, size)),
            }
        }
    }
    runs
}

/// The config a snapshot's VM was built from (to restore it as it was, or to derive the config
/// to restore it into).
pub fn saved_config(dir: impl AsRef<Path>) -> Result<VmConfig, SnapshotError> {
    read(dir.as_ref()).map(|snapshot| snapshot.config)
}

/// Checks and parses the bytes of a state file as a restore would (for the fuzz target).
#[cfg(feature = "testing")]
pub fn parse_state_file(bytes: &[u8]) -> Result<(), String> {
    let payload = file::decode(bytes).map_err(|err| err.to_string())?;
    serde_json::from_slice::<VmSnapshot>(payload)
        .map(drop)
        .map_err(|err| err.to_string())
}

/// Reads and checks a snapshot's state file.
pub(crate) fn read(dir: &Path) -> Result<VmSnapshot, SnapshotError> {
    let path = dir.join(STATE_FILE);
    let payload = file::read(&path).map_err(|source| SnapshotError::File {
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&payload).map_err(|source| SnapshotError::Parse { path, source })
}

/// Checks that the VM `config` describes (with `devices`, the (id, type) of every virtio
/// device in order) has the snapshot's shape.
pub(crate) fn check_shape(
    snapshot: &VmSnapshot,
    config: &VmConfig,
    devices: &[(String, u32)],
) -> Result<(), SnapshotError> {
    let differ = |what: &str, saved: String, now: String| {
        if saved == now {
            Ok(())
        } else {
            Err(SnapshotError::Shape {
                what: what.into(),
                saved,
                now,
            })
        }
    };
    differ("vCPUs", snapshot.vcpus.len().to_string(), config.vcpus.to_string())?;
    differ(
        "memory",
        snapshot.config.memory.to_string(),
        config.memory.to_string(),
    )?;
    let transport = |t: VirtioTransport| format!("{t:?}").to_lowercase();
    differ(
        "virtio transport",
        transport(snapshot.config.virtio_transport),
        transport(config.virtio_transport),
    )?;
    let list = |devices: &mut dyn Iterator<Item = (&String, u32)>| {
        devices
            .map(|(id, device_type)| format!("{id} (type {device_type})"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    differ(
        "virtio devices",
        list(&mut snapshot.virtio.iter().map(|d| (&d.id, d.device_type))),
        list(&mut devices.iter().map(|(id, t)| (id, *t))),
    )
}

/// Maps the snapshot's memory file as the guest's RAM: private, so the guest's writes stay in
/// this process and the snapshot is never changed; pages are read in as the guest touches
/// them.
pub(crate) fn map_memory(dir: &Path, snapshot: &VmSnapshot) -> Result<GuestMemoryMmap, SnapshotError> {
    let path = dir.join(MEMORY_FILE);
    let file = File::open(&path).map_err(io(&path))?;
    let expected: u64 = snapshot.memory_regions.iter().map(|(_, len)| len).sum();
    let found = file.metadata().map_err(io(&path))?.len();
    if found != expected {
        return Err(io(&path)(std::io::Error::other(format!(
            "holds {found} bytes, the snapshot's RAM is {expected}"
        ))));
    }
    let mut offset = 0u64;
    let mut regions = Vec::new();
    for &(start, len) in &snapshot.memory_regions {
        let size = usize::try_from(len)
            .map_err(|_| io(&path)(std::io::Error::other("a region larger than the address space")))?;
        let clone = file.try_clone().map_err(io(&path))?;
        let mapping = MmapRegion::build(
            Some(FileOffset::new(clone, offset)),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_NORESERVE | libc::MAP_PRIVATE,
        )
        .map_err(|err| io(&path)(std::io::Error::other(err.to_string())))?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(start)).ok_or_else(|| {
            io(&path)(std::io::Error::other(format!("region at {start:#x} wraps around")))
        })?;
        regions.push(region);
        offset += len;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|err| io(&path)(std::io::Error::other(err.to_string())))
}

/// Reads `len` bytes of guest memory at `addr` (for tests and checks).
#[cfg(any(test, feature = "testing"))]
pub fn read_guest(memory: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    let _ = memory.read_slice(&mut out, GuestAddress(addr));
    out
}

#[cfg(test)]
mod tests {
    use super::page_runs;

    #[test]
    fn set_pages_become_byte_runs() {
        // Pages 0, 1, 2 and 5, then 63 and 64 across a word, then 130 (the region's last,
        // 1 KiB long).
        let bitmap = [(1 << 63) | 0b100111, 1, 1 << 2];
        let len = 130 * 4096 + 1024;
        assert_eq!(
            page_runs(&bitmap, len),
            [(0, 3 * 4096), (5 * 4096, 4096), (63 * 4096, 2 * 4096), (130 * 4096, 1024)]
        );
        assert_eq!(page_runs(&[u64::MAX], 4096), [(0, 4096)], "bits past the end are ignored");
        assert!(page_runs(&[0, 0], 1 << 20).is_empty());
    }
}
