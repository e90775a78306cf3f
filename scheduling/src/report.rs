//! Reports on a state: utilisation per class, stranded capacity, the packing lower bound, and an SVG picture.

use crate::model::{ClassId, Cluster, HostId};
use crate::state::State;
use serde::Serialize;
use std::fmt::Write as _;

/// Use of one resource class across the cluster.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ClassUsage {
    /// Class name.
    pub class: String,
    /// Allocatable capacity (after reserved and ratio).
    pub capacity: u64,
    /// Allocated.
    pub used: u64,
    /// Allocated / capacity, in percent.
    pub percent: f64,
    /// Free capacity stranded on hosts that cannot take even one VM of the reference shape because
    /// another class ran out.
    pub stranded: u64,
}

/// Cluster-wide summary.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Summary {
    /// Hosts.
    pub hosts: usize,
    /// Hosts with at least one VM.
    pub hosts_used: usize,
    /// VMs.
    pub vms: usize,
    /// Per class, classes with capacity only.
    pub classes: Vec<ClassUsage>,
}

/// Computes the summary. `reference` is the VM shape used to decide what is stranded (e.g. the smallest
/// flavour, `[(VCPU, 1), (MEMORY_MB, 2048)]`): a host whose free space cannot take one reference VM
/// strands whatever it still has free.
pub fn summary(state: &State, reference: &[(ClassId, u64)]) -> Summary {
    let c = state.cluster();
    let n = c.class_count();
    let mut capacity = vec![0u64; n];
    let mut used = vec![0u64; n];
    for (i, s) in c.slot_ids().zip(c.slots()) {
        // A cluster-wide sum may pass 2^64 (100,000 hosts of 2^53): saturate rather than wrap.
        capacity[s.class.idx()] = capacity[s.class.idx()].saturating_add(s.capacity);
        used[s.class.idx()] = used[s.class.idx()].saturating_add(state.used(i));
    }
    let mut stranded = vec![0u64; n];
    let mut hosts_used = 0;
    for h in 0..c.host_count() {
        let host = HostId::new(h);
        if state.vm_count(host) > 0 {
            hosts_used += 1;
        }
        let free = |cl: ClassId| {
            c.host_capacity(host, cl)
                .saturating_sub(state.host_used(host, cl))
        };
        if reference
            .iter()
            .any(|(cl, _)| c.host_capacity(host, *cl) == 0)
        {
            continue;
        }
        if reference.iter().any(|(cl, a)| free(*cl) < *a) {
            for (cl, _) in reference {
                stranded[cl.idx()] = stranded[cl.idx()].saturating_add(free(*cl));
            }
        }
    }
    let classes = (0..n)
        .filter(|i| capacity[*i] > 0)
        .map(|i| ClassUsage {
            class: c.class_name(ClassId::new(i)).to_string(),
            capacity: capacity[i],
            used: used[i],
            percent: used[i] as f64 * 100.0 / capacity[i] as f64,
            stranded: stranded[i],
        })
        .collect();
    Summary {
        hosts: c.host_count(),
        hosts_used,
        vms: state.allocations().len(),
        classes,
    }
}

impl Summary {
    /// A plain-text table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "hosts used {}/{}  VMs {}\n{:<16} {:>14} {:>14} {:>7} {:>12}\n",
            self.hosts_used, self.hosts, self.vms, "class", "capacity", "used", "used%", "stranded"
        );
        for u in &self.classes {
            let _ = writeln!(
                s,
                "{:<16} {:>14} {:>14} {:>6.1}% {:>12}",
                u.class, u.capacity, u.used, u.percent, u.stranded
            );
        }
        s
    }
}

/// The per-dimension volume lower bound on hosts needed for `demand`: for each class, the fewest hosts
/// whose capacities (largest first) add up to the demand; the bound is the maximum over classes.
pub fn volume_lower_bound(cluster: &Cluster, demand: &[(ClassId, u64)]) -> usize {
    let mut bound = 0;
    for &(class, need) in demand {
        let mut caps: Vec<u64> = (0..cluster.host_count())
            .map(|h| cluster.host_capacity(HostId::new(h), class))
            .collect();
        caps.sort_unstable_by(|a, b| b.cmp(a));
        let mut sum = 0u64;
        let mut k = 0;
        for cap in caps {
            if sum >= need {
                break;
            }
            sum = sum.saturating_add(cap);
            k += 1;
        }
        bound = bound.max(k);
    }
    bound
}

