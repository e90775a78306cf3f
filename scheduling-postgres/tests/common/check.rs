//! The independent check: reads the final allocations straight from the database with SQL and
//! judges them against the cluster description and request stream the test generated, without
//! using the store's code.

use scheduling::request::{RequestStream, StreamEvent};
use scheduling::state::{QuotaLimits, QuotaScope};
use scheduling::ClusterSpec;
use std::collections::{BTreeMap, HashMap, HashSet};

/// What the check found.
#[derive(Debug, Default)]
pub struct Report {
    pub vms: usize,
    pub problems: Vec<String>,
    /// consumer -> host.
    pub hosts: HashMap<String, String>,
}

fn capacities(spec: &ClusterSpec) -> (HashMap<(String, String), i64>, HashMap<String, String>) {
    // (provider, class) -> floor((total - reserved) * ratio); provider -> its host ("" if shared).
    let mut cap = HashMap::new();
    let mut host_of = HashMap::new();
    fn walk(
        p: &scheduling::model::ProviderSpec,
        host: &str,
        cap: &mut HashMap<(String, String), i64>,
        host_of: &mut HashMap<String, String>,
    ) {
        host_of.insert(p.name.clone(), host.to_string());
        for (c, i) in &p.inventories {
            let ratio = i.allocation_ratio.unwrap_or(1.0);
            cap.insert(
                (p.name.clone(), c.clone()),
                ((i.total - i.reserved) as f64 * ratio).floor() as i64,
            );
        }
        for k in &p.children {
            walk(k, host, cap, host_of);
        }
    }
    for h in &spec.hosts {
        host_of.insert(h.name.clone(), h.name.clone());
        for (c, i) in &h.inventories {
            let ratio = i.allocation_ratio.unwrap_or(1.0);
            cap.insert(
                (h.name.clone(), c.clone()),
                ((i.total - i.reserved) as f64 * ratio).floor() as i64,
            );
        }
        for k in &h.children {
            walk(k, &h.name, &mut cap, &mut host_of);
        }
    }
    for s in &spec.shared_providers {
        host_of.insert(s.name.clone(), String::new());
        for (c, i) in &s.inventories {
            let ratio = i.allocation_ratio.unwrap_or(1.0);
            cap.insert(
                (s.name.clone(), c.clone()),
                ((i.total - i.reserved) as f64 * ratio).floor() as i64,
            );
        }
    }
    (cap, host_of)
}

