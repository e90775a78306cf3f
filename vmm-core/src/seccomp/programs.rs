//! Keel's filters compiled from its rules ([`super::rules`]). `build.rs` runs this when
//! vmm-core is built and embeds the result, so a VM's start-up only copies the programs
//! (compiling them took about 0.7 ms of the `keel` program's start); the tests compare the
//! embedded programs with a fresh compile.

use std::collections::BTreeMap;

use seccompiler::{BackendError, BpfProgram, SeccompRule};

use super::rules::rules;
use super::ThreadKind;

/// Keel's filters for `kind`: its rules, and for every kind but [`ThreadKind::Vmm`] a second
/// filter that answers `open`/`openat` with `EACCES` instead of stopping the thread.
///
/// Memory allocators open files lazily on whatever thread happens to call them: glibc's
/// malloc reads `/proc/sys/vm/overcommit_memory` the first time a thread's arena shrinks,
/// jemalloc and mimalloc read `/proc` and `/sys` files too. Those threads need not open
/// anything (the allocators carry on without the file), and a guest that took one over gains
/// nothing from a refused `open`. The first filter allows the two calls, so that the second's
/// `EACCES` is what the kernel applies (a trap would take precedence over it).
// Used by build.rs and the tests; the library embeds what build.rs made of it.
#[cfg_attr(not(test), allow(dead_code))]
pub fn keel_programs(kind: ThreadKind) -> Result<Vec<BpfProgram>, BackendError> {
    let mut rules = rules(kind);
    if kind == ThreadKind::Vmm {
        return Ok(vec![compile(rules)?]);
    }
    let refused = [libc::SYS_open, libc::SYS_openat];
    for call in refused {
        rules.insert(call, Vec::new());
    }
    let refuse = seccompiler::SeccompFilter::new(
        refused.into_iter().map(|call| (call, Vec::new())).collect(),
        seccompiler::SeccompAction::Allow,
        seccompiler::SeccompAction::Errno(libc::EACCES.unsigned_abs()),
        seccompiler::TargetArch::x86_64,
    )
    .and_then(BpfProgram::try_from)?;
    // The refusal first: with the rules installed last, a thread never has to install a
    // filter (PR_SET_NO_NEW_PRIVS, seccomp) while its own rules already hold.
    Ok(vec![refuse, compile(rules)?])
}

/// Compiles a rule set: listed calls are allowed when a rule matches (an empty rule list:
/// always), others trap to Keel's report.
pub fn compile(rules: BTreeMap<i64, Vec<SeccompRule>>) -> Result<BpfProgram, BackendError> {
    seccompiler::SeccompFilter::new(
        rules,
        seccompiler::SeccompAction::Trap,
        seccompiler::SeccompAction::Allow,
        seccompiler::TargetArch::x86_64,
    )?
    .try_into()
}
