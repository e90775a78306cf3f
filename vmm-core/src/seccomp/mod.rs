//! seccomp filters for the threads a VM runs on.
//!
//! Each kind of thread gets its own allowlist of system calls (and, for `ioctl`, of request
//! numbers), compiled with rust-vmm's `seccompiler` when the VM is built and installed by
//! each thread on itself before it touches guest-controlled state: a vCPU thread before its
//! first `KVM_RUN`, the event loop before its first event, a disk's I/O thread before its first
//! request. A thread that makes a call outside its list is stopped: the kernel sends it
//! `SIGSYS`, and Keel's handler writes which thread made which call to stderr and ends the
//! process with status 159 (128 + `SIGSYS`), as a VMM whose guest may have taken over one of
//! its threads must.
//!
//! Filters stack: a thread started by a filtered thread keeps its parent's filter under its
//! own. A disk's I/O thread is started by the vCPU that sets the device's `DRIVER_OK`, so the
//! vCPU list also holds what that thread needs (creating a thread, io_uring, file I/O).
//!
//! Embedders choose with [`SeccompPolicy`] on
//! [`VmBuilder::seccomp`](crate::VmBuilder::seccomp): Keel's filters (the default), none, or
//! their own per thread kind. Their own can start from Keel's rules ([`rules`]) and add what
//! their back ends need (a network disk's sockets): a custom [`DiskBackend`] runs on the disk's
//! I/O thread and a custom virtio device on the vCPU and event-loop threads, under these
//! filters.
//!
//! [`DiskBackend`]: devices::virtio::block::DiskBackend
//!
//! ```no_run
//! use std::sync::Arc;
//! use vmm_core::seccomp::{self, SeccompPolicy, ThreadKind};
//! use vmm_core::{VmBuilder, VmConfig};
//!
//! // Keel's filters, with `connect` and `sendmsg`/`recvmsg` added for a network disk.
//! let policy = SeccompPolicy::custom(|kind| {
//!     let mut rules = seccomp::rules(kind);
//!     if kind == ThreadKind::BlockIo || kind == ThreadKind::Vcpu {
//!         for call in [libc::SYS_connect, libc::SYS_sendmsg, libc::SYS_recvmsg] {
//!             rules.insert(call, vec![]);
//!         }
//!     }
//!     seccomp::compile(rules)
//! });
//! let vm = VmBuilder::new(VmConfig::new("vmlinux")).seccomp(policy).build()?;
//! # Ok::<(), vmm_core::Error>(())
//! ```

mod programs;
mod report;
mod rules;
mod thread_kind;

/// Keel's filters as `build.rs` compiled them (`programs(kind)`: BPF instructions as
/// `(code, jt, jf, k)`).
mod precompiled {
    include!(concat!(env!("OUT_DIR"), "/keel_seccomp.rs"));
}

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

pub use rules::rules;
pub use seccompiler::{BpfProgram, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};
pub use thread_kind::ThreadKind;

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A rule set did not compile.
    #[error("seccomp: the filter does not compile: {0}")]
    Compile(#[source] seccompiler::BackendError),
    /// A custom policy failed for a thread kind.
    #[error("seccomp: no filter for {kind} threads: {reason}")]
    Policy {
        /// The thread kind.
        kind: ThreadKind,
        /// Why.
        reason: String,
    },
    /// The kernel refused the filter.
    #[error("seccomp: installing the {kind} filter failed: {source}")]
    Install {
        /// The thread kind.
        kind: ThreadKind,
        /// The kernel's answer.
        #[source]
        source: seccompiler::Error,
    },
}

/// A custom policy: the filter for each kind, or `None` to leave that kind unfiltered.
type CustomPolicy = dyn Fn(ThreadKind) -> Result<Option<BpfProgram>, SeccompError> + Send + Sync;

/// Which filters a VM's threads install.
#[derive(Clone, Default)]
pub enum SeccompPolicy {
    /// Keel's filters ([`rules`]), trapping to a report and exit.
    #[default]
    Keel,
    /// No filters (for debugging; a guest that takes over a thread can then make any call).
    Off,
    /// The embedder's: a filter per thread kind, or `None` for none.
    Custom(Arc<CustomPolicy>),
}

impl SeccompPolicy {
    /// A custom policy from a function that gives each kind's filter.
    pub fn custom(
        filter: impl Fn(ThreadKind) -> Result<BpfProgram, SeccompError> + Send + Sync + 'static,
    ) -> Self {
        SeccompPolicy::Custom(Arc::new(move |kind| filter(kind).map(Some)))
    }

