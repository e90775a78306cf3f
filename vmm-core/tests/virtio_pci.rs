//! Virtio over PCI at the level of the platform (the test guest drives the devices end to end in
//! `virtio_pci_guest.rs`):
//!
//! - the ACPI tables describe the host bridge and ECAM, and `iasl -d` reads them back
//!   (`KEEL-IASL-SKIP` without iasl, a failure with `KEEL_REQUIRE_TOOLS=1`);
//! - on /dev/kvm, a VM with virtio-PCI devices builds, its config space answers through the
//!   VM's own port and MMIO buses (0xCF8/0xCFC and ECAM), BAR 0 answers at the pre-assigned
//!   address, programming an MSI-X vector installs a GSI route in KVM, and the test guest boots
//!   with PCI devices present and exits cleanly;
//! - each queue's notification address has a KVM ioeventfd, and moving BAR 0 through config
//!   space moves it in KVM (probed by registering a second ioeventfd at an address: KVM answers
//!   EEXIST exactly where one is registered).

use std::time::Duration;

use devices::pci::msix::MsiMessage;
use devices::virtio::pci::queue_notify_offset;
use devices::GuestMemoryMmap;
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use testkit::{require_kvm, SharedBuffer};
use vm_memory::{Bytes, GuestAddress};
use vmm_core::config::{DiskConfig, RngConfig};
use vmm_core::device_manager::interrupts::GsiRoutingTable;
use vmm_core::device_manager::{PciHostInfo, Resources, VirtioPciDevices};
use vmm_core::{acpi, layout};
use vmm_core::{BootProtocol, ExitReason, MemSize, VirtioTransport, VmBuilder, VmConfig};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
    bytes
}

fn table(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
    let header = read(mem, addr, 36);
    let len = u32::from_le_bytes(header[4..8].try_into().unwrap()) as usize;
    let bytes = read(mem, addr, len);
    assert_eq!(
        bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)),
        0,
        "checksum of {:?}",
        &bytes[..4]
    );
    bytes
}

