//! Seeded synthetic clusters and workloads for tests, benchmarks and demos.
//!
//! The host mix follows a typical private cloud: 2-socket general hosts (2 NUMA nodes, overcommitted
//! vCPUs, 1 GiB hugepages), memory-heavy hosts, GPU hosts with vGPU-capable children under each NUMA node,
//! and tainted dedicated hosts with pinned CPUs; hosts are spread over zones × racks, each zone an
//! aggregate with a shared storage pool. The same seed always yields the same cluster and workload.

use crate::model::{
    ClusterSpec, HostSpec, InventorySpec, ProviderSpec, ServerGroupPolicy, ServerGroupSpec,
    SharedProviderSpec, Taint, TaintEffect,
};
use crate::request::{
    PlacementRequest, RequestGroup, SpreadConstraint, Toleration, TolerationOperator, TopologyKey,
    WhenUnsatisfiable,
};
pub use crate::rng::SplitMix64;
use std::collections::BTreeMap;

/// Shape of a generated cluster.
#[derive(Clone, Copy, Debug)]
pub struct ClusterShape {
    /// Number of hosts.
    pub hosts: usize,
    /// Zones.
    pub zones: usize,
    /// Racks per zone.
    pub racks_per_zone: usize,
    /// Seed.
    pub seed: u64,
}

impl ClusterShape {
    /// A cluster of `hosts` with 3 zones and racks of about 40 hosts.
    pub fn new(hosts: usize, seed: u64) -> Self {
        ClusterShape {
            hosts,
            zones: 3,
            racks_per_zone: (hosts / 120).max(1),
            seed,
        }
    }
}

/// Host kinds in the generated mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostKind {
    /// 2 × 32 cores, 2 × 192 GiB, vCPU ratio 4.
    General,
    /// 2 × 32 cores, 2 × 768 GiB.
    MemoryHeavy,
    /// General host plus one vGPU-capable GPU under each NUMA node.
    Gpu,
    /// Tainted `dedicated=hpc:NoSchedule`, pinned CPUs (PCPU), no overcommit.
    Dedicated,
}

fn kind_for(r: &mut SplitMix64) -> HostKind {
    match r.below(100) {
        0..=69 => HostKind::General,
        70..=84 => HostKind::MemoryHeavy,
        85..=94 => HostKind::Gpu,
        _ => HostKind::Dedicated,
    }
}

