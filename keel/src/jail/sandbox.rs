//! Landlock, the jail's second layer: the VMM may use the files under the jail's root, but not
//! execute anything but `/keel`, make device nodes or symbolic links, or send ioctls to any
//! device but `/dev/kvm` and `/dev/net/tun`; and (kernel ABI 6 and later) it may not signal
//! processes or reach abstract Unix sockets outside its domain.
//!
//! The mount namespace and the unprivileged user are the first layer. Landlock holds even if a
//! bug lets the VMM reach a path outside its root (a descriptor opened before the jail, a
//! device node it could create), and it is enforced by the kernel after `execve`, for every
//! thread. Rules are made with the `landlock` crate in best-effort mode: a kernel without some
//! access right (or without Landlock) enforces what it has, and [`restrict`] says how much.
//! TCP is left alone (live migration may listen or connect over TCP).

use landlock::{
    Access, AccessFs, BitFlags, PathBeneath, PathFd, RestrictionStatus, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

use super::JailError;

/// The newest Landlock ABI this policy was written for; best-effort on older kernels.
const POLICY_ABI: ABI = ABI::V10;

/// Devices the VMM drives with ioctls.
const IOCTL_DEVICES: [&str; 2] = ["/dev/kvm", "/dev/net/tun"];

/// How much of the policy the kernel enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Enforced {
    /// Every right the policy names.
    Fully,
    /// Some: the kernel's Landlock is older than the policy.
    Partially,
    /// None: the kernel has no Landlock, or it is turned off.
    Not,
}

/// Restricts this process (already inside the jail's root, with `no_new_privs` set) and
/// everything it executes.
pub(super) fn restrict() -> Result<Enforced, JailError> {
    let all = AccessFs::from_all(POLICY_ABI);
    // Beneath the root: everything but executing, device nodes, symbolic links and device
    // ioctls (disk images, kernel, sockets, snapshots and logs all live there).
    let denied: BitFlags<AccessFs> = AccessFs::Execute
        | AccessFs::MakeChar
        | AccessFs::MakeBlock
        | AccessFs::MakeSym
        | AccessFs::IoctlDev;
    let beneath_root = all & !denied;
    let status = build(all, beneath_root).map_err(|err| JailError::Sys {
        call: "landlock".into(),
        source: std::io::Error::other(err.to_string()),
    })?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => Enforced::Fully,
        RulesetStatus::PartiallyEnforced => Enforced::Partially,
        _ => Enforced::Not,
    })
}

fn build(
    all: BitFlags<AccessFs>,
    beneath_root: BitFlags<AccessFs>,
) -> Result<RestrictionStatus, Box<dyn std::error::Error>> {
    let mut ruleset = Ruleset::default()
        .handle_access(all)?
        .scope(Scope::from_all(POLICY_ABI))?
        .create()?
        .add_rule(PathBeneath::new(PathFd::new("/")?, beneath_root))?
        .add_rule(PathBeneath::new(
            PathFd::new("/keel")?,
            AccessFs::Execute | AccessFs::ReadFile,
        ))?;
    for device in IOCTL_DEVICES {
        // A device the jail could not make (no /dev/net/tun on the host) is simply not there.
        if let Ok(fd) = PathFd::new(device) {
            ruleset = ruleset.add_rule(PathBeneath::new(
                fd,
                AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev,
            ))?;
        }
    }
    Ok(ruleset.restrict_self()?)
}
