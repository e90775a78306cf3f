//! Bad user input is refused before a VM exists, with an error naming the field or file.
//! None of these need KVM: validation and kernel loading happen before /dev/kvm is opened.

use std::io::Write;
use std::path::PathBuf;

use vmm_core::boot::LoadError;
use vmm_core::{BootProtocol, Error, MemSize, VmBuilder, VmConfig};

fn temp_file(name: &str, contents: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-bad-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(contents)
        .unwrap();
    path
}

fn build_error(config: VmConfig) -> Error {
    match VmBuilder::new(config).build() {
        Ok(_) => panic!("a bad config was accepted"),
        Err(err) => err,
    }
}

fn config_field(config: VmConfig) -> &'static str {
    match build_error(config) {
        Error::Config(err) => err.field,
        other => panic!("expected a config error, got {other}"),
    }
}

#[test]
fn each_bad_field_is_named_in_the_error() {
    let kernel = temp_file("kernel.bin", b"\x7fELF");
    let base = VmConfig::new(&kernel);

    let mut c = base.clone();
    c.vcpus = 0;
    assert_eq!(config_field(c), "vcpus");
    let mut c = base.clone();
    c.vcpus = 255;
    assert_eq!(config_field(c), "vcpus");
    let mut c = base.clone();
    c.memory = MemSize::mib(1);
    assert_eq!(config_field(c), "memory");
    let mut c = base.clone();
    c.memory = MemSize::bytes((128 << 20) + 100);
    assert_eq!(config_field(c), "memory");
    let mut c = base.clone();
    c.kernel = "/no/such/kernel".into();
    assert_eq!(config_field(c), "kernel");
    let mut c = base.clone();
    c.cmdline = "a".repeat(5000);
    assert_eq!(config_field(c), "cmdline");
    let mut c = base.clone();
    c.memory = MemSize::mib(16);
    c.initrd = Some(temp_file("huge-initrd", &vec![0u8; 17 << 20]));
    let err = build_error(c);
    assert!(
        matches!(&err, Error::Config(e) if e.field == "initrd"),
        "{err}"
    );
    assert!(err.to_string().contains("does not fit"), "{err}");
}

#[test]
fn a_corrupted_kernel_fails_before_boot_with_its_path() {
    let garbage = temp_file("garbage-kernel", &[0x5a; 4096]);
    let err = build_error(VmConfig::new(&garbage));
    assert!(
        matches!(err, Error::Load(LoadError::UnknownFormat(_))),
        "{err}"
    );
    assert!(err.to_string().contains("garbage-kernel"), "{err}");

    // An ELF header that lies about its program headers.
    let mut elf = vec![0u8; 256];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2; // 64-bit
    elf[5] = 1; // little endian
    elf[6] = 1;
    elf[16] = 2; // ET_EXEC
    elf[18] = 0x3e; // x86-64
    let truncated = temp_file("truncated.elf", &elf);
    let err = build_error(VmConfig::new(&truncated));
    assert!(
        matches!(err, Error::Load(LoadError::Kernel { .. })),
        "{err}"
    );

    // A bzImage header cut short.
    let mut bz = vec![0u8; 0x400];
    bz[0x202..0x206].copy_from_slice(b"HdrS");
    let bz = temp_file("cut.bzImage", &bz);
    let err = build_error(VmConfig::new(&bz));
    assert!(
        matches!(err, Error::Load(LoadError::Kernel { .. })),
        "{err}"
    );
}

#[test]
fn pvh_requires_an_elf_with_the_note() {
    let mut bz = vec![0u8; 0x400];
    bz[0x202..0x206].copy_from_slice(b"HdrS");
    let bz = temp_file("pvh.bzImage", &bz);
    let mut config = VmConfig::new(&bz);
    config.boot_protocol = BootProtocol::Pvh;
    let err = build_error(config);
    assert!(
        matches!(err, Error::Load(LoadError::PvhNeedsElf(_))),
        "{err}"
    );
}

