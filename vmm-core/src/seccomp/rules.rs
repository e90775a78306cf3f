//! Keel's allowlists, one per [`ThreadKind`].
//!
//! Measured, not guessed: every list is what Keel's own tests drive each kind of thread to do
//! (boot, every virtio device on both transports, pause, snapshot, restore, migration, the
//! API), traced with `strace -f` and then held by the tests running under the filters.
//! `ioctl` is allowed only for the request numbers a thread issues, except on the
//! [`ThreadKind::Vmm`] thread, which creates VMs and so issues most of KVM's.

use std::collections::BTreeMap;

/// `FIONBIO` (set or clear non-blocking mode), as a filter compares it: glibc's `libc` types
/// it `c_ulong`, musl's `c_int`, the kernel's number is the same (asm-generic/ioctls.h).
const FIONBIO: u64 = 0x5421;

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid2, kvm_debugregs, kvm_fpu, kvm_ioeventfd, kvm_irq_level,
    kvm_irq_routing, kvm_irqchip, kvm_irqfd, kvm_lapic_state, kvm_mp_state, kvm_msi, kvm_msrs,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

use super::ThreadKind;

const KVMIO: u32 = 0xAE;
const TUNTAP: u32 = 0x54;

ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
ioctl_iow_nr!(KVM_SET_REGS, KVMIO, 0x82, kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
ioctl_iow_nr!(KVM_SET_SREGS, KVMIO, 0x84, kvm_sregs);
ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
ioctl_iow_nr!(KVM_SET_MSRS, KVMIO, 0x89, kvm_msrs);
ioctl_ior_nr!(KVM_GET_FPU, KVMIO, 0x8c, kvm_fpu);
ioctl_iow_nr!(KVM_SET_FPU, KVMIO, 0x8d, kvm_fpu);
ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
ioctl_iow_nr!(KVM_SET_LAPIC, KVMIO, 0x8f, kvm_lapic_state);
ioctl_iow_nr!(KVM_SET_CPUID2, KVMIO, 0x90, kvm_cpuid2);
ioctl_iowr_nr!(KVM_GET_CPUID2, KVMIO, 0x91, kvm_cpuid2);
ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
ioctl_iow_nr!(KVM_SET_MP_STATE, KVMIO, 0x99, kvm_mp_state);
ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
ioctl_iow_nr!(KVM_SET_VCPU_EVENTS, KVMIO, 0xa0, kvm_vcpu_events);
ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
ioctl_iow_nr!(KVM_SET_DEBUGREGS, KVMIO, 0xa2, kvm_debugregs);
ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
ioctl_iow_nr!(KVM_SET_XSAVE, KVMIO, 0xa5, kvm_xsave);
ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
ioctl_iow_nr!(KVM_SET_XCRS, KVMIO, 0xa7, kvm_xcrs);
ioctl_io_nr!(KVM_KVMCLOCK_CTRL, KVMIO, 0xad);
ioctl_ior_nr!(KVM_GET_XSAVE2, KVMIO, 0xcf, kvm_xsave);
ioctl_iow_nr!(KVM_IRQ_LINE, KVMIO, 0x61, kvm_irq_level);
ioctl_iowr_nr!(KVM_GET_IRQCHIP, KVMIO, 0x62, kvm_irqchip);
ioctl_ior_nr!(KVM_SET_IRQCHIP, KVMIO, 0x63, kvm_irqchip);
ioctl_iowr_nr!(KVM_IRQ_LINE_STATUS, KVMIO, 0x67, kvm_irq_level);
ioctl_iow_nr!(KVM_SET_GSI_ROUTING, KVMIO, 0x6a, kvm_irq_routing);
ioctl_iow_nr!(KVM_IRQFD, KVMIO, 0x76, kvm_irqfd);
ioctl_iow_nr!(KVM_IOEVENTFD, KVMIO, 0x79, kvm_ioeventfd);
ioctl_iow_nr!(KVM_SET_CLOCK, KVMIO, 0x7b, kvm_clock_data);
ioctl_ior_nr!(KVM_GET_CLOCK, KVMIO, 0x7c, kvm_clock_data);
ioctl_ior_nr!(KVM_GET_PIT2, KVMIO, 0x9f, kvm_pit_state2);
ioctl_iow_nr!(KVM_SET_PIT2, KVMIO, 0xa0, kvm_pit_state2);
ioctl_iow_nr!(KVM_SIGNAL_MSI, KVMIO, 0xa5, kvm_msi);
ioctl_iow_nr!(TUNSETOFFLOAD, TUNTAP, 208, std::os::raw::c_uint);
ioctl_iow_nr!(TUNSETVNETHDRSZ, TUNTAP, 216, std::os::raw::c_int);

/// Calls every thread makes: memory, futexes, signals, time, exits, plain reads and writes on
/// descriptors it already has, and what the `SIGSYS` report itself needs.
const BASE: &[i64] = &[
    libc::SYS_read,
    libc::SYS_readv,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_lseek,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    // musl's stat() and lstat() (glibc's are newfstatat or statx).
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_fcntl,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_restart_syscall,
    libc::SYS_rseq,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// Starting a thread (a disk's I/O thread, started where its device is activated) and
/// letting it install its own filter on top.
const THREADS: &[i64] = &[
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_seccomp,
];

/// A disk's I/O: io_uring or plain positioned calls, flushes, discards.
const DISK_IO: &[i64] = &[
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
];

/// Events and sockets already open (consoles, vsock's host side, a NIC on a socket).
const EVENTS: &[i64] = &[
    libc::SYS_eventfd2,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_accept4,
];

/// Opening new Unix-domain connections (vsock's host side connects to `PATH_PORT`; `socket`
/// itself is allowed for `AF_UNIX` only).
const UNIX_CONNECT: &[i64] = &[libc::SYS_connect];

/// vCPU state and the VM-level calls a vCPU's exits lead to (PCI BARs moving their
/// ioeventfds, MSI-X routes, interrupt lines), and a NIC's offloads set at activation.
fn vcpu_ioctls() -> Vec<u64> {
    vec![
        KVM_RUN(),
        KVM_GET_REGS(),
        KVM_SET_REGS(),
        KVM_GET_SREGS(),
        KVM_SET_SREGS(),
        KVM_GET_MSRS(),
        KVM_SET_MSRS(),
        KVM_GET_FPU(),
        KVM_SET_FPU(),
        KVM_GET_LAPIC(),
        KVM_SET_LAPIC(),
        KVM_SET_CPUID2(),
        KVM_GET_CPUID2(),
        KVM_GET_MP_STATE(),
        KVM_SET_MP_STATE(),
        KVM_GET_VCPU_EVENTS(),
        KVM_SET_VCPU_EVENTS(),
        KVM_GET_DEBUGREGS(),
        KVM_SET_DEBUGREGS(),
        KVM_GET_XSAVE(),
        KVM_SET_XSAVE(),
        KVM_GET_XSAVE2(),
        KVM_GET_XCRS(),
        KVM_SET_XCRS(),
        KVM_KVMCLOCK_CTRL(),
        KVM_IOEVENTFD(),
        KVM_IRQFD(),
        KVM_SET_GSI_ROUTING(),
        KVM_SIGNAL_MSI(),
        KVM_IRQ_LINE(),
        KVM_IRQ_LINE_STATUS(),
        TUNSETOFFLOAD(),
        TUNSETVNETHDRSZ(),
        FIONBIO,
    ]
}

/// The event loop's: interrupts it raises, NIC offloads, non-blocking sockets.
fn event_loop_ioctls() -> Vec<u64> {
    vec![
        KVM_IRQ_LINE(),
        KVM_IRQ_LINE_STATUS(),
        KVM_SIGNAL_MSI(),
        KVM_IRQFD(),
        KVM_IOEVENTFD(),
        TUNSETOFFLOAD(),
        TUNSETVNETHDRSZ(),
        FIONBIO,
    ]
}

/// The rules of `kind`: each listed call is allowed when one of its rules matches (an empty
/// list: always). Start a custom policy from these.
pub fn rules(kind: ThreadKind) -> BTreeMap<i64, Vec<SeccompRule>> {
    let mut rules = BTreeMap::new();
    let mut allow = |calls: &[i64]| {
        for &call in calls {
            rules.insert(call, Vec::new());
        }
    };
    allow(BASE);
    match kind {
        ThreadKind::Vcpu => {
            allow(THREADS);
            allow(DISK_IO);
            allow(EVENTS);
            // pthread_kill: tgkill on glibc, tkill on musl.
            allow(&[libc::SYS_tgkill, libc::SYS_tkill]);
        }
        ThreadKind::EventLoop => {
            allow(THREADS);
            allow(DISK_IO);
            allow(EVENTS);
            allow(UNIX_CONNECT);
        }
        ThreadKind::BlockIo => {
            allow(DISK_IO);
            // Its wake-up eventfd, and the rate limiter's timer.
            allow(&[
                libc::SYS_eventfd2,
                libc::SYS_timerfd_settime,
                libc::SYS_timerfd_gettime,
            ]);
        }
        ThreadKind::Api => {
            allow(EVENTS);
        }
        ThreadKind::Vmm => {
            allow(THREADS);
            allow(DISK_IO);
            allow(EVENTS);
            allow(UNIX_CONNECT);
            allow(VMM);
        }
    }
    let ioctls = match kind {
        ThreadKind::Vcpu => Some(vcpu_ioctls()),
        ThreadKind::EventLoop => Some(event_loop_ioctls()),
        ThreadKind::BlockIo | ThreadKind::Api => Some(vec![FIONBIO]),
        ThreadKind::Vmm => None,
    };
    match ioctls {
        Some(requests) => {
            rules.insert(
                libc::SYS_ioctl,
                requests.into_iter().filter_map(arg_is(1)).collect(),
            );
        }
        None => {
            rules.insert(libc::SYS_ioctl, Vec::new());
        }
    }
    // vsock's host side opens Unix-domain connections (`PATH_PORT`): sockets of that family
    // only.
    if kind == ThreadKind::EventLoop {
        let unix = u64::try_from(libc::AF_UNIX).ok().and_then(arg_is(0));
        rules.insert(libc::SYS_socket, unix.into_iter().collect());
    }
    // `prctl` only to read the thread's name (the SIGSYS report does) and, on threads that
    // start filtered threads, for PR_SET_NO_NEW_PRIVS (which seccomp requires first) and to
    // name them.
    let mut options = vec![libc::PR_GET_NAME];
    if matches!(
        kind,
        ThreadKind::Vcpu | ThreadKind::EventLoop | ThreadKind::Vmm
    ) {
        options.extend([libc::PR_SET_NO_NEW_PRIVS, libc::PR_SET_NAME]);
    }
    let prctl = options
        .into_iter()
        .filter_map(|option| u64::try_from(option).ok())
        .filter_map(arg_is(0))
        .collect();
    rules.insert(libc::SYS_prctl, prctl);
    rules
}

/// The VMM thread's own: files, directories, sockets, processes it waits for, signals.
const VMM: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_open,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_ftruncate,
    libc::SYS_getdents64,
    libc::SYS_statfs,
    libc::SYS_fstatfs,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_access,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_getcwd,
    libc::SYS_fchmod,
    libc::SYS_chmod,
    libc::SYS_fchmodat,
    libc::SYS_flock,
    libc::SYS_pipe2,
    libc::SYS_dup,
    libc::SYS_dup2,
    libc::SYS_dup3,
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_memfd_create,
    libc::SYS_wait4,
    libc::SYS_kill,
    libc::SYS_tgkill,
    libc::SYS_tkill,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_signalfd4,
    libc::SYS_prlimit64,
    libc::SYS_sysinfo,
    libc::SYS_uname,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_umask,
];

/// A rule that argument `index` equals the value (compared on its low 32 bits, as the kernel
/// passes `ioctl` requests and `prctl` options).
fn arg_is(index: u8) -> impl Fn(u64) -> Option<SeccompRule> {
    move |value| {
        let condition =
            SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value).ok()?;
        SeccompRule::new(vec![condition]).ok()
    }
}