/// What host `h` can hold of classes `a` and `b` when every VM asks for between `min_ratio` and
/// `max_ratio` units of `b` per unit of `a`: at most `min(cap_a, cap_b / min_ratio)` of `a` (each unit
/// of `a` brings at least `min_ratio` of `b`) and at most `min(cap_b, cap_a × max_ratio)` of `b`.
fn shape_capacity(
    cluster: &Cluster,
    h: HostId,
    a: ClassId,
    b: ClassId,
    min_ratio: f64,
    max_ratio: f64,
) -> (f64, f64) {
    let (x, y) = (
        cluster.host_capacity(h, a) as f64,
        cluster.host_capacity(h, b) as f64,
    );
    let ea = if min_ratio > 0.0 {
        x.min(y / min_ratio)
    } else {
        x
    };
    (ea, y.min(x * max_ratio))
}

/// A tighter, shape-aware volume bound for two classes `a` and `b` (e.g. VCPU and MEMORY_MB) when
/// every VM asks for between `min_ratio` and `max_ratio` units of `b` per unit of `a`.
///
/// Why it is a lower bound: on any host, the VMs' `a` sum to at most `cap_a`, and since each brings at
/// least `min_ratio` of `b` per unit of `a`, also to at most `cap_b / min_ratio`; likewise their `b` sum
/// to at most `min(cap_b, cap_a × max_ratio)`. Any packing's hosts must therefore cover the demand with
/// these effective capacities, and the fewest hosts that can do so are the largest ones, as in
/// [`volume_lower_bound`]. With `min_ratio = 0` and `max_ratio = ∞` it equals the volume bound, so it is
/// never weaker.
pub fn shape_aware_lower_bound(
    cluster: &Cluster,
    (a, demand_a): (ClassId, u64),
    (b, demand_b): (ClassId, u64),
    min_ratio: f64,
    max_ratio: f64,
) -> usize {
    let cover = |need: u64, mut caps: Vec<f64>| {
        caps.sort_unstable_by(|x, y| y.total_cmp(x));
        let (mut sum, mut k) = (0f64, 0usize);
        for cap in caps {
            if sum >= need as f64 {
                break;
            }
            sum += cap;
            k += 1;
        }
        k
    };
    let (ca, cb): (Vec<f64>, Vec<f64>) = (0..cluster.host_count())
        .map(|h| shape_capacity(cluster, HostId::new(h), a, b, min_ratio, max_ratio))
        .unzip();
    cover(demand_a, ca).max(cover(demand_b, cb))
}

/// The most of classes `a` and `b` that any packing of VMs with `b`/`a` ratios in
/// `min_ratio..=max_ratio` can hold on the whole cluster (the sums of the effective capacities of
/// [`shape_aware_lower_bound`]). Placed demand divided by this tells how close a packing came to the
/// cluster's real capacity for that mix, which the plain volume cannot (memory-heavy hosts' memory is
/// unreachable for VMs that bring too little memory per vCPU).
pub fn shape_aware_capacity(
    cluster: &Cluster,
    a: ClassId,
    b: ClassId,
    min_ratio: f64,
    max_ratio: f64,
) -> (f64, f64) {
    (0..cluster.host_count())
        .map(|h| shape_capacity(cluster, HostId::new(h), a, b, min_ratio, max_ratio))
        .fold((0.0, 0.0), |(sa, sb), (x, y)| (sa + x, sb + y))
}