/// Checks the database at `db` against the cluster and the requests: no inventory over
/// capacity, no quota of `quotas` exceeded, no anti-affinity group with two members on a host,
/// every allocation a whole one (exactly the request's resources, on its host's providers), no
/// VM allocated twice or unknown, and the database's own usage counters equal to the sums.
pub fn database(
    db: &str,
    spec: &ClusterSpec,
    stream: &RequestStream,
    quotas: &[(QuotaScope, QuotaLimits)],
) -> Report {
    let mut client = postgres::Client::connect(db, postgres::NoTls).expect("connect for the check");
    let mut report = Report::default();
    let (cap, host_of) = capacities(spec);
    let requests: HashMap<&str, &scheduling::PlacementRequest> = stream
        .events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Place(r) => Some((r.id.as_str(), &**r)),
            StreamEvent::Release(_) => None,
        })
        .collect();
    let groups: HashMap<&str, &scheduling::model::ServerGroupSpec> = stream
        .server_groups
        .iter()
        .map(|g| (g.name.as_str(), g))
        .collect();

    // Consumers, and their allocations.
    let consumers = client
        .query("SELECT id, host FROM keel_consumers", &[])
        .expect("read consumers");
    let mut seen = HashSet::new();
    for row in &consumers {
        let id: String = row.get(0);
        let host: String = row.get(1);
        if !seen.insert(id.clone()) {
            report.problems.push(format!("`{id}` allocated twice"));
        }
        if !requests.contains_key(id.as_str()) {
            report.problems.push(format!("`{id}` was never requested"));
        }
        report.hosts.insert(id, host);
    }
    report.vms = report.hosts.len();
    let mut per_consumer: HashMap<String, BTreeMap<String, i64>> = HashMap::new();
    let mut per_inventory: HashMap<(String, String), i64> = HashMap::new();
    for row in client
        .query(
            "SELECT consumer, provider, class, amount FROM keel_allocations",
            &[],
        )
        .expect("read allocations")
    {
        let (consumer, provider, class, amount): (String, String, String, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let Some(host) = report.hosts.get(&consumer) else {
            report
                .problems
                .push(format!("allocation of `{consumer}`, which holds none"));
            continue;
        };
        match host_of.get(&provider) {
            Some(h) if h == host || h.is_empty() => {}
            _ => report.problems.push(format!(
                "`{consumer}` on `{host}` uses provider `{provider}` of another host"
            )),
        }
        *per_consumer
            .entry(consumer)
            .or_default()
            .entry(class.clone())
            .or_default() += amount;
        *per_inventory.entry((provider, class)).or_default() += amount;
    }
    // Capacity.
    for ((provider, class), used) in &per_inventory {
        match cap.get(&(provider.clone(), class.clone())) {
            None => report
                .problems
                .push(format!("`{provider}` has no {class} inventory")),
            Some(&c) if *used > c => report.problems.push(format!(
                "{class} on `{provider}`: {used} allocated, capacity {c}"
            )),
            _ => {}
        }
    }
    for row in client
        .query(
            "SELECT provider, class, used FROM keel_inventories WHERE used <> 0",
            &[],
        )
        .expect("read inventories")
    {
        let key = (row.get::<_, String>(0), row.get::<_, String>(1));
        let used: i64 = row.get(2);
        if per_inventory.get(&key).copied().unwrap_or(0) != used {
            report.problems.push(format!(
                "usage counter of {key:?} is {used}, allocations differ"
            ));
        }
    }
    // Whole allocations.
    for id in report.hosts.keys() {
        let Some(req) = requests.get(id.as_str()) else {
            continue;
        };
        let mut want: BTreeMap<String, i64> = req.resources.clone().into_iter().collect();
        for g in &req.groups {
            for (c, a) in &g.resources {
                *want.entry(c.clone()).or_default() += *a;
            }
        }
        want.retain(|_, a| *a > 0);
        let got = per_consumer.get(id).cloned().unwrap_or_default();
        if got != want {
            report
                .problems
                .push(format!("`{id}` holds {got:?}, asked for {want:?}"));
        }
    }
    // Anti-affinity.
    let mut members: HashMap<(&str, &str), u32> = HashMap::new();
    for (id, host) in &report.hosts {
        let Some(req) = requests.get(id.as_str()) else {
            continue;
        };
        let Some(g) = req.server_group.as_deref() else {
            continue;
        };
        if let Some(spec) = groups.get(g) {
            if spec.policy == scheduling::model::ServerGroupPolicy::AntiAffinity {
                let n = members.entry((g, host.as_str())).or_default();
                *n += 1;
                if *n > spec.max_per_host.unwrap_or(1) {
                    report.problems.push(format!(
                        "anti-affinity group `{g}`: {n} members on `{host}`"
                    ));
                }
            }
        }
    }
    // Quotas.
    for (scope, limits) in quotas {
        let mut vms = 0u64;
        let mut amounts: BTreeMap<String, i64> = BTreeMap::new();
        for id in report.hosts.keys() {
            let Some(req) = requests.get(id.as_str()) else {
                continue;
            };
            let inside = match scope {
                QuotaScope::Project(p) => req.project.as_deref() == Some(p),
                QuotaScope::User { project, user } => {
                    req.project.as_deref() == Some(project) && req.user.as_deref() == Some(user)
                }
            };
            if inside {
                vms += 1;
                for (c, a) in per_consumer.get(id).into_iter().flatten() {
                    *amounts.entry(c.clone()).or_default() += a;
                }
            }
        }
        if let Some(max) = limits.instances {
            if vms > max {
                report
                    .problems
                    .push(format!("quota of {scope}: {vms} VMs, limit {max}"));
            }
        }
        for (c, max) in &limits.resources {
            let used = amounts.get(c).copied().unwrap_or(0);
            if used > *max as i64 {
                report
                    .problems
                    .push(format!("quota of {scope}: {used} {c}, limit {max}"));
            }
        }
    }
    report
}
