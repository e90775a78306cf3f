//! Wiring a VM together: [`VmBuilder`] turns a [`VmConfig`] into a ready [`Vm`].
//!
//! This is the one place that knows every part: it validates the config, maps guest memory,
//! loads the kernel, creates the KVM VM and its vCPUs, puts the legacy devices on the buses and
//! connects their interrupts. [`Vm`] then owns all of it and tears it down when dropped.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use devices::bus::{Bus, BusKind};
use devices::legacy::{
    AcpiPm, CmosRtc, EventFdTrigger, Ged, Serial, SystemClock, ACPI_PM_PORT_BASE, ACPI_PM_PORT_LEN,
    COM1_IRQ, COM1_PORT_BASE, GED_PORT_BASE, GED_PORT_LEN, I8042, I8042_PORT_BASE, I8042_PORT_LEN,
    RTC_PORT_BASE, RTC_PORT_LEN, SERIAL_PORT_LEN,
};
use devices::virtio::block::DiskBackend;
use devices::virtio::console::VirtioConsole;
use devices::virtio::net::NetBackend;
use devices::virtio::{NotifyStats, VirtioDevice};
use devices::GuestMemoryMmap;
use event_manager::MutEventSubscriber;
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Cap, VcpuFd, VmFd};
use log::{debug, warn};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::acpi;
use crate::boot::{self, BootLayout};
use crate::boot_timer::{self, BootTimer};
use crate::config::{ConsoleConfig, SerialInput, SerialOutput, VirtioTransport, VmConfig};
use crate::console::ConsoleSocket;
use crate::counters::{self, CounterSources, ExitCounters, TransportOf};
#[cfg(feature = "testing")]
use crate::device_manager::pci::{PciAttachment, VirtioNotifyCount};
use crate::device_manager::{self, Resources, VirtioMmioDevices, VirtioPciDevices, GED_IRQ};
use crate::event_loop::{EventLoop, EventLoopBuilder, SharedConsoleInput, SharedSerial};
use crate::memory;
use crate::seccomp::{Filters, SeccompPolicy, ThreadKind};
use crate::snapshot::{self, SnapshotSources};
use crate::state::{self, Control, ExitReason, HandleDevices, VmHandle, VmState};
use crate::vcpu::{self, VcpuSetup};
use crate::vm::{self, IoBuses};
use crate::Error;

/// A device line (reset, power off) that ends the VM with a given exit reason, synchronously
/// from the vCPU thread whose I/O raised it.
struct ExitTrigger(Arc<Control>, ExitReason);

impl vm_superio::Trigger for ExitTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request_exit(self.1.clone());
        Ok(())
    }
}

/// The port-I/O bus with the legacy devices: COM1, the i8042 reset line, the ACPI power
/// management registers (power off, reset), the ACPI Generic Event Device (power button) and
/// the CMOS RTC.
fn legacy_devices(
    control: &Arc<Control>,
    serial: SharedSerial,
    ged: SharedGed,
    rtc: SharedRtc,
) -> Result<Bus, Error> {
    let mut pio = Bus::new(BusKind::Pio);
    pio.insert("com1", COM1_PORT_BASE, SERIAL_PORT_LEN, serial)?;
    pio.insert("ged", GED_PORT_BASE, GED_PORT_LEN, ged)?;
    pio.insert(
        "i8042",
        I8042_PORT_BASE,
        I8042_PORT_LEN,
        Arc::new(Mutex::new(I8042::new(ExitTrigger(
            control.clone(),
            ExitReason::Reset,
        )))),
    )?;
    pio.insert(
        "acpi-pm",
        ACPI_PM_PORT_BASE,
        ACPI_PM_PORT_LEN,
        Arc::new(Mutex::new(AcpiPm::new(
            ExitTrigger(control.clone(), ExitReason::Shutdown),
            ExitTrigger(control.clone(), ExitReason::Reset),
        ))),
    )?;
    pio.insert("rtc", RTC_PORT_BASE, RTC_PORT_LEN, rtc)?;
    Ok(pio)
}

/// The CMOS RTC, shared by the port-I/O bus and snapshots.
type SharedRtc = Arc<Mutex<CmosRtc<SystemClock>>>;

/// Builds a [`Vm`] from a [`VmConfig`], with optional caller-supplied serial I/O.
///
/// ```no_run
/// use vmm_core::{ExitReason, VmBuilder, VmConfig};
///
/// let mut config = VmConfig::new("/path/to/vmlinux");
/// config.vcpus = 2;
/// let vm = VmBuilder::new(config).serial_output(std::io::stderr()).build()?;
/// assert_eq!(vm.run()?, ExitReason::Reset);
/// # Ok::<(), vmm_core::Error>(())
/// ```
pub struct VmBuilder {
    config: VmConfig,
    serial_output: Option<Box<dyn Write + Send>>,
    serial_input: Option<OwnedFd>,
    console_socket: Option<ConsoleSocket>,
    virtio_console_socket: Option<ConsoleSocket>,
    boot_timer: Option<BootTimer>,
    /// TAP descriptors for config NICs, by NIC id.
    tap_fds: Vec<(String, OwnedFd)>,
    /// Devices the embedder added, in order (or why one could not be made).
    extra_devices: Vec<Result<device_manager::VirtioDeviceEntry, Error>>,
    /// A snapshot directory to restore instead of booting the kernel.
    restore_from: Option<RestoreFrom>,
    /// The operator's limits.
    limits: crate::config::Limits,
    /// The seccomp filters the VM's threads install.
    seccomp: SeccompPolicy,
}

/// Where a restored VM's memory and state come from.
enum RestoreFrom {
    /// A snapshot directory.
    Snapshot(PathBuf),
    /// Memory and state received in a live migration.
    Migration(GuestMemoryMmap, Box<snapshot::VmSnapshot>),
}