fn inv(pairs: &[(&str, InventorySpec)]) -> BTreeMap<String, InventorySpec> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// Generates a cluster description.
pub fn cluster(shape: ClusterShape) -> ClusterSpec {
    let mut r = SplitMix64::new(shape.seed);
    let zones = shape.zones.max(1);
    let racks = shape.racks_per_zone.max(1);
    let mut hosts = Vec::with_capacity(shape.hosts);
    for i in 0..shape.hosts {
        let kind = kind_for(&mut r);
        let zone = i % zones;
        let rack = (i / zones) % racks;
        let name = format!("h{i:05}");
        let mem_per_numa: i64 = if kind == HostKind::MemoryHeavy {
            786_432
        } else {
            196_608
        };
        let mut children = Vec::new();
        for n in 0..2 {
            let cpu = match kind {
                HostKind::Dedicated => ("PCPU", InventorySpec::new(32).reserved(2)),
                _ => ("VCPU", InventorySpec::new(32).ratio(4.0).max_unit(128)),
            };
            let mut numa = ProviderSpec {
                name: format!("{name}-numa{n}"),
                numa_node: Some(n),
                traits: vec!["HW_NUMA_ROOT".into()],
                inventories: inv(&[
                    cpu,
                    (
                        "MEMORY_MB",
                        InventorySpec::new(mem_per_numa).reserved(if n == 0 { 4096 } else { 0 }),
                    ),
                    ("HUGEPAGES_1G", InventorySpec::new(32)),
                ]),
                children: Vec::new(),
            };
            if kind == HostKind::Gpu {
                numa.children.push(ProviderSpec {
                    name: format!("{name}-gpu{n}"),
                    numa_node: None,
                    traits: vec!["CUSTOM_VGPU_A16_4Q".into()],
                    inventories: inv(&[("VGPU", InventorySpec::new(4))]),
                    children: Vec::new(),
                });
            }
            children.push(numa);
        }
        let mut labels = BTreeMap::new();
        labels.insert("kind".to_string(), format!("{kind:?}").to_lowercase());
        let mut traits = vec!["HW_CPU_X86_AVX2".to_string()];
        let mut taints = Vec::new();
        match kind {
            HostKind::Gpu => traits.push("HW_GPU".into()),
            HostKind::Dedicated => {
                traits.push("HW_CPU_PINNING".into());
                taints.push(Taint {
                    key: "dedicated".into(),
                    value: "hpc".into(),
                    effect: TaintEffect::NoSchedule,
                });
            }
            _ => {}
        }
        if r.chance(30) {
            traits.push("HW_CPU_X86_AVX512F".into());
        }
        hosts.push(HostSpec {
            name,
            zone: Some(format!("z{zone}")),
            rack: Some(format!("z{zone}-r{rack:03}")),
            aggregates: vec![format!("agg-z{zone}")],
            labels,
            taints,
            traits,
            inventories: inv(&[("DISK_GB", InventorySpec::new(3840).ratio(1.5))]),
            children,
        });
    }
    let shared_providers = (0..zones)
        .map(|z| SharedProviderSpec {
            name: format!("pool-z{z}"),
            aggregates: vec![format!("agg-z{z}")],
            traits: vec!["STORAGE_SAN".into()],
            inventories: inv(&[(
                "CUSTOM_SAN_GB",
                InventorySpec::new(1_000_000).max_unit(10_000),
            )]),
        })
        .collect();
    ClusterSpec {
        custom_resource_classes: vec!["CUSTOM_SAN_GB".into()],
        hosts,
        shared_providers,
        server_groups: Vec::new(),
    }
}

/// A workload: server groups to create first, then requests in order.
#[derive(Clone, Debug, Default)]
pub struct Workload {
    /// Server groups.
    pub server_groups: Vec<ServerGroupSpec>,
    /// Requests.
    pub requests: Vec<PlacementRequest>,
}

/// W1: `n` identical 2 vCPU / 4 GiB VMs.
pub fn homogeneous(n: usize, prefix: &str) -> Workload {
    Workload {
        server_groups: Vec::new(),
        requests: (0..n)
            .map(|i| {
                PlacementRequest::new(format!("{prefix}{i}"), &[("VCPU", 2), ("MEMORY_MB", 4096)])
            })
            .collect(),
    }
}

/// Flavours of W2 (vCPU, GiB, weight): heavy-tailed sizes, some memory-optimised.
pub const MIXED_FLAVOURS: &[(i64, i64, u64)] = &[
    (1, 2, 24),
    (2, 4, 22),
    (4, 8, 18),
    (8, 16, 12),
    (16, 32, 7),
    (32, 64, 3),
    (64, 128, 1),
    (2, 16, 5),
    (4, 32, 4),
    (8, 64, 3),
    (16, 128, 1),
];

/// One W2 request.
pub fn mixed_request(r: &mut SplitMix64, id: String) -> PlacementRequest {
    let total: u64 = MIXED_FLAVOURS.iter().map(|f| f.2).sum();
    let mut pick = r.below(total);
    for &(cpu, gib, w) in MIXED_FLAVOURS {
        if pick < w {
            return PlacementRequest::new(id, &[("VCPU", cpu), ("MEMORY_MB", gib * 1024)]);
        }
        pick -= w;
    }
    PlacementRequest::new(id, &[("VCPU", 1), ("MEMORY_MB", 2048)])
}

/// W2: `n` mixed-flavour VMs.
pub fn mixed(n: usize, seed: u64, prefix: &str) -> Workload {
    let mut r = SplitMix64::new(seed);
    Workload {
        server_groups: Vec::new(),
        requests: (0..n)
            .map(|i| mixed_request(&mut r, format!("{prefix}{i}")))
            .collect(),
    }
}