#[test]
fn a_nic_with_no_tap_or_a_descriptor_that_is_not_a_tap_is_refused_by_name() {
    use std::os::fd::AsFd;
    let kernel = temp_file("kernel-for-nic.bin", b"\x7fELF");
    let nic = || vmm_core::config::NetConfig {
        id: "nic0".into(),
        tap: String::new(),
        mac: None,
        rx_rate_limiter: None,
        tx_rate_limiter: None,
    };
    // No TAP name and no descriptor for it.
    let mut nameless = VmConfig::new(&kernel);
    nameless.nets.push(nic());
    let err = build_error(nameless).to_string();
    assert!(
        err.contains("nic0") && err.contains("no TAP descriptor"),
        "{err}"
    );
    // A descriptor that is a regular file, not a TAP: refused, the caller's own stays open.
    let file = std::fs::File::open(&kernel).unwrap();
    let mut not_tap = VmConfig::new(&kernel);
    not_tap.nets.push(nic());
    let err = VmBuilder::new(not_tap)
        .tap_fd("nic0", file.as_fd().try_clone_to_owned().unwrap())
        .build()
        .err()
        .expect("a regular file is not a TAP")
        .to_string();
    assert!(
        err.contains("nic0") && err.contains("TAP descriptor"),
        "{err}"
    );
    assert!(
        file.metadata().is_ok(),
        "the caller's descriptor stays usable"
    );
    // A descriptor for a NIC the config does not have.
    let err = VmBuilder::new(VmConfig::new(&kernel))
        .tap_fd("nic9", file.as_fd().try_clone_to_owned().unwrap())
        .build()
        .err()
        .expect("no such NIC")
        .to_string();
    assert!(
        err.contains("nic9") && err.contains("no NIC with that id"),
        "{err}"
    );
}

#[test]
fn devices_added_through_the_builder_are_checked_with_the_config_ones() {
    let kernel = temp_file("kernel-for-extra.bin", b"\x7fELF");
    let mut config = VmConfig::new(&kernel);
    config.rng = Some(vmm_core::config::RngConfig {
        id: "rng0".into(),
        rate_limiter: None,
    });
    // The same id as a config device.
    let err = VmBuilder::new(config)
        .virtio_device("rng0", devices::virtio::rng::VirtioRng::new())
        .build()
        .err()
        .expect("duplicate id")
        .to_string();
    assert!(
        err.contains("rng0") && err.contains("another device has this id"),
        "{err}"
    );
    // A disk backend that is not whole sectors.
    struct Odd;
    impl devices::virtio::block::DiskBackend for Odd {
        fn size(&self) -> std::io::Result<u64> {
            Ok(1000)
        }
        fn read_at(&mut self, _: u64, _: &mut [u8]) -> std::io::Result<()> {
            Ok(())
        }
        fn write_at(&mut self, _: u64, _: &[u8]) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
        fn discard(&mut self, _: u64, _: u64) -> std::io::Result<()> {
            Ok(())
        }
        fn write_zeroes(&mut self, _: u64, _: u64, _: bool) -> std::io::Result<()> {
            Ok(())
        }
    }
    let err = VmBuilder::new(VmConfig::new(&kernel))
        .disk("odd", Odd, false)
        .build()
        .err()
        .expect("1000 bytes is not whole sectors")
        .to_string();
    assert!(err.contains("odd") && err.contains("1000"), "{err}");
}

#[test]
fn a_console_file_that_cannot_be_created_fails_before_kvm_with_its_path() {
    // No KVM needed: the console is opened with the rest of the user's input, before /dev/kvm.
    // A kernel that loads, so the console is the only bad input.
    let kernel = testkit::build_test_guest().unwrap();
    let mut config = VmConfig::new(&kernel);
    config.serial.output = vmm_core::config::SerialOutput::File("/no/such/dir/console.log".into());
    let err = build_error(config);
    assert!(matches!(err, Error::SerialFile { .. }), "{err}");
    assert!(
        err.to_string().contains("/no/such/dir/console.log"),
        "{err}"
    );
}
