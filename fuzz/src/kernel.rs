//! Kernel loading: a user names any file as the kernel (`--kernel`, `kernel` in the config), and
//! Keel parses it as an ELF (PVH note, program headers) or a bzImage (setup header, protocol
//! version, sizes) and writes it and the boot structures into guest memory. Any bytes must give
//! a loaded kernel or a [`vmm_core::boot::LoadError`], never a panic or a write outside guest
//! memory (which the guest-memory API refuses anyway).

use std::io::Write;
use std::sync::OnceLock;

use devices::GuestMemoryMmap;
use vmm_core::{BootProtocol, VmConfig};

/// Guest memory for every input (64 MiB, created once; what one input leaves there does not
/// matter to the next).
fn memory() -> Option<&'static GuestMemoryMmap> {
    static MEMORY: OnceLock<Option<GuestMemoryMmap>> = OnceLock::new();
    MEMORY
        .get_or_init(|| vmm_core::memory::create_guest_memory(64 << 20).ok())
        .as_ref()
}

/// The input's first byte picks the boot protocol; the rest is the kernel file.
pub fn kernel_image(data: &[u8]) {
    let Some((&choice, image)) = data.split_first() else {
        return;
    };
    let Some(mem) = memory() else {
        return;
    };
    // Small inputs become bzImage-looking files often enough when the magic is planted: the
    // loader's header checks (HdrS at 0x202, boot flag at 0x1fe) are then exercised past the
    // first test.
    let mut kernel = image.to_vec();
    if choice & 0x80 != 0 && kernel.len() >= 0x210 {
        kernel[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        kernel[0x202..0x206].copy_from_slice(b"HdrS");
    } else if choice & 0x40 != 0 && kernel.len() >= 4 {
        kernel[..4].copy_from_slice(b"\x7fELF");
    }
    let Ok(mut file) = tempfile() else {
        return;
    };
    if file.1.write_all(&kernel).is_err() {
        return;
    }
    let mut config = VmConfig::new(&file.0);
    config.boot_protocol = match choice & 3 {
        0 => BootProtocol::Auto,
        1 => BootProtocol::Pvh,
        _ => BootProtocol::Linux64,
    };
    let _ = vmm_core::boot::load(mem, &config, Some(0xe_0000));
    let _ = std::fs::remove_file(&file.0);
}

/// A fresh file in the temporary directory, unique to this process and call.
fn tempfile() -> std::io::Result<(std::path::PathBuf, std::fs::File)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "keel-fuzz-kernel-{}-{}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::Relaxed)
    ));
    let file = std::fs::File::create(&path)?;
    Ok((path, file))
}
