//! Limits on what a VM may ask of its host: the host's own (RAM, CPUs, open files) and those an
//! operator sets for the VMs of a process ([`Limits`], given to
//! [`VmBuilder::limits`](crate::VmBuilder::limits)).
//!
//! [`VmConfig::check`](super::VmConfig::check) holds what Keel itself supports (254 vCPUs,
//! 1 TiB, 31 devices on PCI, 17 on virtio-mmio); this module compares a config with this host
//! when the VM is built: guest memory that cannot fit in the host's RAM (or the memory limit of
//! the process's cgroup) is refused with both numbers, more vCPUs than host CPUs are allowed
//! and warned about unless [`Limits::max_vcpus_per_host_cpu`] caps them, and a VM that would
//! need more file descriptors than `RLIMIT_NOFILE` leaves is refused before it opens any.

use std::path::PathBuf;

use log::warn;
use serde::{Deserialize, Serialize};

use super::{MemSize, VmConfig};

/// Limits an operator puts on the VMs of a process, on top of what Keel supports. Each is off
/// (`None`) by default.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Refuse a VM with more vCPUs than this many per host CPU (the CPUs this process may
    /// run on). Without it, more vCPUs than host CPUs is allowed and warned about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_vcpus_per_host_cpu: Option<u32>,
    /// Most virtio devices a VM may have (without it: what its transport holds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_devices: Option<usize>,
    /// Largest virtqueue a device may offer the guest (without it: virtio's 32768). Bounds
    /// what an embedder's device makes the VMM track per queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue_size: Option<u16>,
}

/// A limit a VM would exceed, named, with the numbers.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{limit} exceeded: {reason}")]
pub struct LimitError {
    /// The limit (`host memory`, `max_vcpus_per_host_cpu`, `max_devices`, `max_queue_size`,
    /// `RLIMIT_NOFILE`).
    pub limit: &'static str,
    /// The config field that asks for too much (`memory`, `vcpus`, ...), or the device.
    pub field: String,
    /// The numbers.
    pub reason: String,
}

/// What this host gives a process, read from the system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostResources {
    /// Bytes of RAM: `MemTotal`, or the process's cgroup memory limit if that is lower.
    pub memory: u64,
    /// Where `memory` comes from (`MemTotal`, or the cgroup file).
    pub memory_source: String,
    /// CPUs this process may run on (its affinity mask).
    pub cpus: u32,
    /// `RLIMIT_NOFILE`'s soft limit, if the process has one.
    pub open_files_limit: Option<u64>,
    /// Descriptors open now.
    pub open_files: u64,
}

impl HostResources {
    /// Reads them: `/proc/meminfo`, the cgroup (v2 `memory.max`, v1
    /// `memory.limit_in_bytes`), `sched_getaffinity`, `getrlimit` and `/proc/self/fd`.
    /// What cannot be read is taken as no limit.
    pub fn detect() -> Self {
        let mem_total = meminfo_total().unwrap_or(u64::MAX);
        let (memory, memory_source) = match cgroup_memory_limit() {
            Some((limit, path)) if limit < mem_total => (limit, path.display().to_string()),
            _ => (mem_total, "MemTotal".to_string()),
        };
        HostResources {
            memory,
            memory_source,
            cpus: affinity_cpus(),
            open_files_limit: open_files_limit(),
            open_files: std::fs::read_dir("/proc/self/fd")
                .map(|dir| dir.count() as u64)
                .unwrap_or(0),
        }
    }
}