impl VmBuilder {
    /// Starts from `config`.
    pub fn new(config: VmConfig) -> Self {
        VmBuilder {
            config,
            serial_output: None,
            serial_input: None,
            console_socket: None,
            virtio_console_socket: None,
            boot_timer: None,
            tap_fds: Vec::new(),
            extra_devices: Vec::new(),
            restore_from: None,
            limits: crate::config::Limits::default(),
            seccomp: SeccompPolicy::default(),
        }
    }

    /// Holds the VM to `limits` (a cap on vCPUs per host CPU, on devices, on queue sizes) on
    /// top of what the host has: whatever the limits, guest memory that does not fit in the
    /// host's RAM, and a VM that needs more file descriptors than `RLIMIT_NOFILE` leaves, are
    /// refused ([`Error::Limit`], naming the limit).
    ///
    /// ```no_run
    /// use vmm_core::config::Limits;
    /// use vmm_core::{VmBuilder, VmConfig};
    ///
    /// let limits = Limits { max_vcpus_per_host_cpu: Some(2), ..Limits::default() };
    /// let vm = VmBuilder::new(VmConfig::new("vmlinux")).limits(limits).build()?;
    /// # Ok::<(), vmm_core::Error>(())
    /// ```
    pub fn limits(mut self, limits: crate::config::Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Chooses the seccomp filters the VM's threads install (see [`crate::seccomp`]): Keel's
    /// (the default), none ([`SeccompPolicy::Off`], for debugging), or the embedder's. A
    /// policy that does not compile fails [`VmBuilder::build`].
    pub fn seccomp(mut self, policy: SeccompPolicy) -> Self {
        self.seccomp = policy;
        self
    }

    /// Builds the VM from the snapshot in `dir` (see [`VmHandle::snapshot`]) instead of booting
    /// the config's kernel: guest memory is the snapshot's (mapped privately, read in as the
    /// guest touches it), and the vCPUs and devices continue where they were when it was taken,
    /// once [`Vm::start`] runs them. The config must describe a VM of the same shape (vCPUs,
    /// memory, transport, devices by id and type; the error names what differs) but may put the
    /// devices' back ends elsewhere: a disk at a new path, a NIC on another TAP device. Its
    /// kernel and command line are not used.
    ///
    /// ```no_run
    /// use vmm_core::{VmBuilder, VmConfig};
    ///
    /// let config = VmConfig::new("vmlinux"); // the same shape as the snapshotted VM
    /// let mut vm = VmBuilder::new(config).restore("/var/lib/vm1/snapshot").build()?;
    /// vm.start()?; // the guest goes on from where it was
    /// # Ok::<(), vmm_core::Error>(())
    /// ```
    pub fn restore(mut self, dir: impl Into<PathBuf>) -> Self {
        self.restore_from = Some(RestoreFrom::Snapshot(dir.into()));
        self
    }

    /// Builds the VM from memory and state a live migration brought.
    pub(crate) fn restore_migrated(
        mut self,
        memory: GuestMemoryMmap,
        snapshot: snapshot::VmSnapshot,
    ) -> Self {
        self.restore_from = Some(RestoreFrom::Migration(memory, Box::new(snapshot)));
        self
    }

    /// The config the VM is built from.
    pub(crate) fn config(&self) -> &VmConfig {
        &self.config
    }

    /// Gives the config's NIC `id` the TAP device behind `fd` (opened with
    /// `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, e.g. passed by a privileged manager over a Unix
    /// socket, so the VMM itself needs no `CAP_NET_ADMIN`). The NIC's `tap` must be empty. The VM
    /// owns `fd` from now on; pass a duplicate to keep one.
    ///
    /// ```no_run
    /// use std::os::fd::OwnedFd;
    /// use vmm_core::config::NetConfig;
    /// use vmm_core::{VmBuilder, VmConfig};
    ///
    /// # fn tap_from_manager() -> OwnedFd { unimplemented!() }
    /// let mut config = VmConfig::new("vmlinux");
    /// config.nets.push(NetConfig {
    ///     id: "net0".into(),
    ///     tap: String::new(),
    ///     mac: None,
    ///     rx_rate_limiter: None,
    ///     tx_rate_limiter: None,
    /// });
    /// let tap: OwnedFd = tap_from_manager(); // e.g. received with SCM_RIGHTS
    /// let vm = VmBuilder::new(config).tap_fd("net0", tap).build()?;
    /// # Ok::<(), vmm_core::Error>(())
    /// ```
    pub fn tap_fd(mut self, id: impl Into<String>, fd: OwnedFd) -> Self {
        self.tap_fds.push((id.into(), fd));
        self
    }

    /// Adds a virtio-blk disk on a backend of the embedder's own (an NBD or RBD client, an
    /// in-memory disk), after the config's disks. `id` is the disk's serial number (at most 20
    /// bytes). A backend whose size is not a whole number of 512-byte sectors is refused when
    /// the VM is built.
    ///
    /// ```
    /// use devices::virtio::block::DiskBackend;
    /// use vmm_core::{VmBuilder, VmConfig};
    ///
    /// struct Zeroes;
    /// impl DiskBackend for Zeroes {
    ///     fn size(&self) -> std::io::Result<u64> { Ok(1 << 20) }
    ///     fn read_at(&mut self, _: u64, buf: &mut [u8]) -> std::io::Result<()> { buf.fill(0); Ok(()) }
    ///     fn write_at(&mut self, _: u64, _: &[u8]) -> std::io::Result<()> { Ok(()) }
    ///     fn flush(&mut self) -> std::io::Result<()> { Ok(()) }
    ///     fn discard(&mut self, _: u64, _: u64) -> std::io::Result<()> { Ok(()) }
    ///     fn write_zeroes(&mut self, _: u64, _: u64, _: bool) -> std::io::Result<()> { Ok(()) }
    /// }
    /// let builder = VmBuilder::new(VmConfig::new("vmlinux")).disk("scratch", Zeroes, false);
    /// # drop(builder);
    /// ```
    pub fn disk<D: DiskBackend + 'static>(mut self, id: &str, backend: D, read_only: bool) -> Self {
        let entry = devices::virtio::block::VirtioBlock::with_backend_id(backend, id, read_only)
            .map(|mut block| {
                // On the disk's own thread: an embedder's backend may be slow (network).
                block.set_io_mode(devices::virtio::block::IoMode::Thread);
                device_manager::VirtioDeviceEntry::new(id, block)
            })
            .map_err(|err| {
                Error::Device(device_manager::DeviceManagerError::Create {
                    id: id.to_string(),
                    detail: err.to_string(),
                })
            });
        self.extra_devices.push(entry);
        self
    }