macro_rules! syscall_names {
    ($($name:ident),* $(,)?) => {
        /// Names of the calls a report is likely to name: Keel's own plus the ones an attacker
        /// reaches for.
        const NAMES: &[(i64, &str)] = &[$((libc::$name, stringify!($name))),*];
    };
}

syscall_names!(
    SYS_read,
    SYS_write,
    SYS_open,
    SYS_close,
    SYS_stat,
    SYS_fstat,
    SYS_lstat,
    SYS_poll,
    SYS_lseek,
    SYS_mmap,
    SYS_mprotect,
    SYS_munmap,
    SYS_brk,
    SYS_rt_sigaction,
    SYS_rt_sigprocmask,
    SYS_rt_sigreturn,
    SYS_ioctl,
    SYS_pread64,
    SYS_pwrite64,
    SYS_readv,
    SYS_writev,
    SYS_access,
    SYS_pipe,
    SYS_select,
    SYS_sched_yield,
    SYS_mremap,
    SYS_msync,
    SYS_mincore,
    SYS_madvise,
    SYS_dup,
    SYS_dup2,
    SYS_nanosleep,
    SYS_getpid,
    SYS_sendfile,
    SYS_socket,
    SYS_connect,
    SYS_accept,
    SYS_sendto,
    SYS_recvfrom,
    SYS_sendmsg,
    SYS_recvmsg,
    SYS_shutdown,
    SYS_bind,
    SYS_listen,
    SYS_getsockname,
    SYS_getpeername,
    SYS_socketpair,
    SYS_setsockopt,
    SYS_getsockopt,
    SYS_clone,
    SYS_fork,
    SYS_vfork,
    SYS_execve,
    SYS_exit,
    SYS_wait4,
    SYS_kill,
    SYS_uname,
    SYS_fcntl,
    SYS_flock,
    SYS_fsync,
    SYS_fdatasync,
    SYS_truncate,
    SYS_ftruncate,
    SYS_getdents64,
    SYS_getcwd,
    SYS_chdir,
    SYS_fchdir,
    SYS_rename,
    SYS_mkdir,
    SYS_rmdir,
    SYS_creat,
    SYS_link,
    SYS_unlink,
    SYS_symlink,
    SYS_readlink,
    SYS_chmod,
    SYS_fchmod,
    SYS_chown,
    SYS_fchown,
    SYS_umask,
    SYS_ptrace,
    SYS_getuid,
    SYS_setuid,
    SYS_setgid,
    SYS_setns,
    SYS_unshare,
    SYS_mount,
    SYS_umount2,
    SYS_pivot_root,
    SYS_chroot,
    SYS_prctl,
    SYS_arch_prctl,
    SYS_init_module,
    SYS_finit_module,
    SYS_delete_module,
    SYS_kexec_load,
    SYS_reboot,
    SYS_gettid,
    SYS_tkill,
    SYS_futex,
    SYS_sched_getaffinity,
    SYS_epoll_create1,
    SYS_epoll_ctl,
    SYS_epoll_wait,
    SYS_epoll_pwait,
    SYS_tgkill,
    SYS_openat,
    SYS_mkdirat,
    SYS_newfstatat,
    SYS_unlinkat,
    SYS_renameat,
    SYS_renameat2,
    SYS_ppoll,
    SYS_set_robust_list,
    SYS_eventfd2,
    SYS_pipe2,
    SYS_dup3,
    SYS_timerfd_create,
    SYS_timerfd_settime,
    SYS_accept4,
    SYS_signalfd4,
    SYS_fallocate,
    SYS_preadv,
    SYS_pwritev,
    SYS_preadv2,
    SYS_pwritev2,
    SYS_prlimit64,
    SYS_getrandom,
    SYS_memfd_create,
    SYS_bpf,
    SYS_execveat,
    SYS_userfaultfd,
    SYS_statx,
    SYS_io_uring_setup,
    SYS_io_uring_enter,
    SYS_io_uring_register,
    SYS_clone3,
    SYS_open_tree,
    SYS_move_mount,
    SYS_fsopen,
    SYS_pidfd_open,
    SYS_seccomp,
    SYS_process_vm_readv,
    SYS_process_vm_writev,
    SYS_keyctl,
    SYS_add_key,
    SYS_perf_event_open,
    SYS_clock_gettime,
    SYS_clock_nanosleep,
    SYS_exit_group,
    SYS_rseq,
);