/// W3: anti-affinity groups of 3–10 members, spread over zones with max skew 1, until `n` requests.
pub fn anti_affinity(n: usize, seed: u64, prefix: &str) -> Workload {
    let mut r = SplitMix64::new(seed);
    let mut w = Workload::default();
    let mut g = 0;
    while w.requests.len() < n {
        let name = format!("{prefix}g{g}");
        g += 1;
        w.server_groups.push(ServerGroupSpec {
            name: name.clone(),
            policy: ServerGroupPolicy::AntiAffinity,
            max_per_host: None,
        });
        let size = r.range_inclusive(3, 10) as usize;
        for m in 0..size.min(n - w.requests.len()) {
            let mut req =
                PlacementRequest::new(format!("{name}-{m}"), &[("VCPU", 2), ("MEMORY_MB", 4096)]);
            req.server_group = Some(name.clone());
            req.topology_spread.push(SpreadConstraint {
                key: TopologyKey::Zone,
                max_skew: 1,
                when_unsatisfiable: WhenUnsatisfiable::DoNotSchedule,
            });
            w.requests.push(req);
        }
    }
    w
}

/// W4: NUMA-pinned VMs: vCPUs, memory and 1 GiB hugepages all from one NUMA node.
pub fn numa_pinned(n: usize, seed: u64, prefix: &str) -> Workload {
    let mut r = SplitMix64::new(seed);
    let requests = (0..n)
        .map(|i| {
            let cpu = [2i64, 4, 8, 16][r.below(4) as usize];
            let mut g = RequestGroup {
                name: "numa".into(),
                ..Default::default()
            };
            g.resources.insert("VCPU".into(), cpu);
            g.resources.insert("MEMORY_MB".into(), cpu * 2048);
            g.resources.insert("HUGEPAGES_1G".into(), cpu / 2);
            g.required_traits.push("HW_NUMA_ROOT".into());
            PlacementRequest {
                id: format!("{prefix}{i}"),
                groups: vec![g],
                ..Default::default()
            }
        })
        .collect();
    Workload {
        server_groups: Vec::new(),
        requests,
    }
}

/// A request for a vGPU on the same NUMA node as its vCPUs (exercises nested providers).
pub fn gpu_request(id: String) -> PlacementRequest {
    let mut numa = RequestGroup {
        name: "numa".into(),
        ..Default::default()
    };
    numa.resources.insert("VCPU".into(), 4);
    numa.resources.insert("MEMORY_MB".into(), 16384);
    let mut gpu = RequestGroup {
        name: "gpu".into(),
        ..Default::default()
    };
    gpu.resources.insert("VGPU".into(), 1);
    gpu.required_traits.push("CUSTOM_VGPU_A16_4Q".into());
    PlacementRequest {
        id,
        groups: vec![numa, gpu],
        same_subtree: vec![vec!["numa".into(), "gpu".into()]],
        required_traits: vec!["HW_GPU".into()],
        ..Default::default()
    }
}

/// A request for pinned CPUs on the tainted dedicated hosts.
pub fn dedicated_request(id: String, cpus: i64) -> PlacementRequest {
    let mut req = PlacementRequest::new(id, &[("PCPU", cpus), ("MEMORY_MB", cpus * 4096)]);
    req.tolerations.push(Toleration {
        key: "dedicated".into(),
        operator: TolerationOperator::Equal,
        value: "hpc".into(),
        effect: Some(TaintEffect::NoSchedule),
    });
    req
}