    /// Adds a virtio-net card on a backend of the embedder's own (a vhost-less switch port, a
    /// socket, a userspace network stack), after the config's NICs. The backend sees whole
    /// frames with their 12-byte virtio-net header in front.
    ///
    /// ```
    /// use devices::virtio::net::NullBackend;
    /// use vmm_core::{VmBuilder, VmConfig};
    ///
    /// // A NIC that is present but unplugged.
    /// let builder = VmBuilder::new(VmConfig::new("vmlinux"))
    ///     .net("net9", NullBackend, Some([0x52, 0x54, 0, 0, 0, 9]));
    /// # drop(builder);
    /// ```
    pub fn net<B: NetBackend + 'static>(
        mut self,
        id: &str,
        backend: B,
        mac: Option<[u8; 6]>,
    ) -> Self {
        let entry = (|| {
            let mac = mac
                .map(devices::virtio::net::MacAddress::new)
                .transpose()
                .map_err(|err| err.to_string())?;
            devices::virtio::net::Net::with_backend(id.to_string(), mac, Box::new(backend))
                .map_err(|err| err.to_string())
        })()
        .map(|net| device_manager::VirtioDeviceEntry::nic(id, net))
        .map_err(|detail| {
            Error::Device(device_manager::DeviceManagerError::Create {
                id: id.to_string(),
                detail,
            })
        });
        self.extra_devices.push(entry);
        self
    }

    /// Adds a virtio device of the embedder's own (any [`VirtioDevice`]), after the config's
    /// devices; it is placed on the config's transport like the others.
    ///
    /// ```
    /// use devices::virtio::rng::VirtioRng;
    /// use vmm_core::{VmBuilder, VmConfig};
    ///
    /// let builder = VmBuilder::new(VmConfig::new("vmlinux")).virtio_device("rng1", VirtioRng::new());
    /// # drop(builder);
    /// ```
    pub fn virtio_device<D: VirtioDevice + 'static>(mut self, id: &str, device: D) -> Self {
        self.extra_devices
            .push(Ok(device_manager::VirtioDeviceEntry::new(id, device)));
        self
    }

    /// Adds a virtio device of the embedder's own that also has host-side event sources (a
    /// socket, a TAP): the VM's event loop drives it through its
    /// [`MutEventSubscriber`] side.
    ///
    /// ```no_run
    /// use devices::virtio::vsock::{Vsock, VsockConfig};
    /// use vmm_core::{VmBuilder, VmConfig};
    ///
    /// // A second vsock device, listening on its own socket.
    /// let vsock = Vsock::new(VsockConfig {
    ///     id: "vsock1".into(),
    ///     guest_cid: 4,
    ///     uds_path: "/run/vm1-side.vsock".into(),
    /// })?;
    /// let builder = VmBuilder::new(VmConfig::new("vmlinux")).virtio_device_with_events("vsock1", vsock);
    /// # drop(builder);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn virtio_device_with_events<D>(mut self, id: &str, device: D) -> Self
    where
        D: VirtioDevice + MutEventSubscriber + 'static,
    {
        self.extra_devices
            .push(Ok(device_manager::VirtioDeviceEntry::with_events(
                id, device,
            )));
        self
    }

    /// Records the end of each build stage, the vCPUs' start and the boot vCPU's first exit
    /// from the guest on `timer` (see [`BootTimer`](crate::BootTimer)).
    pub fn boot_timer(mut self, timer: BootTimer) -> Self {
        self.boot_timer = Some(timer);
        self
    }

    /// Serves the serial console on `socket` (output and input) instead of
    /// `config.serial`. The socket outlives the VM: pass a clone of the same socket to the VM
    /// built after a reboot and an attached client stays attached.
    pub fn console_socket(mut self, socket: ConsoleSocket) -> Self {
        self.console_socket = Some(socket);
        self
    }

    /// Serves the virtio console (`config.console`, which must be set) on `socket`, as
    /// [`VmBuilder::console_socket`] does for the serial port.
    pub fn virtio_console_socket(mut self, socket: ConsoleSocket) -> Self {
        self.virtio_console_socket = Some(socket);
        self
    }

    /// Sends the guest's serial output to `writer` instead of `config.serial.output`.
    pub fn serial_output(mut self, writer: impl Write + Send + 'static) -> Self {
        self.serial_output = Some(Box::new(writer));
        self
    }

    /// Reads serial input from `fd` (a pipe, socket or terminal) instead of
    /// `config.serial.input`.
    pub fn serial_input(mut self, fd: impl Into<OwnedFd>) -> Self {
        self.serial_input = Some(fd.into());
        self
    }

    /// Validates the config, creates the VM and loads the kernel. The vCPUs do not run until
    /// [`Vm::start`].
    ///
    /// The stages, in order: the guest image and the console (everything that can fail on the
    /// user's input: config, memory, device back ends, ACPI tables, kernel, console files; no
    /// KVM yet), the KVM VM, the device wiring, then the vCPUs.
    pub fn build(mut self) -> Result<Vm, Error> {
        let timer = self.boot_timer.take();
        let mark = |stage| boot_timer::mark(timer.as_ref(), stage);
        let restore = match self.restore_from.take() {
            Some(from) => {
                // The kernel is not loaded: only the devices' back ends must exist here.
                self.config.check()?;
                self.config.check_host_devices()?;
                // A snapshot's memory is mapped once the limits passed (below).
                Some(match from {
                    RestoreFrom::Snapshot(dir) => {
                        let saved = snapshot::read(&dir)?;
                        (Err(dir), saved)
                    }
                    RestoreFrom::Migration(memory, saved) => (Ok(memory), *saved),
                })
            }
            None => {
                self.config.validate()?;
                None
            }
        };
        state::install_kick_handler().map_err(|err| Error::Io(err.into()))?;
        let filters = self.seccomp.filters()?;
        mark("config validated");
        let serial = ConsoleEnds::open(
            &self.config.serial.output,
            &self.config.serial.input,
            self.serial_output.take(),
            self.serial_input.take(),
            self.console_socket.take(),
        )?;
        let console = match &self.config.console {
            Some(config) => Some(VirtioConsoleParts::create(
                config,
                self.virtio_console_socket.take(),
            )?),
            None => None,
        };
        mark("console opened");
        let mut extra = std::mem::take(&mut self.extra_devices)
            .into_iter()
            .collect::<Result<Vec<_>, Error>>()?;
        let embedders = extra.len();
        extra.extend(console.iter().map(VirtioConsoleParts::entry));
        crate::config::check_limits(
            &self.config,
            self.config.virtio_devices() + embedders,
            embedders,
            &self.limits,
            &crate::config::HostResources::detect(),
        )?;
        // Guest memory is mapped only now, after the limits passed.
        let (restored_memory, restore) = match restore {
            Some((Ok(memory), saved)) => (Some(memory), Some(saved)),
            Some((Err(dir), saved)) => (Some(snapshot::map_memory(&dir, &saved)?), Some(saved)),
            None => (None, None),
        };
        let saved = restored_memory.zip(restore.as_ref());
        let mut image = GuestImage::prepare(
            &self.config,
            timer.as_ref(),
            &mut self.tap_fds,
            extra,
            saved,
        )?;
        for entry in &image.virtio {
            let sizes = crate::sync::lock(&entry.device).queue_max_sizes().to_vec();
            crate::config::check_queue_sizes(&entry.id, &sizes, &self.limits)?;
        }
        // Threads a device starts (a disk's I/O thread) install the blk filter first, on top
        // of the one they inherit from the thread that started them.
        if filters.has(ThreadKind::BlockIo) {
            let blk = filters.clone();
            let hook: devices::virtio::ThreadStart =
                Arc::new(move || blk.apply_or_exit(ThreadKind::BlockIo));
            for entry in &image.virtio {
                crate::sync::lock(&entry.device).set_thread_start(hook.clone());
            }
        }
        let kvm = vm::open_kvm(self.config.vcpus)?;
        // Shared with the MSI-X routes, which update GSI routing from vCPU threads.
        let vm_fd = Arc::new(vm::create_vm(&kvm, &image.memory)?);
        mark("KVM VM created, memory registered");
        let control = Control::new(self.config.vcpus as usize);
        let snapshot = restore.as_ref();
        let wired = wire_devices(
            &control,
            &vm_fd,
            &mut image,
            serial,
            console,
            &self.config,
            snapshot,
        )?;
        mark("devices wired");
        let GuestImage { memory, boot, .. } = image;
        let vcpus = match (snapshot, &boot) {
            (Some(saved), _) => {
                saved.vm.apply(&vm_fd)?;
                let vcpus = restore_vcpus(&vm_fd, saved)?;
                wired.handle_devices.snapshot.raise_after_restore();
                vcpus
            }
            (None, Some(boot)) => create_vcpus(&kvm, &vm_fd, self.config.vcpus, boot)?,
            (None, None) => {
                return Err(Error::Snapshot(snapshot::SnapshotError::State(
                    "no kernel loaded and no snapshot".into(),
                )))
            }
        };
        mark("vCPUs created");
        let msr_indices = Arc::new(
            kvm.get_msr_index_list()
                .map(|list| list.as_slice().to_vec())
                .map_err(|source| vm::VmError::Kvm {
                    op: "KVM_GET_MSR_INDEX_LIST",
                    source,
                })?,
        );
        match &boot {
            Some(boot) => debug!(
                "vm built: {} vCPUs, {}, kernel {:?} entered via {:?} at {:#x}",
                self.config.vcpus,
                self.config.memory,
                boot.format,
                boot.entry.protocol,
                boot.entry.rip
            ),
            None => debug!(
                "vm restored: {} vCPUs, {}",
                self.config.vcpus, self.config.memory
            ),
        }
        Ok(Vm {
            control,
            threads: Vec::new(),
            pending_vcpus: vcpus,
            event_loop: None,
            events: Some(wired.events),
            buses: wired.buses,
            pci_notify_stats: wired.pci_notify_stats,
            handle_devices: wired.handle_devices,
            boot_timer: timer,
            msr_indices,
            boot,
            filters,
            vm_fd,
            memory,
        })
    }
}

