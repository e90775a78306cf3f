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
fn a_tap_descriptor_that_is_closed_or_not_a_tap_is_refused_by_name() {
    use std::os::fd::AsRawFd;
    let kernel = temp_file("kernel-for-nic.bin", b"\x7fELF");
    let nic = |fd: i32| vmm_core::config::NetConfig {
        id: "nic0".into(),
        tap: String::new(),
        tap_fd: Some(fd),
        mac: None,
    };
    // A descriptor number nothing has open (above any limit this process uses).
    let mut closed = VmConfig::new(&kernel);
    closed.nets.push(nic(1 << 20));
    let err = build_error(closed).to_string();
    assert!(err.contains("nic0") && err.contains("tap_fd"), "{err}");
    // An open descriptor that is a regular file, not a TAP: refused, and left open.
    let file = std::fs::File::open(&kernel).unwrap();
    let mut not_tap = VmConfig::new(&kernel);
    not_tap.nets.push(nic(file.as_raw_fd()));
    let err = build_error(not_tap).to_string();
    assert!(err.contains("nic0"), "{err}");
    assert!(
        file.metadata().is_ok(),
        "the caller's descriptor stays usable"
    );
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