/// Descriptors a VM of `config` (with `extra_devices` of the embedder's) opens at most: one
/// per vCPU, a fixed set for the VM (KVM, the event loop, legacy interrupt lines, consoles),
/// and per virtio device its interrupts and queue notifications (two per queue, plus the
/// configuration vector), its back end (file or TAP, io_uring and its wake-up) and its rate
/// limiters' timers. `tests/limits.rs` checks it against what a VM really opens.
pub fn descriptors_needed(config: &VmConfig, extra_devices: usize) -> u64 {
    // vsock: three queues plus its listening socket and a few connections.
    let per_device = |queues: u64, backend: u64| 1 + 2 * queues + backend;
    let disks = config.disks.len() as u64 * per_device(1, 4);
    let nets = config.nets.len() as u64 * per_device(3, 4);
    let vsock = u64::from(config.vsock.is_some()) * per_device(3, 8);
    let rng = u64::from(config.rng.is_some()) * per_device(1, 1);
    let console = u64::from(config.console.is_some()) * per_device(2, 4);
    let extra = extra_devices as u64 * per_device(4, 4);
    32 + 2 * u64::from(config.vcpus) + disks + nets + vsock + rng + console + extra
}

/// Checks `config` (and `devices`, the number of virtio devices the VM gets, the embedder's
/// included) against `host` and `limits`; warns about vCPU overcommit within the limits.
pub fn check_limits(
    config: &VmConfig,
    devices: usize,
    extra_devices: usize,
    limits: &Limits,
    host: &HostResources,
) -> Result<(), LimitError> {
    let memory = config.memory.as_bytes();
    if memory > host.memory {
        return Err(LimitError {
            limit: "host memory",
            field: "memory".into(),
            reason: format!(
                "the guest's {} does not fit in this host's {} of RAM ({})",
                config.memory,
                MemSize::bytes(host.memory & !0xfffff),
                host.memory_source
            ),
        });
    }
    let cpus = host.cpus.max(1);
    if config.vcpus > cpus {
        if let Some(ratio) = limits.max_vcpus_per_host_cpu {
            let cap = u64::from(ratio) * u64::from(cpus);
            if u64::from(config.vcpus) > cap {
                return Err(LimitError {
                    limit: "max_vcpus_per_host_cpu",
                    field: "vcpus".into(),
                    reason: format!(
                        "{} vCPUs on {cpus} host CPUs is more than {ratio} per CPU ({cap})",
                        config.vcpus
                    ),
                });
            }
        }
        warn!(
            "{} vCPUs on {cpus} host CPUs: the vCPUs share them and run slower",
            config.vcpus
        );
    }
    if let Some(max) = limits.max_devices {
        if devices > max {
            return Err(LimitError {
                limit: "max_devices",
                field: "devices".into(),
                reason: format!("{devices} virtio devices, at most {max}"),
            });
        }
    }
    if let Some(limit) = host.open_files_limit {
        let needed = descriptors_needed(config, extra_devices);
        let left = limit.saturating_sub(host.open_files);
        if needed > left {
            return Err(LimitError {
                limit: "RLIMIT_NOFILE",
                field: "devices".into(),
                reason: format!(
                    "the VM needs up to {needed} file descriptors ({} vCPUs, {devices} devices); \
                     {} are open and the limit is {limit}: raise it (ulimit -n)",
                    config.vcpus, host.open_files
                ),
            });
        }
    }
    Ok(())
}

/// The largest split virtqueue virtio allows (virtio 1.2, 2.7): what a device may offer
/// without [`Limits::max_queue_size`].
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Checks a device's queue sizes against `limits` (`id` names it).
pub fn check_queue_sizes(id: &str, sizes: &[u16], limits: &Limits) -> Result<(), LimitError> {
    let max = limits.max_queue_size.unwrap_or(MAX_QUEUE_SIZE);
    if let Some((queue, size)) = sizes.iter().enumerate().find(|(_, size)| **size > max) {
        return Err(LimitError {
            limit: "max_queue_size",
            field: id.to_string(),
            reason: format!(
                "device `{id}` offers queue {queue} with {size} entries, at most {max}"
            ),
        });
    }
    Ok(())
}

fn meminfo_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The memory limit of this process's cgroup and the file it is in: v2's `memory.max`, else
/// v1's `memory.limit_in_bytes` ("max", or v1's huge "unlimited" value, is no limit).
fn cgroup_memory_limit() -> Option<(u64, PathBuf)> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let path = path.trim_start_matches('/');
        let file = match controllers {
            "" => PathBuf::from("/sys/fs/cgroup")
                .join(path)
                .join("memory.max"),
            list if list.split(',').any(|c| c == "memory") => {
                PathBuf::from("/sys/fs/cgroup/memory")
                    .join(path)
                    .join("memory.limit_in_bytes")
            }
            _ => continue,
        };
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        if let Ok(limit) = text.trim().parse::<u64>() {
            return Some((limit, file));
        }
    }
    None
}