/// Puts the legacy devices and the virtio devices (on the transport the config chose) on
/// the VM's buses, connects their interrupts and queue notifications to KVM, and collects
/// the event-loop subscribers (device back ends, notifiers, serial input).
fn wire_devices(
    control: &Arc<Control>,
    vm_fd: &Arc<VmFd>,
    image: &mut GuestImage,
    serial_ends: ConsoleEnds,
    console: Option<VirtioConsoleParts>,
    config: &VmConfig,
    restore: Option<&snapshot::VmSnapshot>,
) -> Result<WiredDevices, Error> {
    let (serial_output, serial_feed) = serial_ends.split();
    let serial_line = irq_line(vm_fd, COM1_IRQ, "KVM_IRQFD (COM1)")?;
    let serial = match restore {
        Some(saved) => Serial::from_state(serial_line, serial_output, &saved.serial),
        None => Serial::new(serial_line, serial_output),
    }
    .map_err(Error::Io)?;
    let serial: SharedSerial = Arc::new(Mutex::new(serial));
    let ged_line = irq_line(vm_fd, GED_IRQ, "KVM_IRQFD (GED)")?;
    let ged: SharedGed = Arc::new(Mutex::new(match restore {
        Some(saved) => Ged::from_state(&saved.ged, ged_line),
        None => Ged::new(ged_line),
    }));
    let mut rtc = CmosRtc::new(SystemClock);
    if let Some(saved) = restore {
        rtc.restore(&saved.rtc)
            .map_err(|detail| snapshot::SnapshotError::Unsupported {
                id: "rtc".into(),
                detail,
            })?;
    }
    let rtc: SharedRtc = Arc::new(Mutex::new(rtc));
    let mut pio = legacy_devices(control, serial.clone(), ged.clone(), rtc.clone())?;
    let mut mmio_transports = Vec::new();
    let mut mmio = Bus::new(BusKind::Mmio);
    let mut events = EventLoopBuilder::new()?;
    let mut pci_devices = Vec::new();
    for (index, entry) in image.virtio.iter().enumerate() {
        match image.mmio_plan.devices().get(index) {
            Some(info) => {
                let (transport, notifier) = VirtioMmioDevices::attach(
                    info,
                    vm_fd,
                    &mut mmio,
                    &image.memory,
                    entry.device.clone(),
                )?;
                if let Some(notifier) = notifier {
                    events.add_subscriber(Box::new(notifier));
                }
                mmio_transports.push((entry.id.clone(), entry.device_type(), transport));
            }
            None => pci_devices.push(entry.device.clone()),
        }
    }
    for subscriber in std::mem::take(&mut image.subscribers) {
        events.add_subscriber(subscriber);
    }
    let mut pci_notify_stats = Vec::new();
    let mut pci_functions = Vec::new();
    if let Some(plan) = &image.pci_plan {
        let attached = plan.attach(
            vm_fd,
            &mut pio,
            &mut mmio,
            &image.memory,
            pci_devices,
            &mut image.resources,
        )?;
        for notifier in attached.notifiers {
            events.add_subscriber(Box::new(notifier));
        }
        pci_notify_stats = attached.notify_stats;
        pci_functions = attached.functions;
    }
    let virtio = image
        .virtio
        .iter()
        .map(|entry| {
            (
                entry.id.clone(),
                counters::virtio_kind(entry.device_type()),
                entry.device.clone(),
            )
        })
        .collect();
    let mut sockets = Vec::new();
    if let Some(socket) = &serial_feed.socket {
        sockets.push(("com1".to_string(), socket.clone()));
    }
    let counters_serial = serial.clone();
    let serial_input: SharedConsoleInput = serial;
    serial_feed.serve(&mut events, serial_input)?;
    if let Some(console) = console {
        if let Some(socket) = &console.feed.socket {
            sockets.push((console.id.clone(), socket.clone()));
        }
        let input: SharedConsoleInput = console.device;
        console.feed.serve(&mut events, input)?;
    }
    let nets = image
        .virtio
        .iter()
        .filter_map(|entry| Some((entry.id.clone(), entry.net.clone()?)))
        .collect();
    let pci_functions: Vec<_> = pci_functions
        .into_iter()
        .map(|(id, slot, function)| {
            let device_type = crate::sync::lock(&function).virtio_device_type();
            (id, device_type, slot, function)
        })
        .collect();
    if let Some(saved) = restore {
        restore_virtio(saved, &mmio_transports, &pci_functions, &pio)?;
    }
    let transports = mmio_transports
        .iter()
        .map(|(id, _, transport)| (id.clone(), TransportOf::Mmio(transport.clone())))
        .chain(
            pci_functions
                .iter()
                .map(|(id, _, _, function)| (id.clone(), TransportOf::Pci(function.clone()))),
        )
        .collect();
    let snapshot_sources = SnapshotSources {
        vm_fd: vm_fd.clone(),
        memory: image.memory.clone(),
        config: Mutex::new(config.clone()),
        serial: counters_serial.clone(),
        rtc,
        mmio: mmio_transports,
        pci: pci_functions,
    };
    let counters = CounterSources {
        exits: (0..control.vcpu_count())
            .map(|_| Arc::new(ExitCounters::default()))
            .collect(),
        serial: counters_serial,
        sockets,
        virtio,
        transports,
    };
    Ok(WiredDevices {
        buses: Arc::new(IoBuses { pio, mmio }),
        events,
        pci_notify_stats,
        handle_devices: Arc::new(HandleDevices {
            ged,
            counters,
            nets,
            snapshot: snapshot_sources,
            migration: Mutex::new(None),
        }),
    })
}