/// The name of call `number` when it is one [`NAMES`] knows.
pub(super) fn syscall_name(number: i64) -> Option<&'static str> {
    NAMES
        .iter()
        .find(|(n, _)| *n == number)
        .map(|(_, name)| name.strip_prefix("SYS_").unwrap_or(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_are_the_kernels() {
        // From <linux/kvm.h> on x86-64, as strace prints them.
        assert_eq!(KVM_RUN(), 0xae80);
        assert_eq!(KVM_IOEVENTFD(), 0x4040_ae79);
        assert_eq!(KVM_IRQFD(), 0x4020_ae76);
        assert_eq!(KVM_GET_REGS(), 0x8090_ae81);
        assert_eq!(KVM_SET_GSI_ROUTING(), 0x4008_ae6a);
        assert_eq!(TUNSETOFFLOAD(), 0x4004_54d0);
        assert_eq!(syscall_name(libc::SYS_execve), Some("execve"));
        assert_eq!(syscall_name(libc::SYS_clone3), Some("clone3"));
    }

    #[test]
    fn the_lists_keep_what_matters_out() {
        for kind in ThreadKind::ALL {
            let rules = rules(kind);
            for forbidden in [
                libc::SYS_execve,
                libc::SYS_ptrace,
                libc::SYS_mount,
                libc::SYS_init_module,
            ] {
                assert!(!rules.contains_key(&forbidden), "{kind} allows {forbidden}");
            }
        }
        let vcpu = rules(ThreadKind::Vcpu);
        assert!(!vcpu.contains_key(&libc::SYS_openat) && !vcpu.contains_key(&libc::SYS_socket));
        assert!(
            !vcpu[&libc::SYS_ioctl].is_empty(),
            "vCPU ioctls are by request"
        );
        let blk = rules(ThreadKind::BlockIo);
        assert!(!blk.contains_key(&libc::SYS_clone3) && !blk.contains_key(&libc::SYS_connect));
    }

    #[test]
    // A conversion on glibc's libc (c_ulong), a real one on musl's (c_int).
    #[allow(clippy::useless_conversion)]
    fn fionbio_is_libcs() {
        assert_eq!(Some(FIONBIO), u64::try_from(libc::FIONBIO).ok());
    }
}