/// An SVG grid with one cell per host; the cell's two halves show the utilisation of `classes[0]` and
/// `classes[1]` (white = empty, dark red = full; grey = host has no such capacity).
pub fn svg(state: &State, classes: [ClassId; 2], title: &str) -> String {
    let c = state.cluster();
    let n = c.host_count();
    let cols = ((n as f64).sqrt().ceil() as usize).max(1);
    let rows = n.div_ceil(cols);
    let cell = if n > 5000 {
        4
    } else if n > 1000 {
        8
    } else {
        14
    };
    let (w, h) = ((cols * cell + 20).max(560), rows * cell + 60);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"#fafafa\"/>\n\
         <text x=\"10\" y=\"20\" font-family=\"sans-serif\" font-size=\"14\">{}</text>\n\
         <text x=\"10\" y=\"38\" font-family=\"sans-serif\" font-size=\"11\">left half: {} · right half: {} · white = free, red = full</text>\n",
        escape(title),
        c.class_name(classes[0]),
        c.class_name(classes[1])
    );
    for i in 0..n {
        let host = HostId::new(i);
        let (x, y) = (10 + (i % cols) * cell, 48 + (i / cols) * cell);
        for (half, class) in classes.iter().enumerate() {
            let cap = c.host_capacity(host, *class);
            let fill = if cap == 0 {
                "#cccccc".to_string()
            } else {
                let u = state.host_used(host, *class) as f64 / cap as f64;
                let g = (255.0 * (1.0 - u)).round().clamp(0.0, 255.0) as u8;
                format!("#{:02x}{:02x}{:02x}", 255 - (u * 80.0) as u8, g, g)
            };
            let _ = writeln!(
                out,
                "<rect x=\"{}\" y=\"{y}\" width=\"{}\" height=\"{}\" fill=\"{fill}\"/>",
                x + half * cell / 2,
                cell / 2,
                cell.saturating_sub(1)
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cluster, PlacementRequest, Placer, Profile};
    use std::sync::Arc;

    fn placer() -> Placer {
        let json = r#"{"hosts": [
            {"name": "a", "inventories": {"VCPU": {"total": 8}, "MEMORY_MB": {"total": 8192}}},
            {"name": "b", "inventories": {"VCPU": {"total": 4}, "MEMORY_MB": {"total": 4096}}}]}"#;
        Placer::new(
            Arc::new(Cluster::from_json(json).unwrap()),
            Profile::default(),
            1,
        )
    }

    #[test]
    fn lower_bound_takes_largest_hosts_first() {
        let p = placer();
        let c = p.state().cluster();
        let vcpu = c.class_id("VCPU").unwrap();
        let mem = c.class_id("MEMORY_MB").unwrap();
        assert_eq!(volume_lower_bound(c, &[(vcpu, 8)]), 1);
        assert_eq!(volume_lower_bound(c, &[(vcpu, 9), (mem, 10)]), 2);
        assert_eq!(volume_lower_bound(c, &[(vcpu, 0)]), 0);
        // VMs with 2048 MB per vCPU: host a holds at most 4 of their vCPUs (memory runs out first) and
        // host b 2, so 5 vCPUs need both hosts although a's 8 vCPUs alone would cover them by volume.
        // Past the cluster's shape capacity the bound saturates at all hosts.
        assert_eq!(
            shape_aware_lower_bound(c, (vcpu, 4), (mem, 8192), 2048.0, 2048.0),
            1
        );
        assert_eq!(
            shape_aware_lower_bound(c, (vcpu, 5), (mem, 10240), 2048.0, 2048.0),
            2
        );
        assert_eq!(volume_lower_bound(c, &[(vcpu, 5), (mem, 10240)]), 2);
        assert_eq!(volume_lower_bound(c, &[(vcpu, 5)]), 1);
        assert_eq!(
            shape_aware_lower_bound(c, (vcpu, 11), (mem, 22528), 2048.0, 2048.0),
            2
        );
        // With 2048 MB per vCPU, a holds 4 vCPUs and b 2: 6 of the 12 vCPUs are reachable.
        assert_eq!(
            shape_aware_capacity(c, vcpu, mem, 2048.0, 2048.0),
            (6.0, 12288.0)
        );
        // Without a shape it is the plain capacity.
        assert_eq!(
            shape_aware_capacity(c, vcpu, mem, 0.0, f64::INFINITY),
            (12.0, 12288.0)
        );
    }

    #[test]
    fn summary_counts_usage_and_stranded() {
        let mut p = placer();
        // Takes all memory of host b but only 1 of its vCPUs: its other 3 vCPUs are stranded.
        let m = p
            .state()
            .compile(&PlacementRequest::new(
                "m",
                &[("VCPU", 1), ("MEMORY_MB", 4096)],
            ))
            .unwrap();
        let opts = crate::DecideOptions {
            exclude: &[HostId::new(0)],
            ..Default::default()
        };
        p.place_compiled(&m, &opts).unwrap();
        let c = p.state().cluster().clone();
        let vcpu = c.class_id("VCPU").unwrap();
        let mem = c.class_id("MEMORY_MB").unwrap();
        let s = summary(p.state(), &[(vcpu, 1), (mem, 2048)]);
        assert_eq!(s.hosts_used, 1);
        let v = s.classes.iter().find(|u| u.class == "VCPU").unwrap();
        assert_eq!((v.capacity, v.used), (12, 1));
        assert_eq!(v.stranded, 3);
        let m = s.classes.iter().find(|u| u.class == "MEMORY_MB").unwrap();
        assert_eq!(m.stranded, 0);
        assert!(s.table().contains("VCPU"));
        let svg = svg(p.state(), [vcpu, mem], "t<1>");
        assert!(svg.starts_with("<svg") && svg.contains("t&lt;1&gt;"));
        assert_eq!(svg.matches("<rect").count(), 1 + 4);
    }
}