/// Puts each virtio device back into its saved state (the shape was checked: same devices, same
/// order, same transport).
fn restore_virtio(
    saved: &snapshot::VmSnapshot,
    mmio: &[(
        String,
        u32,
        Arc<Mutex<devices::virtio::mmio::MmioTransport>>,
    )],
    pci: &[PciFunction],
    pio: &Bus,
) -> Result<(), Error> {
    let missing = |id: &str| snapshot::SnapshotError::Unsupported {
        id: id.to_string(),
        detail: "not on the transport or in the slot it was saved in".into(),
    };
    for device in &saved.virtio {
        let device_error = |source| snapshot::SnapshotError::Device {
            id: device.id.clone(),
            source,
        };
        match &device.transport {
            snapshot::TransportState::Mmio(state) => {
                let (_, _, transport) = mmio
                    .iter()
                    .find(|(id, _, _)| id == &device.id)
                    .ok_or_else(|| missing(&device.id))?;
                crate::sync::lock(transport)
                    .restore_state(state)
                    .map_err(device_error)?;
            }
            snapshot::TransportState::Pci { slot, function } => {
                let (_, _, placed, transport) = pci
                    .iter()
                    .find(|(id, _, _, _)| id == &device.id)
                    .ok_or_else(|| missing(&device.id))?;
                if placed != slot {
                    return Err(missing(&device.id).into());
                }
                crate::sync::lock(transport)
                    .restore_state(function)
                    .map_err(device_error)?;
                // The BARs and the command register go through the bus, as the guest's own
                // writes did, so that it decodes each BAR where the guest had put it (and the
                // queue notifications follow BAR 0).
                replay_pci_routing(pio, *slot, &function.registers);
            }
        }
    }
    Ok(())
}

