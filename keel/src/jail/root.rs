//! The jail's root directory: the VMM binary, the files it was given, and the device nodes a
//! VMM needs, owned by the jail's user.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{chown, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use super::{JailError, Plan};

/// The device nodes a VMM opens, made in the jail with the host's numbers: KVM, TAP devices
/// (virtio-net), and `/dev/null` (for `--daemonize`).
const DEVICES: [&str; 3] = ["/dev/kvm", "/dev/net/tun", "/dev/null"];

/// The VMM's path in the jail.
pub(super) const VMM_PATH: &str = "/keel";

/// Refuses a VMM binary that needs a dynamic loader: nothing in the jail could load it.
pub(super) fn check_static(path: &Path) -> Result<(), JailError> {
    let mut header = Vec::new();
    fs::File::open(path)
        .and_then(|file| file.take(64 * 1024).read_to_end(&mut header))
        .map_err(|err| JailError::io("cannot read the VMM binary", path, err))?;
    match elf_interpreter(&header) {
        Ok(false) => Ok(()),
        Ok(true) => Err(JailError::flag(
            "--exec-file",
            format!(
                "`{}` is dynamically linked and could not start in the jail; use a static keel \
                 (cargo build --release -p keel --target x86_64-unknown-linux-musl)",
                path.display()
            ),
        )),
        Err(reason) => Err(JailError::flag(
            "--exec-file",
            format!("`{}` {reason}", path.display()),
        )),
    }
}

/// Whether the ELF image starting with `header` has a `PT_INTERP` program header.
fn elf_interpreter(header: &[u8]) -> Result<bool, &'static str> {
    const PT_INTERP: u32 = 3;
    let u16_at = |at: usize| {
        header
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        header
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |at: usize| {
        header.get(at..at + 8).map(|b| {
            let mut bytes = [0; 8];
            bytes.copy_from_slice(b);
            u64::from_le_bytes(bytes)
        })
    };
    // A 64-bit little-endian ELF file.
    if header.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
        return Err("is not a 64-bit little-endian ELF executable");
    }
    let (Some(phoff), Some(entry_size), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return Err("has a truncated ELF header");
    };
    let phoff = usize::try_from(phoff).map_err(|_| "has a program header table out of range")?;
    for index in 0..usize::from(count) {
        let at = phoff + index * usize::from(entry_size);
        match u32_at(at) {
            Some(PT_INTERP) => return Ok(true),
            Some(_) => {}
            None => return Err("has its program headers beyond its first 64 KiB"),
        }
    }
    Ok(false)
}

/// Creates the jail's root and fills it.
pub(super) fn build(plan: &Plan) -> Result<(), JailError> {
    let root = &plan.root;
    fs::create_dir_all(root).map_err(|err| JailError::io("cannot create the jail", root, err))?;
    // The VMM's sockets and files go in the root, so the jail's user owns it.
    own(root, plan)?;
    fs::set_permissions(root, fs::Permissions::from_mode(0o750))
        .map_err(|err| JailError::io("cannot set the mode of", root, err))?;

    let vmm = root.join(VMM_PATH.trim_start_matches('/'));
    // Copied, not linked: the jail's user must not be able to change the host's binary, and
    // the binary must not change under a running jail.
    let _ = fs::remove_file(&vmm);
    fs::copy(&plan.exec_file, &vmm)
        .map_err(|err| JailError::io("cannot copy the VMM binary to", &vmm, err))?;
    fs::set_permissions(&vmm, fs::Permissions::from_mode(0o755))
        .map_err(|err| JailError::io("cannot set the mode of", &vmm, err))?;

    for file in &plan.files {
        let dest = root.join(file.dest.strip_prefix("/").unwrap_or(&file.dest));
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)
                .map_err(|err| JailError::io("cannot create", parent, err))?;
        }
        let _ = fs::remove_file(&dest);
        // A hard link shares the file (a disk image keeps one copy) and its owner and mode,
        // which stay the caller's to set: changing them here would change the host's file.
        // Across file systems the file is copied, and the copy given to the jail's user.
        if fs::hard_link(&file.source, &dest).is_err() {
            fs::copy(&file.source, &dest)
                .map_err(|err| JailError::io("cannot put into the jail", &file.source, err))?;
            own(&dest, plan)?;
        }
    }

    for device in DEVICES {
        let host = Path::new(device);
        let meta = match fs::metadata(host) {
            Ok(meta) if meta.file_type().is_char_device() => meta,
            // A host without TAP support: the VMM gets no node and says so if a NIC needs it.
            _ if device != "/dev/kvm" => continue,
            Ok(_) => {
                return Err(JailError::io(
                    "is not a character device:",
                    host,
                    std::io::Error::from(std::io::ErrorKind::InvalidInput),
                ))
            }
            Err(err) => return Err(JailError::io("cannot find", host, err)),
        };
        let node = root.join(device.trim_start_matches('/'));
        if let Some(parent) = node.parent() {
            fs::create_dir_all(parent)
                .map_err(|err| JailError::io("cannot create", parent, err))?;
        }
        let _ = fs::remove_file(&node);
        super::sys::mknod_char(&node, meta.rdev(), 0o660)?;
        own(&node, plan)?;
        // mknod applied the umask.
        fs::set_permissions(&node, fs::Permissions::from_mode(0o660))
            .map_err(|err| JailError::io("cannot set the mode of", &node, err))?;
    }
    Ok(())
}

fn own(path: &Path, plan: &Plan) -> Result<(), JailError> {
    chown(path, Some(plan.uid), Some(plan.gid))
        .map_err(|err| JailError::io("cannot give the jail's user", path, err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_and_dynamic_binaries_are_told_apart() {
        // This test binary needs the dynamic loader.
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(elf_interpreter(&exe[..64 * 1024]), Ok(true));
        assert!(elf_interpreter(b"#!/bin/sh\n").is_err());
        // The same header with the PT_INTERP entry's type changed reads as static.
        let mut copy = exe[..64 * 1024].to_vec();
        let phoff = u64::from_le_bytes(copy[0x20..0x28].try_into().unwrap()) as usize;
        let size = u16::from_le_bytes([copy[0x36], copy[0x37]]) as usize;
        let count = u16::from_le_bytes([copy[0x38], copy[0x39]]) as usize;
        for i in 0..count {
            let at = phoff + i * size;
            if copy[at..at + 4] == 3u32.to_le_bytes() {
                copy[at..at + 4].copy_from_slice(&1u32.to_le_bytes());
            }
        }
        assert_eq!(elf_interpreter(&copy), Ok(false));
        // Truncated.
        assert!(elf_interpreter(&exe[..40]).is_err());
    }
}