    /// Compiles the filters of every kind now, so that a thread only installs one (and a
    /// policy that cannot compile fails the build, not a running VM).
    pub fn filters(&self) -> Result<Filters, SeccompError> {
        if let SeccompPolicy::Keel = self {
            // Keel's filters never change: compiled when vmm-core was built, copied once,
            // shared by every VM and by the keel program's own threads.
            static KEEL: std::sync::OnceLock<Filters> = std::sync::OnceLock::new();
            if let Some(filters) = KEEL.get() {
                return Ok(filters.clone());
            }
            let filters = self.compile_all()?;
            return Ok(KEEL.get_or_init(|| filters).clone());
        }
        self.compile_all()
    }

    fn compile_all(&self) -> Result<Filters, SeccompError> {
        let mut filters = BTreeMap::new();
        for kind in ThreadKind::ALL {
            let programs = match self {
                SeccompPolicy::Off => Vec::new(),
                SeccompPolicy::Keel => keel_programs(kind),
                SeccompPolicy::Custom(policy) => policy(kind)?.into_iter().collect(),
            };
            if !programs.is_empty() {
                filters.insert(kind, programs.into_iter().map(Arc::new).collect());
            }
        }
        Ok(Filters(Arc::new(filters)))
    }
}

impl fmt::Debug for SeccompPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SeccompPolicy::Keel => "Keel",
            SeccompPolicy::Off => "Off",
            SeccompPolicy::Custom(_) => "Custom",
        })
    }
}

/// Keel's filters for `kind`, compiled when vmm-core was built ([`programs`]).
fn keel_programs(kind: ThreadKind) -> Vec<BpfProgram> {
    precompiled::programs(kind)
        .iter()
        .map(|program| {
            program
                .iter()
                .map(|&(code, jt, jf, k)| seccompiler::sock_filter { code, jt, jf, k })
                .collect()
        })
        .collect()
}

/// Compiled filters by thread kind, shared by a VM's threads.
#[derive(Clone, Debug, Default)]
pub struct Filters(Arc<BTreeMap<ThreadKind, Vec<Arc<BpfProgram>>>>);

impl Filters {
    /// Keel's filters for every kind, compiled.
    pub fn keel() -> Result<Self, SeccompError> {
        SeccompPolicy::Keel.filters()
    }

    /// Installs the filter of `kind` (if the policy has one) on the calling thread, with
    /// Keel's `SIGSYS` report in place first.
    pub fn apply(&self, kind: ThreadKind) -> Result<(), SeccompError> {
        let Some(programs) = self.0.get(&kind) else {
            return Ok(());
        };
        report::install(kind);
        for program in programs {
            seccompiler::apply_filter(program)
                .map_err(|source| SeccompError::Install { kind, source })?;
        }
        Ok(())
    }

    /// Whether there is a filter for `kind`.
    pub(crate) fn has(&self, kind: ThreadKind) -> bool {
        self.0.contains_key(&kind)
    }

    /// Installs the filter of `kind` on the calling thread; a thread that cannot be filtered
    /// must not go on to serve the guest, so a failure ends the process with a report.
    pub fn apply_or_exit(&self, kind: ThreadKind) {
        if let Err(err) = self.apply(kind) {
            log::error!("{err}");
            report::exit_now(&format!("keel: {err}\n"));
        }
    }
}

/// Compiles a rule set (for [`SeccompPolicy::custom`]): listed calls are allowed when a rule
/// matches (an empty rule list: always), others trap to Keel's report.
pub fn compile(rules: BTreeMap<i64, Vec<SeccompRule>>) -> Result<BpfProgram, SeccompError> {
    programs::compile(rules).map_err(SeccompError::Compile)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_programs_built_in_are_the_rules_compiled_now() {
        for kind in ThreadKind::ALL {
            assert_eq!(
                keel_programs(kind),
                programs::keel_programs(kind).unwrap(),
                "{kind}: rebuild vmm-core (build.rs compiles the rules)"
            );
        }
    }

    #[test]
    fn every_kind_compiles_and_custom_policies_are_used() {
        let filters = Filters::keel().unwrap();
        for kind in ThreadKind::ALL {
            let programs = &filters.0[&kind];
            assert!(programs.iter().all(|p| !p.is_empty()), "{kind}");
            assert_eq!(
                programs.len(),
                if kind == ThreadKind::Vmm { 1 } else { 2 },
                "{kind}"
            );
        }
        assert!(SeccompPolicy::Off.filters().unwrap().0.is_empty());
        let only_vcpu = SeccompPolicy::Custom(Arc::new(|kind| {
            (kind == ThreadKind::Vcpu)
                .then(|| compile(rules(kind)))
                .transpose()
        }));
        let filters = only_vcpu.filters().unwrap();
        assert_eq!(
            filters.0.keys().copied().collect::<Vec<_>>(),
            [ThreadKind::Vcpu]
        );
        let failing = SeccompPolicy::Custom(Arc::new(|kind| {
            Err(SeccompError::Policy {
                kind,
                reason: "no".into(),
            })
        }));
        assert!(failing
            .filters()
            .unwrap_err()
            .to_string()
            .contains("no filter for vcpu threads"));
    }
}