/// A virtio-PCI function: device id, virtio type, slot on bus 0, the function.
type PciFunction = (
    String,
    u32,
    u8,
    Arc<Mutex<devices::virtio::pci::VirtioPciDevice>>,
);

/// Writes the BAR registers, then the command register, of the function in `slot` through the
/// PCI configuration ports, as a guest would.
fn replay_pci_routing(pio: &Bus, slot: u8, registers: &[u32]) {
    use devices::pci::bus::PCI_CONFIG_IO_PORT;
    use devices::pci::configuration::PciConfiguration;
    let write = |reg: usize, value: u32| {
        let Ok(reg) = u32::try_from(reg) else { return };
        let address = 1u32 << 31 | u32::from(slot) << 11 | reg << 2;
        pio.write(PCI_CONFIG_IO_PORT, &address.to_le_bytes());
        pio.write(PCI_CONFIG_IO_PORT + 4, &value.to_le_bytes());
    };
    let routing: Vec<usize> = (0..registers.len())
        .filter(|&reg| PciConfiguration::is_routing_register(reg))
        .collect();
    // The BARs first (registers 4 to 9), then the command register (1) turns decoding on.
    for &reg in routing.iter().filter(|&&reg| reg != 1) {
        write(reg, registers[reg]);
    }
    for &reg in routing.iter().filter(|&&reg| reg == 1) {
        write(reg, registers[reg]);
    }
}

/// Refuses two devices with one id (an embedder's device may repeat a config id), and ids a
/// config could not have.
fn check_unique_ids(devices: &[device_manager::VirtioDeviceEntry]) -> Result<(), Error> {
    let mut seen = std::collections::HashSet::new();
    for entry in devices {
        let valid = !entry.id.is_empty()
            && entry
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !valid || !seen.insert(entry.id.as_str()) {
            return Err(Error::Device(device_manager::DeviceManagerError::Create {
                id: entry.id.clone(),
                detail: if valid {
                    "another device has this id".into()
                } else {
                    "ids are non-empty ASCII letters, digits, '-', '_' or '.'".into()
                },
            }));
        }
    }
    Ok(())
}

/// An edge-triggered interrupt line: an eventfd KVM injects as `gsi` when signalled.
fn irq_line(vm_fd: &VmFd, gsi: u32, op: &'static str) -> Result<EventFdTrigger, Error> {
    let fd = EventFd::new(EFD_NONBLOCK).map_err(Error::Io)?;
    vm_fd
        .register_irqfd(&fd, gsi)
        .map_err(|source| vm::VmError::Kvm { op, source })?;
    Ok(EventFdTrigger::new(fd))
}

/// The power button's device, shared by the port-I/O bus and the VM's handles.
type SharedGed = Arc<Mutex<Ged<EventFdTrigger>>>;

/// What the VM will run, prepared before KVM is touched: guest memory holding the ACPI tables
/// and the loaded kernel, the virtio devices with their host back ends open, and where each
/// device goes. Any error here is about the user's input, and nothing of KVM exists yet.
struct GuestImage {
    memory: GuestMemoryMmap,
    /// Where the kernel went (none when restoring a snapshot).
    boot: Option<BootLayout>,
    virtio: Vec<device_manager::VirtioDeviceEntry>,
    /// Event-loop subscribers of the device back ends, taken by the wiring stage.
    subscribers: Vec<Box<dyn MutEventSubscriber + Send>>,
    /// Where virtio-mmio devices go (empty with the PCI transport).
    mmio_plan: VirtioMmioDevices,
    /// The PCI bus plan (only with the PCI transport).
    pci_plan: Option<VirtioPciDevices>,
    /// What is left of the guest's addresses, lines and GSIs after planning.
    resources: Resources,
}

impl GuestImage {
    /// `tap_fds`: TAP descriptors for the config's NICs. `extra`: devices the embedder added and
    /// the virtio console, placed after the config's.
    fn prepare(
        config: &VmConfig,
        timer: Option<&BootTimer>,
        tap_fds: &mut Vec<(String, OwnedFd)>,
        extra: Vec<device_manager::VirtioDeviceEntry>,
        restore: Option<(GuestMemoryMmap, &snapshot::VmSnapshot)>,
    ) -> Result<Self, Error> {
        let (memory, restore) = match restore {
            Some((memory, saved)) => (memory, Some(saved)),
            None => (memory::create_guest_memory(config.memory.as_bytes())?, None),
        };
        boot_timer::mark(timer, "guest memory mapped");
        let mut virtio = device_manager::create_virtio_devices(config, tap_fds)?;
        virtio.extend(extra);
        check_unique_ids(&virtio)?;
        boot_timer::mark(timer, "device back ends opened");
        let subscribers = virtio
            .iter_mut()
            .filter_map(|entry| entry.subscriber.take())
            .collect();
        let planned: Vec<(String, u32)> = virtio
            .iter()
            .map(|entry| (entry.id.clone(), entry.device_type()))
            .collect();
        if let Some(saved) = restore {
            snapshot::check_shape(saved, config, &planned)?;
        }
        // One plan is empty, by the transport the config chose.
        let mut resources = Resources::new(config.memory.as_bytes())
            .map_err(device_manager::DeviceManagerError::from)?;
        let (mmio_plan, pci_plan) = match config.virtio_transport {
            VirtioTransport::Mmio => (VirtioMmioDevices::plan(&planned, &mut resources)?, None),
            VirtioTransport::Pci => (
                VirtioMmioDevices::default(),
                Some(VirtioPciDevices::plan(&planned, &mut resources)?),
            ),
        };
        // A restored guest's memory already holds its ACPI tables and kernel.
        let boot = if restore.is_some() {
            None
        } else {
            let acpi = acpi::write_tables_with_pci(
                &memory,
                config.vcpus,
                mmio_plan.devices(),
                pci_plan.as_ref().map(VirtioPciDevices::host),
            )?;
            let boot = if config.virtio_mmio_cmdline && !mmio_plan.devices().is_empty() {
                let mut with_devices = config.clone();
                with_devices.cmdline =
                    format!("{} {}", config.cmdline, mmio_plan.cmdline_entries());
                boot::load(&memory, &with_devices, Some(acpi.rsdp))?
            } else {
                boot::load(&memory, config, Some(acpi.rsdp))?
            };
            boot_timer::mark(timer, "ACPI tables written, kernel loaded");
            Some(boot)
        };
        Ok(GuestImage {
            memory,
            boot,
            virtio,
            subscribers,
            mmio_plan,
            pci_plan,
            resources,
        })
    }
}

