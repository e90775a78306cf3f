//! The seccomp filters the keel program runs under: keel's own (the default), none
//! (`--no-seccomp`), or a JSON file of the operator's (`--seccomp-filter`, seccompiler's format,
//! as Firecracker's `--seccomp-filter` takes), with one filter per thread kind.

use std::collections::HashMap;
use std::sync::Arc;

use vmm_core::seccomp::{BpfProgram, Filters, SeccompPolicy, ThreadKind};

use crate::cli::VmmArgs;

/// The policy for the VMs' threads and the compiled filters for this process's own.
pub(crate) fn policy(args: &VmmArgs) -> Result<(SeccompPolicy, Filters), String> {
    let policy = if args.no_seccomp {
        SeccompPolicy::Off
    } else if let Some(path) = &args.seccomp_filter {
        let file = std::fs::File::open(path)
            .map_err(|err| format!("--seccomp-filter {}: {err}", path.display()))?;
        let programs = seccompiler::compile_from_json(file, seccompiler::TargetArch::x86_64)
            .map_err(|err| format!("--seccomp-filter {}: {err}", path.display()))?;
        from_programs(programs)
            .map_err(|why| format!("--seccomp-filter {}: {why}", path.display()))?
    } else {
        SeccompPolicy::Keel
    };
    let filters = policy.filters().map_err(|err| err.to_string())?;
    Ok((policy, filters))
}

/// A policy from compiled filters by thread-kind name; every kind must have one, and no other
/// name may appear (a typo would otherwise leave a kind unfiltered).
fn from_programs(mut programs: HashMap<String, BpfProgram>) -> Result<SeccompPolicy, String> {
    let mut by_kind = HashMap::new();
    for kind in ThreadKind::ALL {
        let program = programs.remove(kind.name()).ok_or_else(|| {
            format!(
                "no filter for `{}` threads (it needs one for each of vcpu, events, blk, vmm, api)",
                kind.name()
            )
        })?;
        by_kind.insert(kind, program);
    }
    if let Some(unknown) = programs.keys().next() {
        return Err(format!(
            "`{unknown}` is not a thread kind (vcpu, events, blk, vmm, api)"
        ));
    }
    let by_kind = Arc::new(by_kind);
    Ok(SeccompPolicy::Custom(Arc::new(move |kind| {
        Ok(by_kind.get(&kind).cloned())
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(json: &str) -> HashMap<String, BpfProgram> {
        seccompiler::compile_from_json(json.as_bytes(), seccompiler::TargetArch::x86_64).unwrap()
    }

    fn filter(names: &[&str]) -> String {
        let one = r#"{"mismatch_action": "trap", "match_action": "allow", "filter": [{"syscall": "read"}]}"#;
        let entries: Vec<String> = names
            .iter()
            .map(|name| format!("\"{name}\": {one}"))
            .collect();
        format!("{{{}}}", entries.join(","))
    }

    #[test]
    fn a_file_must_name_every_kind_and_nothing_else() {
        let all = filter(&["vcpu", "events", "blk", "vmm", "api"]);
        let policy = from_programs(compile(&all)).unwrap();
        let filters = policy.filters().unwrap();
        drop(filters);
        let missing =
            from_programs(compile(&filter(&["vcpu", "events", "blk", "vmm"]))).unwrap_err();
        assert!(missing.contains("no filter for `api` threads"), "{missing}");
        let typo = from_programs(compile(&filter(&[
            "vcpu", "events", "blk", "vmm", "api", "vpcu",
        ])))
        .unwrap_err();
        assert!(typo.contains("`vpcu` is not a thread kind"), "{typo}");
    }
}