#[test]
fn acpi_describes_the_host_bridge_and_ecam_and_iasl_agrees() {
    let mem = vmm_core::memory::create_guest_memory(64 << 20).unwrap();
    let host = PciHostInfo::for_memory(64 << 20);
    let tables = acpi::write_tables_with_pci(&mem, 2, &[], Some(&host)).unwrap();
    assert!(tables.end <= layout::ACPI_END);
    let mcfg_addr = tables.mcfg.expect("an MCFG with PCI");
    let xsdt = table(&mem, tables.xsdt);
    let listed: Vec<u64> = xsdt[36..]
        .chunks_exact(8)
        .map(|e| u64::from_le_bytes(e.try_into().unwrap()))
        .collect();
    assert!(listed.contains(&mcfg_addr), "XSDT lists the MCFG");
    let mcfg = table(&mem, mcfg_addr);
    assert_eq!(&mcfg[..4], b"MCFG");
    // One allocation structure after the 44-byte header: base, segment, start and end bus.
    assert_eq!(mcfg.len(), 44 + 16);
    assert_eq!(
        u64::from_le_bytes(mcfg[44..52].try_into().unwrap()),
        layout::PCI_ECAM_START
    );
    assert_eq!(&mcfg[52..56], &[0, 0, 0, 0], "segment 0, buses 0..=0");
    // Without PCI there is no MCFG (the virtio-mmio tables are unchanged).
    let plain = acpi::write_tables(&mem, 2, &[]).unwrap();
    assert_eq!(plain.mcfg, None);

    if !testkit::iasl::available() {
        return;
    }
    let mem = vmm_core::memory::create_guest_memory(64 << 20).unwrap();
    let tables = acpi::write_tables_with_pci(&mem, 2, &[], Some(&host)).unwrap();
    let dir = std::env::temp_dir().join(format!("keel-pci-acpi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dsdt = testkit::iasl::disassemble(&dir, "DSDT", &table(&mem, tables.dsdt));
    for want in [
        "PNP0A08",
        "PNP0A03",
        "_SEG",
        "_BBN",
        "PNP0C02",
        "0x0CF8",
        "0xC0000000",
        "0xCFFFFFFF",
        "0xE0000000",
    ] {
        assert!(dsdt.contains(want), "DSDT lacks {want}:\n{dsdt}");
    }
    assert!(dsdt.contains("WordBusNumber"), "{dsdt}");
    assert!(dsdt.contains("QWordMemory"), "64-bit window:\n{dsdt}");
    let mcfg = testkit::iasl::disassemble(&dir, "MCFG", &table(&mem, tables.mcfg.unwrap()));
    assert!(mcfg.contains("00000000E0000000"), "{mcfg}");
}

const TIMEOUT: Duration = Duration::from_secs(60);

fn pci_config(with_devices: bool) -> VmConfig {
    let mut config = VmConfig::new(testkit::build_test_guest().unwrap());
    config.memory = MemSize::mib(128);
    config.boot_protocol = BootProtocol::Pvh;
    config.cmdline = "keel.cpus=1".into();
    config.virtio_transport = VirtioTransport::Pci;
    if with_devices {
        let dir = std::env::temp_dir().join(format!("keel-virtio-pci-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let image = dir.join("disk.img");
        std::fs::write(&image, vec![0u8; 64 * 512]).unwrap();
        config.disks.push(DiskConfig {
            id: "disk0".into(),
            path: image,
            read_only: false,
            direct: false,
            rate_limiter: None,
        });
        config.rng = Some(RngConfig {
            id: "rng0".into(),
            rate_limiter: None,
        });
    }
    config
}

/// A VM (not started) with a disk and an entropy device on PCI, and the plan that placed them.
fn built_with_devices() -> (vmm_core::Vm, VirtioPciDevices) {
    let config = pci_config(true);
    let plan = VirtioPciDevices::plan(
        &[("disk0".into(), 2), ("rng0".into(), 4)],
        &mut Resources::new(config.memory.as_bytes()).unwrap(),
    )
    .unwrap();
    let vm = VmBuilder::new(config)
        .serial_output(SharedBuffer::new())
        .build()
        .unwrap_or_else(|err| panic!("build: {err}"));
    (vm, plan)
}

fn config_address(device: u32, reg: u32) -> [u8; 4] {
    (1u32 << 31 | device << 11 | reg << 2).to_le_bytes()
}

#[test]
fn config_space_and_bars_answer_through_the_vms_buses_and_msix_reaches_kvm() {
    require_kvm!();
    let (vm, plan) = built_with_devices();
    let buses = vm.io_buses();
    let read_config = |device: u32, reg: u32| {
        assert!(buses.pio.write(0xcf8, &config_address(device, reg)));
        let mut data = [0u8; 4];
        assert!(buses.pio.read(0xcfc, &mut data));
        u32::from_le_bytes(data)
    };
    assert_eq!(read_config(0, 0) & 0xffff, 0x1b36, "host bridge at 00:00.0");
    assert_eq!(read_config(0, 2) >> 8, 0x06_00_00, "host bridge class");
    assert_eq!(read_config(1, 0), 0x1042_1af4, "virtio-blk at 00:01.0");
    assert_eq!(read_config(2, 0), 0x1044_1af4, "virtio-rng at 00:02.0");
    assert_eq!(read_config(3, 0), 0xffff_ffff, "empty slot");
    assert_eq!(read_config(1, 2) >> 8, 0x01_80_00);

    // ECAM sees the same functions.
    let mut data = [0u8; 4];
    assert!(buses
        .mmio
        .read(layout::PCI_ECAM_START + (2 << 15), &mut data));
    assert_eq!(u32::from_le_bytes(data), 0x1044_1af4);

    // BAR 0 is where the plan put it, and the common config answers there.
    let bar = plan.devices()[0].bar_address;
    assert_eq!(read_config(1, 4), bar as u32 | 0b100);
    let mut queues = [0u8; 2];
    assert!(buses.mmio.read(bar + 0x12, &mut queues));
    assert_eq!(u16::from_le_bytes(queues), 1, "virtio-blk has one queue");

    // Program MSI-X vector 0 of the disk and enable MSI-X: this installs the full GSI routing
    // table (defaults plus the MSI route) in KVM, which rejects malformed tables.
    let table = bar + 0x4000;
    for (offset, value) in [(0u64, 0xfee0_0000u32), (4, 0), (8, 0x0000_4041), (12, 0)] {
        assert!(buses.mmio.write(table + offset, &value.to_le_bytes()));
    }
    let mut entry = [0u8; 4];
    assert!(buses.mmio.read(table + 8, &mut entry));
    assert_eq!(u32::from_le_bytes(entry), 0x4041);
    let mut cap = read_config(1, 0x34 / 4) & 0xff;
    let mut msix = None;
    while cap != 0 {
        let header = read_config(1, cap / 4);
        if header & 0xff == 0x11 {
            msix = Some(cap);
        }
        cap = (header >> 8) & 0xff;
    }
    let msix = msix.expect("MSI-X capability");
    assert!(buses.pio.write(0xcf8, &config_address(1, msix / 4)));
    assert!(buses.pio.write(0xcfe, &0x8000u16.to_le_bytes()));
    assert_eq!(read_config(1, msix / 4) >> 31, 1, "MSI-X enabled");

    // KVM accepts the routing table Keel builds: its defaults plus MSI routes.
    let mut routing = GsiRoutingTable::new();
    let gsis = Resources::new(128 << 20).unwrap().msi_gsis(2).unwrap();
    routing.set_msi(
        gsis.start,
        MsiMessage {
            address: 0xfee0_0000,
            data: 0x41,
        },
    );
    vm.vm_fd()
        .set_gsi_routing(&routing.to_kvm().unwrap())
        .unwrap_or_else(|err| panic!("KVM_SET_GSI_ROUTING: {err}"));
}

#[test]
fn the_test_guest_boots_and_exits_with_virtio_pci_devices_present() {
    require_kvm!();
    for with_devices in [false, true] {
        let out = SharedBuffer::new();
        let mut vm = VmBuilder::new(pci_config(with_devices))
            .serial_output(out.clone())
            .build()
            .unwrap_or_else(|err| panic!("build: {err}"));
        vm.start().unwrap();
        let reason = vm
            .wait_timeout(TIMEOUT)
            .unwrap_or_else(|| panic!("guest did not exit:\n{}", out.text()));
        let console = out.text();
        assert_eq!(reason, ExitReason::Reset, "{console}");
        assert!(!console.contains("FAIL"), "{console}");
        assert!(console.contains("keel-guest: exit via=reset"), "{console}");
    }
}

/// Whether KVM has an ioeventfd (of any length) at MMIO `address`: registering another one there
/// fails with EEXIST exactly then. The probe is removed again.
fn ioeventfd_at(vm: &VmFd, address: u64) -> bool {
    let probe = EventFd::new(EFD_NONBLOCK).unwrap();
    let at = IoEventAddress::Mmio(address);
    match vm.register_ioevent(&probe, &at, NoDatamatch) {
        Ok(()) => {
            vm.unregister_ioevent(&probe, &at, NoDatamatch).unwrap();
            false
        }
        Err(err) if err.errno() == libc::EEXIST => true,
        Err(err) => panic!("KVM_IOEVENTFD at {address:#x}: {err}"),
    }
}

#[test]
fn queue_ioeventfds_follow_bar0_when_the_guest_moves_it() {
    require_kvm!();
    let (vm, plan) = built_with_devices();
    let (disk_bar, rng_bar) = (plan.devices()[0].bar_address, plan.devices()[1].bar_address);
    let notify = |bar: u64, queue: u16| bar + queue_notify_offset(queue);
    let kvm = vm.vm_fd();
    // One ioeventfd per queue at its own address (virtio-blk and virtio-rng have one queue each).
    assert!(ioeventfd_at(kvm, notify(disk_bar, 0)));
    assert!(!ioeventfd_at(kvm, notify(disk_bar, 1)), "no second queue");
    assert!(
        !ioeventfd_at(kvm, notify(disk_bar, 0) + 2),
        "exact address only"
    );
    assert!(ioeventfd_at(kvm, notify(rng_bar, 0)));

    let buses = vm.io_buses();
    let write_config = |device: u32, reg: u32, value: u32| {
        assert!(buses.pio.write(0xcf8, &config_address(device, reg)));
        assert!(buses.pio.write(0xcfc, &value.to_le_bytes()));
    };
    // Linux's order: memory decoding off, both halves of the 64-bit BAR, decoding on.
    let move_bar0 = |device: u32, to: u64| {
        write_config(device, 1, 0);
        write_config(device, 4, to as u32);
        write_config(device, 5, (to >> 32) as u32);
        write_config(device, 1, 0b110);
    };
    let num_queues = |bar: u64| {
        let mut data = [0u8; 2];
        assert!(buses.mmio.read(bar + 0x12, &mut data));
        u16::from_le_bytes(data)
    };

    let moved = disk_bar + 0x0800_0000;
    move_bar0(1, moved);
    assert!(
        !ioeventfd_at(kvm, notify(disk_bar, 0)),
        "gone from the old BAR"
    );
    assert!(
        ioeventfd_at(kvm, notify(moved, 0)),
        "registered at the new BAR"
    );
    assert!(
        ioeventfd_at(kvm, notify(rng_bar, 0)),
        "the other device's stay"
    );
    assert_eq!(num_queues(moved), 1, "the bus routes the new address");
    assert_eq!(num_queues(disk_bar), 0xffff, "and nothing at the old one");

    // Onto the rng's BAR: the bus decodes the disk nowhere, so KVM must not signal it anywhere
    // (the rng's ioeventfd is still at its address; the disk's must not be at the old one).
    move_bar0(1, rng_bar);
    assert!(!ioeventfd_at(kvm, notify(moved, 0)));
    assert_eq!(num_queues(rng_bar), 1, "the rng still answers at its BAR");
    // Above 4 GiB, inside the 64-bit window: registered again.
    let high = PciHostInfo::for_memory(128 << 20).mmio64.start;
    move_bar0(1, high);
    assert!(ioeventfd_at(kvm, notify(high, 0)));
    assert_eq!(num_queues(high), 1);

    // Notifications that reach the transport through an exit are counted as such: none so far,
    // and this bus write is one (an ioeventfd would have caught a guest's write in KVM).
    let counts = vm.virtio_pci_notify_counts();
    assert_eq!(counts.len(), 2);
    assert_eq!(
        (counts[0].id.as_str(), counts[0].vcpu, counts[0].ioeventfd),
        ("disk0", 0, 0)
    );
    assert!(buses.mmio.write(notify(high, 0), &0u16.to_le_bytes()));
    assert_eq!(vm.virtio_pci_notify_counts()[0].vcpu, 1);
}