/// A console's ends (the serial port's or the virtio console's), opened before KVM: a bad
/// output path is the user's error.
struct ConsoleEnds {
    output: Box<dyn Write + Send>,
    input: Option<OwnedFd>,
    /// The console socket serving output and input, when there is one.
    socket: Option<ConsoleSocket>,
}

impl ConsoleEnds {
    /// Opens what `output` and `input` name, unless the caller supplied a writer, an input
    /// descriptor or a socket instead.
    fn open(
        output: &SerialOutput,
        input: &SerialInput,
        given_output: Option<Box<dyn Write + Send>>,
        given_input: Option<OwnedFd>,
        given_socket: Option<ConsoleSocket>,
    ) -> Result<Self, Error> {
        let mut socket = given_socket;
        if given_output.is_none() && socket.is_none() {
            if let SerialOutput::Socket(path) = output {
                socket = Some(ConsoleSocket::bind(path)?);
            }
        }
        let writer: Box<dyn Write + Send> = match (given_output, &socket) {
            (Some(writer), _) => writer,
            (None, Some(socket)) => Box::new(socket.writer()),
            (None, None) => match output {
                SerialOutput::Stdout => Box::new(std::io::stdout()),
                SerialOutput::Null | SerialOutput::Socket(_) => Box::new(std::io::sink()),
                SerialOutput::File(path) => Box::new(
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .map_err(|source| Error::SerialFile {
                            path: path.clone(),
                            source,
                        })?,
                ),
            },
        };
        let input = match (given_input, &socket, input) {
            (Some(fd), _, _) => Some(fd),
            // Input comes from the socket's client.
            (None, Some(_), _) | (None, None, SerialInput::None) => None,
            (None, None, SerialInput::Stdin) => Some(
                std::io::stdin()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(Error::Io)?,
            ),
        };
        Ok(ConsoleEnds {
            output: writer,
            input,
            socket,
        })
    }

    /// The writer, and what feeds input.
    fn split(self) -> (Box<dyn Write + Send>, ConsoleFeed) {
        (
            self.output,
            ConsoleFeed {
                input: self.input,
                socket: self.socket,
            },
        )
    }
}

/// Where a console's input comes from: the socket's clients or an input descriptor.
struct ConsoleFeed {
    input: Option<OwnedFd>,
    socket: Option<ConsoleSocket>,
}

impl ConsoleFeed {
    /// Adds the event-loop work that feeds input to `device`.
    fn serve(self, events: &mut EventLoopBuilder, device: SharedConsoleInput) -> Result<(), Error> {
        if let Some(socket) = &self.socket {
            events.add_console(socket, device.clone())?;
        }
        if let Some(input) = self.input {
            events.add_serial_input(device, input)?;
        }
        Ok(())
    }
}

/// The virtio console device and what feeds its input.
struct VirtioConsoleParts {
    id: String,
    device: Arc<Mutex<VirtioConsole<Box<dyn Write + Send>>>>,
    feed: ConsoleFeed,
}

impl VirtioConsoleParts {
    fn create(config: &ConsoleConfig, socket: Option<ConsoleSocket>) -> Result<Self, Error> {
        let ends = ConsoleEnds::open(&config.output, &config.input, None, None, socket)?;
        let (output, feed) = ends.split();
        let device = VirtioConsole::new(output).map_err(Error::Io)?;
        Ok(VirtioConsoleParts {
            id: config.id.clone(),
            device: Arc::new(Mutex::new(device)),
            feed,
        })
    }

    fn entry(&self) -> device_manager::VirtioDeviceEntry {
        device_manager::VirtioDeviceEntry::shared(&self.id, self.device.clone())
    }
}

/// The devices on their buses, and the event-loop work that serves them.
struct WiredDevices {
    buses: Arc<IoBuses>,
    events: EventLoopBuilder,
    /// Queue notification counters of the virtio-PCI devices, by device id.
    pci_notify_stats: Vec<(String, Arc<NotifyStats>)>,
    /// The power button and counter sources, for handles.
    handle_devices: Arc<HandleDevices>,
}

/// Creates and configures the vCPUs (CPUID, MSRs, registers for the boot entry), in order.
fn create_vcpus(
    kvm: &kvm_ioctls::Kvm,
    vm_fd: &VmFd,
    count: u32,
    boot: &BootLayout,
) -> Result<Vec<VcpuFd>, Error> {
    let supported_cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|source| vm::VmError::Kvm {
            op: "KVM_GET_SUPPORTED_CPUID",
            source,
        })?;
    let setup = VcpuSetup {
        supported_cpuid: &supported_cpuid,
        vcpu_count: count,
        tsc_deadline: kvm.check_extension(Cap::TscDeadlineTimer),
        entry: &boot.entry,
    };
    let mut vcpus = Vec::with_capacity(count as usize);
    for index in 0..count {
        let fd = vm_fd
            .create_vcpu(u64::from(index))
            .map_err(|source| vcpu::VcpuError::Kvm {
                index,
                op: "KVM_CREATE_VCPU",
                source,
            })?;
        vcpu::configure(&fd, index, &setup)?;
        vcpus.push(fd);
    }
    Ok(vcpus)
}

/// Creates the vCPUs of a restored VM, each put into its saved state.
fn restore_vcpus(vm_fd: &VmFd, saved: &snapshot::VmSnapshot) -> Result<Vec<VcpuFd>, Error> {
    let mut vcpus = Vec::with_capacity(saved.vcpus.len());
    for (state, index) in saved.vcpus.iter().zip(0u32..) {
        let fd = vm_fd
            .create_vcpu(u64::from(index))
            .map_err(|source| vcpu::VcpuError::Kvm {
                index,
                op: "KVM_CREATE_VCPU",
                source,
            })?;
        state
            .apply(&fd)
            .map_err(|err| snapshot::SnapshotError::Vcpu {
                index: index as usize,
                detail: err.to_string(),
            })?;
        vcpus.push(fd);
    }
    Ok(vcpus)
}

