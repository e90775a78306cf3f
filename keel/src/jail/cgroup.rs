//! The jail's cgroups: `keel/<id>` (or `--cgroup-parent`/`<id>`) under each controller a
//! `--cgroup FILE=VALUE` names, on cgroup v2 (one hierarchy, controllers enabled down the
//! path) or v1 (a hierarchy per controller), as the host mounts them.

use std::fs;
use std::path::{Path, PathBuf};

use super::{JailError, Plan};

/// `FILE=VALUE`, e.g. `memory.max=512M` (v2) or `memory.limit_in_bytes=536870912` (v1).
pub(super) fn parse_setting(spec: &str) -> Result<(String, String), JailError> {
    let bad = |reason: &str| JailError::flag("--cgroup", format!("`{spec}` {reason}"));
    let (file, value) = spec
        .split_once('=')
        .ok_or_else(|| bad("is not FILE=VALUE (e.g. pids.max=64)"))?;
    let name_ok = file
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.');
    let Some((controller, _)) = file.split_once('.') else {
        return Err(JailError::flag(
            "--cgroup",
            format!("`{file}` is not a controller's file (CONTROLLER.FILE)"),
        ));
    };
    if !name_ok || controller.is_empty() || file.contains("..") {
        return Err(JailError::flag(
            "--cgroup",
            format!("`{file}` is not a controller's file (CONTROLLER.FILE)"),
        ));
    }
    if value.is_empty() || value.contains('\n') {
        return Err(bad("has an empty or multi-line value"));
    }
    Ok((file.to_string(), value.to_string()))
}

/// Which hierarchy the host mounts at `fs`.
fn is_v2(fs: &Path) -> bool {
    fs.join("cgroup.controllers").is_file()
}

/// Moves this process into the jail's cgroups with the plan's settings.
pub(super) fn join(plan: &Plan) -> Result<(), JailError> {
    if plan.cgroups.is_empty() {
        return Ok(());
    }
    let pid = std::process::id().to_string();
    if is_v2(&plan.cgroup_fs) {
        join_v2(plan, &pid)
    } else {
        join_v1(plan, &pid)
    }
}

fn controller(file: &str) -> &str {
    file.split_once('.')
        .map_or(file, |(controller, _)| controller)
}

fn write(path: &Path, value: &str) -> Result<(), JailError> {
    fs::write(path, value).map_err(|err| JailError::io("cannot write cgroup file", path, err))
}

fn join_v2(plan: &Plan, pid: &str) -> Result<(), JailError> {
    let mut controllers: Vec<&str> = plan.cgroups.iter().map(|(f, _)| controller(f)).collect();
    controllers.sort_unstable();
    controllers.dedup();
    // Enable the controllers from the root down to the jail's parent.
    let mut dir = plan.cgroup_fs.clone();
    let parts: Vec<&str> = plan.cgroup_parent.split('/').collect();
    for part in parts.iter().map(Some).chain([None]) {
        let enable: String = controllers.iter().map(|c| format!("+{c} ")).collect();
        write(&dir.join("cgroup.subtree_control"), enable.trim_end())?;
        let Some(part) = part else { break };
        dir.push(part);
        fs::create_dir_all(&dir).map_err(|err| JailError::io("cannot create cgroup", &dir, err))?;
    }
    let jail = dir.join(&plan.id);
    fs::create_dir_all(&jail).map_err(|err| JailError::io("cannot create cgroup", &jail, err))?;
    for (file, value) in &plan.cgroups {
        write(&jail.join(file), value)?;
    }
    write(&jail.join("cgroup.procs"), pid)
}

fn join_v1(plan: &Plan, pid: &str) -> Result<(), JailError> {
    let mut by_controller: Vec<(&str, Vec<&(String, String)>)> = Vec::new();
    for setting in &plan.cgroups {
        let name = controller(&setting.0);
        match by_controller.iter_mut().find(|(c, _)| *c == name) {
            Some((_, settings)) => settings.push(setting),
            None => by_controller.push((name, vec![setting])),
        }
    }
    for (name, settings) in by_controller {
        let hierarchy = plan.cgroup_fs.join(name);
        if !hierarchy.is_dir() {
            return Err(JailError::io(
                "no cgroup v1 hierarchy for the controller at",
                &hierarchy,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        let mut dir = hierarchy;
        let mut path: Vec<PathBuf> = Vec::new();
        for part in plan.cgroup_parent.split('/').chain([plan.id.as_str()]) {
            dir.push(part);
            fs::create_dir_all(&dir)
                .map_err(|err| JailError::io("cannot create cgroup", &dir, err))?;
            path.push(dir.clone());
        }
        if name == "cpuset" {
            // A v1 cpuset takes no task until it has CPUs and memory nodes: inherit them.
            for (parent, child) in path.iter().zip(path.iter().skip(1)) {
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    inherit(&parent.join(file), &child.join(file))?;
                }
            }
            if let Some(first) = path.first() {
                if let Some(up) = first.parent() {
                    for file in ["cpuset.cpus", "cpuset.mems"] {
                        inherit(&up.join(file), &first.join(file))?;
                    }
                }
            }
        }
        for (file, value) in settings {
            write(&dir.join(file), value)?;
        }
        write(&dir.join("cgroup.procs"), pid)?;
    }
    Ok(())
}

/// Copies `from` to `to` when `to` is empty (v1 cpuset files).
fn inherit(from: &Path, to: &Path) -> Result<(), JailError> {
    let current = fs::read_to_string(to).unwrap_or_default();
    if current.trim().is_empty() {
        let value = fs::read_to_string(from)
            .map_err(|err| JailError::io("cannot read cgroup file", from, err))?;
        write(to, value.trim())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_name_a_controller_file() {
        assert_eq!(
            parse_setting("pids.max=64").unwrap(),
            ("pids.max".into(), "64".into())
        );
        assert_eq!(parse_setting("memory.max=512M").unwrap().1, "512M");
        for bad in [
            "pids",
            "=1",
            "pids.max=",
            "../x=1",
            "Pids.max=1",
            "pids.max=1\n2",
        ] {
            assert!(parse_setting(bad).is_err(), "{bad}");
        }
    }

    /// cgroup v2's layout, in a directory (the real hierarchy is v1 on this machine; the v1
    /// path runs for real in tests/jail.rs).
    #[test]
    fn v2_enables_controllers_down_the_path_and_joins() {
        let fs_root = std::env::temp_dir().join(format!("keel-cgroup-v2-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&fs_root);
        std::fs::create_dir_all(&fs_root).unwrap();
        std::fs::write(fs_root.join("cgroup.controllers"), "cpu memory pids").unwrap();
        let plan = super::super::tests::plan_with(&fs_root, &["pids.max=64", "memory.max=256M"]);
        join(&plan).unwrap();
        assert_eq!(
            std::fs::read_to_string(fs_root.join("cgroup.subtree_control")).unwrap(),
            "+memory +pids"
        );
        assert_eq!(
            std::fs::read_to_string(fs_root.join("keel/cgroup.subtree_control")).unwrap(),
            "+memory +pids"
        );
        let jail = fs_root.join("keel/vm-1");
        assert_eq!(
            std::fs::read_to_string(jail.join("pids.max")).unwrap(),
            "64"
        );
        assert_eq!(
            std::fs::read_to_string(jail.join("memory.max")).unwrap(),
            "256M"
        );
        assert_eq!(
            std::fs::read_to_string(jail.join("cgroup.procs")).unwrap(),
            std::process::id().to_string()
        );
        std::fs::remove_dir_all(&fs_root).unwrap();
    }
}
