//! The kinds of thread Keel filters (also compiled into `build.rs`, which compiles Keel's
//! filters ahead of time).

use std::fmt;

/// The kinds of thread Keel filters, each with its own list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ThreadKind {
    /// A vCPU: `KVM_RUN` and the devices' register accesses it makes (MMIO and port I/O
    /// exits), device activation.
    Vcpu,
    /// The event loop: queue notifications (ioeventfds), NICs, consoles, vsock, timers.
    EventLoop,
    /// A disk's I/O thread: reads, writes, flushes (io_uring or plain calls).
    BlockIo,
    /// A VMM program's own thread that builds, snapshots and migrates VMs (the `keel`
    /// program's main thread): broad, but no `execve`, `ptrace`, mounts or module loading.
    Vmm,
    /// A VMM program's API server: sockets and the calls of its async runtime.
    Api,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 5] = [
        ThreadKind::Vcpu,
        ThreadKind::EventLoop,
        ThreadKind::BlockIo,
        ThreadKind::Vmm,
        ThreadKind::Api,
    ];

    /// The kind's name in reports and in JSON filter files (`vcpu`, `events`, `blk`, `vmm`,
    /// `api`).
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::EventLoop => "events",
            ThreadKind::BlockIo => "blk",
            ThreadKind::Vmm => "vmm",
            ThreadKind::Api => "api",
        }
    }
}

impl fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