/// A VM: built by [`VmBuilder`], started with [`Vm::start`], controlled through
/// [`Vm::handle`] from any thread.
///
/// Dropping a `Vm` stops it, joins its threads and closes its file descriptors and mappings.
pub struct Vm {
    control: Arc<Control>,
    threads: Vec<JoinHandle<()>>,
    pending_vcpus: Vec<VcpuFd>,
    event_loop: Option<EventLoop>,
    events: Option<EventLoopBuilder>,
    buses: Arc<IoBuses>,
    /// Queue notification counters of the virtio-PCI devices, by device id.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))] // read by the testing accessors
    pci_notify_stats: Vec<(String, Arc<NotifyStats>)>,
    handle_devices: Arc<HandleDevices>,
    /// Marks the vCPU start and the boot vCPU's first exit, when set.
    boot_timer: Option<BootTimer>,
    /// The MSRs a snapshot saves.
    msr_indices: Arc<Vec<u32>>,
    /// Where the kernel was loaded (none for a restored VM).
    #[cfg_attr(not(feature = "testing"), allow(dead_code))] // read by the testing accessors
    boot: Option<BootLayout>,
    /// The seccomp filters its threads install.
    filters: Filters,
    // Declared after everything that uses them, so they are dropped last.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))] // kept alive; read by tests
    vm_fd: Arc<VmFd>,
    #[cfg_attr(not(feature = "testing"), allow(dead_code))] // kept mapped; read by tests
    memory: GuestMemoryMmap,
}

impl Vm {
    #[cfg(feature = "testing")]
    /// Where the kernel, initrd and boot structures were placed (none for a restored VM).
    pub fn boot_layout(&self) -> Option<&BootLayout> {
        self.boot.as_ref()
    }

    #[cfg(feature = "testing")]
    /// The guest's memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    #[cfg(feature = "testing")]
    /// The KVM VM file descriptor.
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm_fd
    }

    #[cfg(feature = "testing")]
    /// The port-I/O and MMIO buses vCPU exits are dispatched to (tests use them to act as the
    /// guest would, e.g. reading PCI config space through port 0xCFC).
    pub fn io_buses(&self) -> &IoBuses {
        &self.buses
    }

    #[cfg(feature = "testing")]
    /// How many queue notifications each virtio-PCI device received so far, on a vCPU thread
    /// and through KVM ioeventfds (empty with the virtio-mmio transport).
    pub fn virtio_pci_notify_counts(&self) -> Vec<VirtioNotifyCount> {
        PciAttachment::notify_counts(&self.pci_notify_stats)
    }

    /// A handle to pause, resume, stop and watch the VM from other threads.
    pub fn handle(&self) -> VmHandle {
        VmHandle {
            control: self.control.clone(),
            devices: self.handle_devices.clone(),
        }
    }

    /// The current state.
    pub fn state(&self) -> VmState {
        self.control.state()
    }

    /// Starts one thread per vCPU (and the event loop when there is serial input).
    pub fn start(&mut self) -> Result<(), Error> {
        if self.pending_vcpus.is_empty() {
            return Err(Error::State(state::StateError::InvalidTransition {
                action: "start",
                state: self.control.state(),
            }));
        }
        if let Some(events) = self.events.take() {
            if !events.is_empty() {
                self.event_loop = Some(events.start(self.filters.clone())?);
            }
        }
        let vcpus = std::mem::take(&mut self.pending_vcpus);
        let count = vcpus.len();
        self.control.mark_started(count);
        let mut first_exit = self.boot_timer.take();
        // vCPU indexes are u32 (the config allows at most 254 vCPUs).
        for (fd, index) in vcpus.into_iter().zip(0u32..) {
            let slot = index as usize;
            let run = vcpu::RunContext {
                index,
                buses: self.buses.clone(),
                control: self.control.clone(),
                exits: self.handle_devices.counters.exits[slot].clone(),
                first_exit: if index == 0 { first_exit.clone() } else { None },
                msr_indices: self.msr_indices.clone(),
            };
            let filters = self.filters.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("keel-vcpu-{index}"))
                .spawn(move || {
                    filters.apply_or_exit(ThreadKind::Vcpu);
                    vcpu::run(fd, run)
                });
            match spawned {
                Ok(thread) => self.threads.push(thread),
                Err(err) => {
                    // The threads already started must not wait for this one.
                    self.control.request_exit(ExitReason::Failed {
                        vcpu: Some(index),
                        detail: format!("cannot spawn vCPU thread: {err}"),
                    });
                    for never_started in slot..count {
                        self.control.vcpu_exited(never_started);
                    }
                    return Err(Error::Io(err));
                }
            }
        }
        if let Some(timer) = first_exit.take() {
            timer.mark("vCPU threads started");
        }
        Ok(())
    }

    /// Waits for the VM to exit, then joins its threads.
    pub fn wait(&mut self) -> ExitReason {
        let reason = self.control.wait_exit(None).unwrap_or(ExitReason::Stopped);
        self.join();
        reason
    }

    /// Waits up to `timeout` for the VM to exit; joins its threads when it did.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitReason> {
        let reason = self.control.wait_exit(Some(timeout))?;
        self.join();
        Some(reason)
    }

    /// Starts the VM and waits for it to exit.
    pub fn run(mut self) -> Result<ExitReason, Error> {
        self.start()?;
        Ok(self.wait())
    }

    fn join(&mut self) {
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                warn!("a vCPU thread panicked");
            }
        }
        if let Some(mut event_loop) = self.event_loop.take() {
            event_loop.stop();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.control.request_exit(ExitReason::Stopped);
            self.join();
        }
    }
}