fn affinity_cpus() -> u32 {
    std::thread::available_parallelism()
        .ok()
        .and_then(|n| u32::try_from(n.get()).ok())
        .unwrap_or(1)
}

fn open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit structure, which `limit` is.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    (limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(memory: u64, cpus: u32) -> HostResources {
        HostResources {
            memory,
            memory_source: "MemTotal".into(),
            cpus,
            open_files_limit: Some(1024),
            open_files: 10,
        }
    }

    #[test]
    fn memory_that_cannot_fit_is_refused_with_both_numbers() {
        let mut config = VmConfig::new("k");
        config.memory = MemSize::mib(4096);
        let err = check_limits(&config, 0, 0, &Limits::default(), &host(2 << 30, 2)).unwrap_err();
        assert_eq!((err.limit, err.field.as_str()), ("host memory", "memory"));
        assert!(
            err.reason.contains("4G") && err.reason.contains("2G"),
            "{err}"
        );
        assert!(err.to_string().starts_with("host memory exceeded"), "{err}");
        config.memory = MemSize::mib(2048);
        check_limits(&config, 0, 0, &Limits::default(), &host(2 << 30, 2)).unwrap();
    }

    #[test]
    fn vcpu_overcommit_is_allowed_unless_capped() {
        let mut config = VmConfig::new("k");
        config.vcpus = 8;
        let host = host(1 << 40, 2);
        check_limits(&config, 0, 0, &Limits::default(), &host).unwrap();
        let capped = Limits {
            max_vcpus_per_host_cpu: Some(2),
            ..Limits::default()
        };
        let err = check_limits(&config, 0, 0, &capped, &host).unwrap_err();
        assert_eq!(
            (err.limit, err.field.as_str()),
            ("max_vcpus_per_host_cpu", "vcpus")
        );
        assert!(err.reason.contains("8 vCPUs on 2 host CPUs"), "{err}");
        config.vcpus = 4;
        check_limits(&config, 0, 0, &capped, &host).unwrap();
    }

    #[test]
    fn devices_queues_and_descriptors_have_their_limits() {
        let config = VmConfig::new("k");
        let limits = Limits {
            max_devices: Some(2),
            max_queue_size: Some(256),
            ..Limits::default()
        };
        let err = check_limits(&config, 3, 0, &limits, &host(1 << 40, 2)).unwrap_err();
        assert_eq!(err.limit, "max_devices");
        check_limits(&config, 2, 0, &limits, &host(1 << 40, 2)).unwrap();
        let err = check_queue_sizes("mine", &[256, 1024], &limits).unwrap_err();
        assert_eq!(err.limit, "max_queue_size");
        assert!(err.reason.contains("queue 1 with 1024 entries"), "{err}");
        check_queue_sizes("mine", &[256, 64], &limits).unwrap();
        let err = check_queue_sizes("mine", &[u16::MAX], &Limits::default()).unwrap_err();
        assert!(err.reason.contains("at most 32768"), "{err}");
        check_queue_sizes("mine", &[32768], &Limits::default()).unwrap();
        let mut tight = host(1 << 40, 2);
        tight.open_files_limit = Some(40);
        tight.open_files = 30;
        let err = check_limits(&config, 0, 0, &Limits::default(), &tight).unwrap_err();
        assert_eq!(err.limit, "RLIMIT_NOFILE");
        assert!(
            err.reason.contains("30 are open and the limit is 40"),
            "{err}"
        );
    }

    #[test]
    fn this_host_is_read() {
        let host = HostResources::detect();
        assert!(host.memory > 64 << 20, "{host:?}");
        assert!(host.cpus >= 1);
        assert!(host.open_files > 0);
    }
}
