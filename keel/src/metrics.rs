//! The VM's counters in the Prometheus text exposition format (0.0.4), as `GET /metrics`
//! serves them.
//!
//! Each counter becomes one metric family, `keel_<kind>_<name>` (`keel_block_read_bytes`,
//! `keel_vcpu_io_out`), with the device id as the `device` label, so a scrape of many VMs
//! aggregates by kind. Counters get the `_total` suffix Prometheus expects.

use std::collections::BTreeMap;
use std::fmt::Write;

use vmm_core::{Counter, CounterKind, VmCounters};

/// One metric family: its help text, type and (device label, value) samples.
struct Family<'a> {
    help: &'a str,
    type_name: &'static str,
    samples: Vec<(String, u64)>,
}

/// Renders `counters` as Prometheus text.
///
/// ```
/// # use vmm_core::{Counter, DeviceCounters, VmCounters};
/// let counters = VmCounters {
///     vcpus: vec![],
///     devices: vec![DeviceCounters {
///         id: "disk0".into(),
///         kind: "block".into(),
///         counters: vec![Counter::count("read_ops", "read requests completed", 7)],
///     }],
/// };
/// let text = keel::metrics::render(&counters);
/// assert!(text.contains("keel_block_read_ops_total{device=\"disk0\"} 7\n"));
/// ```
pub fn render(counters: &VmCounters) -> String {
    let mut families: BTreeMap<String, Family<'_>> = BTreeMap::new();
    for device in counters.vcpus.iter().chain(&counters.devices) {
        let kind = sanitize(&device.kind);
        for Counter {
            name,
            help,
            kind: counter_kind,
            value,
        } in &device.counters
        {
            let (suffix, type_name) = match counter_kind {
                CounterKind::Counter => ("_total", "counter"),
                CounterKind::Gauge => ("", "gauge"),
            };
            let family = format!("keel_{kind}_{}{suffix}", sanitize(name));
            families
                .entry(family)
                .or_insert_with(|| Family {
                    help,
                    type_name,
                    samples: Vec::new(),
                })
                .samples
                .push((escape_label(&device.id), *value));
        }
    }
    let mut text = String::new();
    for (
        family,
        Family {
            help,
            type_name,
            samples,
        },
    ) in families
    {
        let _ = writeln!(text, "# HELP {family} {help}");
        let _ = writeln!(text, "# TYPE {family} {type_name}");
        for (device, value) in samples {
            let _ = writeln!(text, "{family}{{device=\"{device}\"}} {value}");
        }
    }
    text
}

/// A metric-name-safe version of `text`: `[a-zA-Z0-9_]`, other characters as `_`.
fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Escapes a label value (backslash, quote, newline).
fn escape_label(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_core::DeviceCounters;

    #[test]
    fn families_group_devices_of_a_kind_with_help_and_type() {
        let counters = VmCounters {
            vcpus: vec![DeviceCounters {
                id: "vcpu0".into(),
                kind: "vcpu".into(),
                counters: vec![Counter::count("io_out", "port writes", 3)],
            }],
            devices: vec![
                DeviceCounters {
                    id: "net0".into(),
                    kind: "net".into(),
                    counters: vec![Counter::count("rx_frames", "frames in", 1)],
                },
                DeviceCounters {
                    id: "net\"1".into(),
                    kind: "net".into(),
                    counters: vec![Counter::count("rx_frames", "frames in", 2)],
                },
                DeviceCounters {
                    id: "vsock0".into(),
                    kind: "vsock".into(),
                    counters: vec![Counter::gauge("connections", "open now", 4)],
                },
                DeviceCounters {
                    id: "x".into(),
                    kind: "virtio-42".into(),
                    counters: vec![Counter::count("ops", "ops", 5)],
                },
            ],
        };
        let text = render(&counters);
        assert_eq!(
            text.matches("# TYPE keel_net_rx_frames_total counter")
                .count(),
            1
        );
        assert!(text.contains("keel_net_rx_frames_total{device=\"net0\"} 1\n"));
        assert!(text.contains("keel_net_rx_frames_total{device=\"net\\\"1\"} 2\n"));
        assert!(text.contains("# TYPE keel_vsock_connections gauge\n"));
        assert!(text.contains("keel_vsock_connections{device=\"vsock0\"} 4\n"));
        assert!(text.contains("keel_vcpu_io_out_total{device=\"vcpu0\"} 3\n"));
        assert!(text.contains("keel_virtio_42_ops_total{device=\"x\"} 5\n"));
        assert!(text.contains("# HELP keel_vcpu_io_out_total port writes\n"));
    }
}