/// A demo stream of `n` events for a cluster from [`cluster`]: mixed VMs, anti-affinity groups with
/// zone spread, NUMA-pinned, GPU and dedicated VMs, about 10% releases, and two requests nothing can
/// satisfy (to show explanations).
pub fn demo_stream(n: usize, seed: u64) -> crate::request::RequestStream {
    use crate::request::StreamEvent;
    let mut r = SplitMix64::new(seed);
    let mut events = Vec::with_capacity(n + 2);
    let mut live: Vec<String> = Vec::new();
    let mut groups = Vec::new();
    let mut i = 0usize;
    while events.len() < n {
        i += 1;
        let roll = r.below(100);
        if roll < 10 && !live.is_empty() {
            let k = r.below(live.len() as u64) as usize;
            events.push(StreamEvent::Release(live.swap_remove(k)));
            continue;
        }
        let reqs = match roll {
            10..=14 => {
                let w = anti_affinity(
                    r.range_inclusive(3, 8) as usize,
                    r.next_u64(),
                    &format!("web{i}-"),
                );
                groups.extend(w.server_groups);
                w.requests
            }
            15..=19 => numa_pinned(1, r.next_u64(), &format!("numa{i}-")).requests,
            20..=23 => vec![gpu_request(format!("gpu{i}"))],
            24..=26 => vec![dedicated_request(format!("hpc{i}"), 8)],
            _ => vec![mixed_request(&mut r, format!("vm{i}"))],
        };
        for req in reqs {
            live.push(req.id.clone());
            events.push(StreamEvent::Place(Box::new(req)));
        }
    }
    let mut big = PlacementRequest::new("too-big-gpu", &[("VCPU", 8), ("MEMORY_MB", 700_000)]);
    big.required_traits.push("HW_GPU".into());
    events.push(StreamEvent::Place(Box::new(big)));
    let mut fpga = PlacementRequest::new("needs-fpga", &[("VCPU", 2), ("MEMORY_MB", 4096)]);
    fpga.required_traits.push("CUSTOM_FPGA_XILINX".into());
    events.push(StreamEvent::Place(Box::new(fpga)));
    crate::request::RequestStream {
        server_groups: groups,
        events,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Cluster;

    #[test]
    fn generated_cluster_is_valid_and_deterministic() {
        let a = cluster(ClusterShape::new(300, 9));
        assert_eq!(a, cluster(ClusterShape::new(300, 9)));
        let c = Cluster::from_spec(&a).unwrap();
        assert_eq!(c.host_count(), 300);
        assert_eq!(c.zone_count(), 3);
        let gpu = c.index().with_trait(c.trait_id("HW_GPU").unwrap()).count();
        assert!((10..=60).contains(&gpu), "gpu hosts {gpu}");
    }

    #[test]
    fn demo_stream_places_and_explains() {
        use crate::request::StreamEvent;
        let spec = cluster(ClusterShape::new(100, 1));
        let mut p = crate::Placer::new(
            std::sync::Arc::new(Cluster::from_spec(&spec).unwrap()),
            crate::Profile::default(),
            1,
        );
        let stream = demo_stream(400, 2);
        for g in &stream.server_groups {
            p.state_mut().create_server_group(g.clone()).unwrap();
        }
        let (mut ok, mut failed) = (0, Vec::new());
        for e in &stream.events {
            match e {
                StreamEvent::Place(r) => match p.place(r) {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push((r.id.clone(), e.to_string())),
                },
                StreamEvent::Release(id) => {
                    p.state_mut().release(id).ok();
                }
            }
        }
        assert!(ok > 300, "{ok}");
        assert_eq!(failed.len(), 2, "{failed:?}");
        assert_eq!(
            failed[1].1,
            "0/100 hosts available: 100 missing trait CUSTOM_FPGA_XILINX"
        );
        assert!(p.state().check_consistency().is_empty());
    }

    #[test]
    fn workloads_have_requested_sizes() {
        assert_eq!(homogeneous(10, "a").requests.len(), 10);
        assert_eq!(mixed(50, 1, "m").requests.len(), 50);
        let w = anti_affinity(25, 2, "w");
        assert_eq!(w.requests.len(), 25);
        assert!(w.server_groups.len() >= 3);
        assert_eq!(numa_pinned(5, 3, "n").requests.len(), 5);
    }
}
