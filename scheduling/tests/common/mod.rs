//! An independent validator of placements.
//!
//! It re-reads the cluster *description* (the serde input types only) and replays placements and releases,
//! with its own capacity arithmetic and constraint checks. It shares no code with the scheduler: not the
//! compiled cluster, not the state, not the fit search, not the filters.

#![allow(dead_code)]

use scheduling::model::{
    ClusterSpec, InventorySpec, ProviderSpec, ServerGroupPolicy, ServerGroupSpec, TaintEffect,
};
use scheduling::request::{
    LabelOperator, PlacementRequest, TolerationOperator, TopologyKey, WhenUnsatisfiable,
};
use scheduling::Placement;
use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Clone, Debug)]
struct Inv {
    capacity: u128,
    min_unit: u64,
    max_unit: u64,
    step: u64,
}

#[derive(Clone, Debug)]
struct Prov {
    parent: Option<String>,
    host: Option<String>,
    traits: HashSet<String>,
    inv: HashMap<String, Inv>,
    shared_aggs: Vec<String>,
}

/// Replays placements against the description and reports every violation.
pub struct Validator {
    spec: ClusterSpec,
    providers: HashMap<String, Prov>,
    used: HashMap<(String, String), u128>,
    groups: HashMap<String, ServerGroupSpec>,
    /// consumer -> (host, request, resources)
    live: HashMap<String, (String, PlacementRequest, Placement)>,
    /// host -> providers it may draw from (its tree and shared providers of its aggregates)
    reach: HashMap<String, Vec<String>>,
    pub checked: usize,
}

/// floor((total - reserved) * ratio) with the ratio as an exact decimal fraction (inputs are short decimals).
fn capacity(i: &InventorySpec) -> u128 {
    let ratio = i.allocation_ratio.unwrap_or(1.0);
    // Express the ratio as n / 10^6 by decimal string, not by the scheduler's conversion.
    let s = format!("{ratio:.6}");
    let (int, frac) = s.split_once('.').unwrap_or((&s, "0"));
    let frac = format!("{frac:0<6}");
    let n: u128 = int.parse::<u128>().unwrap() * 1_000_000 + frac[..6].parse::<u128>().unwrap();
    ((i.total - i.reserved) as u128) * n / 1_000_000
}

fn add_tree(out: &mut HashMap<String, Prov>, p: &ProviderSpec, parent: &str, host: &str) {
    out.insert(
        p.name.clone(),
        Prov {
            parent: Some(parent.to_string()),
            host: Some(host.to_string()),
            traits: p.traits.iter().cloned().collect(),
            inv: invs(&p.inventories),
            shared_aggs: vec![],
        },
    );
    for c in &p.children {
        add_tree(out, c, &p.name, host);
    }
}

fn invs(m: &BTreeMap<String, InventorySpec>) -> HashMap<String, Inv> {
    m.iter()
        .map(|(k, i)| {
            (
                k.clone(),
                Inv {
                    capacity: capacity(i),
                    min_unit: i.min_unit.unwrap_or(1) as u64,
                    max_unit: i.max_unit.unwrap_or(i.total) as u64,
                    step: i.step_size.unwrap_or(1) as u64,
                },
            )
        })
        .collect()
}

impl Validator {
    pub fn new(spec: &ClusterSpec) -> Self {
        let mut providers = HashMap::new();
        for h in &spec.hosts {
            providers.insert(
                h.name.clone(),
                Prov {
                    parent: None,
                    host: Some(h.name.clone()),
                    traits: h.traits.iter().cloned().collect(),
                    inv: invs(&h.inventories),
                    shared_aggs: vec![],
                },
            );
            for c in &h.children {
                add_tree(&mut providers, c, &h.name, &h.name);
            }
        }
        for s in &spec.shared_providers {
            providers.insert(
                s.name.clone(),
                Prov {
                    parent: None,
                    host: None,
                    traits: s.traits.iter().cloned().collect(),
                    inv: invs(&s.inventories),
                    shared_aggs: s.aggregates.clone(),
                },
            );
        }
        let groups = spec
            .server_groups
            .iter()
            .map(|g| (g.name.clone(), g.clone()))
            .collect();
        let mut reach: HashMap<String, Vec<String>> = HashMap::new();
        for (name, p) in &providers {
            for h in &spec.hosts {
                let ok = match &p.host {
                    Some(x) => *x == h.name,
                    None => p.shared_aggs.iter().any(|a| h.aggregates.contains(a)),
                };
                if ok {
                    reach.entry(h.name.clone()).or_default().push(name.clone());
                }
            }
        }
        Validator {
            reach,
            spec: spec.clone(),
            providers,
            used: HashMap::new(),
            groups,
            live: HashMap::new(),
            checked: 0,
        }
    }

    pub fn add_group(&mut self, g: &ServerGroupSpec) {
        self.groups.insert(g.name.clone(), g.clone());
    }

    fn host(&self, name: &str) -> Option<&scheduling::model::HostSpec> {
        self.spec.hosts.iter().find(|h| h.name == name)
    }

    fn is_ancestor_or_self<'a>(&'a self, a: &str, mut b: &'a str) -> bool {
        loop {
            if a == b {
                return true;
            }
            match self.providers.get(b).and_then(|p| p.parent.as_deref()) {
                Some(p) => b = p,
                None => return false,
            }
        }
    }

    fn members_where(
        &self,
        group: &str,
        pred: impl Fn(&scheduling::model::HostSpec) -> bool,
    ) -> u32 {
        self.live
            .values()
            .filter(|(h, r, _)| {
                r.server_group.as_deref() == Some(group) && self.host(h).is_some_and(&pred)
            })
            .count() as u32
    }

    /// Checks one placement given everything placed before, then records it. Returns the violations.
    pub fn place(&mut self, req: &PlacementRequest, p: &Placement) -> Vec<String> {
        self.checked += 1;
        let mut v = Vec::new();
        let id = &req.id;
        if p.consumer != *id {
            v.push(format!("{id}: placement is for {}", p.consumer));
        }
        if self.live.contains_key(id) {
            v.push(format!("{id}: placed twice"));
        }
        let Some(host) = self.host(&p.host).cloned() else {
            v.push(format!("{id}: unknown host {}", p.host));
            return v;
        };
        // Every resource from a provider the host may use, within unit rules and capacity.
        let mut adds: HashMap<(String, String), u128> = HashMap::new();
        for r in &p.resources {
            let Some(prov) = self.providers.get(&r.provider) else {
                v.push(format!("{id}: unknown provider {}", r.provider));
                continue;
            };
            let reachable = match &prov.host {
                Some(h) => *h == host.name,
                None => prov.shared_aggs.iter().any(|a| host.aggregates.contains(a)),
            };
            if !reachable {
                v.push(format!(
                    "{id}: provider {} not reachable from {}",
                    r.provider, host.name
                ));
            }
            let Some(inv) = prov.inv.get(&r.class) else {
                v.push(format!("{id}: provider {} has no {}", r.provider, r.class));
                continue;
            };
            if r.amount < inv.min_unit
                || r.amount > inv.max_unit
                || !r.amount.is_multiple_of(inv.step)
            {
                v.push(format!(
                    "{id}: {} {} violates unit rules on {}",
                    r.amount, r.class, r.provider
                ));
            }
            *adds
                .entry((r.provider.clone(), r.class.clone()))
                .or_default() += u128::from(r.amount);
        }
        for ((prov, class), add) in &adds {
            let used = self
                .used
                .get(&(prov.clone(), class.clone()))
                .copied()
                .unwrap_or(0);
            let cap = self.providers[prov].inv[class].capacity;
            if used + add > cap {
                v.push(format!(
                    "{id}: {class} on {prov} over capacity: {used} + {add} > {cap}"
                ));
            }
        }
        // Resources match the request: named groups first (one provider each), then unnamed.
        let mut k = 0usize;
        let mut group_provider: HashMap<&str, String> = HashMap::new();
        for g in &req.groups {
            let mut prov: Option<String> = None;
            for (class, amount) in &g.resources {
                match p.resources.get(k) {
                    Some(r) if r.class == *class && r.amount as i64 == *amount => {
                        if prov.as_ref().is_some_and(|x| *x != r.provider) {
                            v.push(format!("{id}: group {} split across providers", g.name));
                        }
                        prov = Some(r.provider.clone());
                    }
                    other => v.push(format!(
                        "{id}: group {} expected {amount} {class}, got {other:?}",
                        g.name
                    )),
                }
                k += 1;
            }
            if let Some(prov) = prov {
                let traits = self
                    .providers
                    .get(&prov)
                    .map(|p| p.traits.clone())
                    .unwrap_or_default();
                for t in &g.required_traits {
                    if !traits.contains(t) {
                        v.push(format!("{id}: group {} provider {prov} lacks {t}", g.name));
                    }
                }
                for t in &g.forbidden_traits {
                    if traits.contains(t) {
                        v.push(format!(
                            "{id}: group {} provider {prov} has forbidden {t}",
                            g.name
                        ));
                    }
                }
                group_provider.insert(&g.name, prov);
            }
        }
        if req.group_policy == scheduling::request::GroupPolicy::Isolate {
            let distinct: HashSet<_> = group_provider.values().collect();
            if distinct.len() != group_provider.len() {
                v.push(format!("{id}: isolated groups share a provider"));
            }
        }
        for set in &req.same_subtree {
            let provs: Vec<&String> = set
                .iter()
                .filter_map(|n| group_provider.get(n.as_str()))
                .collect();
            if !provs
                .iter()
                .any(|a| provs.iter().all(|b| self.is_ancestor_or_self(a, b)))
            {
                v.push(format!("{id}: same_subtree {set:?} violated by {provs:?}"));
            }
        }
        for (class, amount) in &req.resources {
            match p.resources.get(k) {
                Some(r) if r.class == *class && r.amount as i64 == *amount => {}
                other => v.push(format!("{id}: expected {amount} {class}, got {other:?}")),
            }
            k += 1;
        }
        if k != p.resources.len() {
            v.push(format!(
                "{id}: {} resources allocated, {k} requested",
                p.resources.len()
            ));
        }
        v.extend(
            self.host_constraints(req, &host)
                .into_iter()
                .map(|e| format!("{id} on {}: {e}", host.name)),
        );
        if v.is_empty() {
            for (key, add) in adds {
                *self.used.entry(key).or_default() += add;
            }
            self.live
                .insert(id.clone(), (host.name.clone(), req.clone(), p.clone()));
        }
        v
    }

    /// Hard constraints of `req` on `host` given the current replayed state (empty = feasible).
    pub fn host_constraints(
        &self,
        req: &PlacementRequest,
        host: &scheduling::model::HostSpec,
    ) -> Vec<String> {
        let mut v = Vec::new();
        let traits: HashSet<&String> = host.traits.iter().collect();
        for t in &req.required_traits {
            if !traits.contains(t) {
                v.push(format!("missing trait {t}"));
            }
        }
        for t in &req.forbidden_traits {
            if traits.contains(t) {
                v.push(format!("forbidden trait {t}"));
            }
        }
        for set in &req.any_of_traits {
            if !set.iter().any(|t| traits.contains(t)) {
                v.push(format!("none of {set:?}"));
            }
        }
        if let Some(z) = &req.zone {
            if host.zone.as_ref() != Some(z) {
                v.push(format!("zone {:?} != {z}", host.zone));
            }
        }
        for set in &req.member_of {
            if !set.iter().any(|a| host.aggregates.contains(a)) {
                v.push(format!("not in {set:?}"));
            }
        }
        for (k, val) in &req.node_selector {
            if host.labels.get(k) != Some(val) {
                v.push(format!("label {k}"));
            }
        }
        for e in &req.node_affinity {
            let l = host.labels.get(&e.key);
            let ok = match e.operator {
                LabelOperator::In => l.is_some_and(|x| e.values.contains(x)),
                LabelOperator::NotIn => !l.is_some_and(|x| e.values.contains(x)),
                LabelOperator::Exists => l.is_some(),
                LabelOperator::DoesNotExist => l.is_none(),
            };
            if !ok {
                v.push(format!("affinity on {}", e.key));
            }
        }
        for t in &host.taints {
            if t.effect == TaintEffect::PreferNoSchedule {
                continue;
            }
            let tolerated = req.tolerations.iter().any(|tol| {
                tol.effect.is_none_or(|e| e == t.effect)
                    && match tol.operator {
                        TolerationOperator::Exists => tol.key.is_empty() || tol.key == t.key,
                        TolerationOperator::Equal => tol.key == t.key && tol.value == t.value,
                    }
            });
            if !tolerated {
                v.push(format!("taint {}", t.key));
            }
        }
        if let Some(gname) = &req.server_group {
            let Some(g) = self.groups.get(gname) else {
                v.push(format!("unknown group {gname}"));
                return v;
            };
            let on_host = self.members_where(gname, |h| h.name == host.name);
            match g.policy {
                ServerGroupPolicy::AntiAffinity if on_host >= g.max_per_host.unwrap_or(1) => {
                    v.push(format!("anti-affinity: {on_host} members already on host"));
                }
                ServerGroupPolicy::Affinity => {
                    let total = self.members_where(gname, |_| true);
                    if total > 0 && on_host != total {
                        v.push("affinity: members elsewhere".into());
                    }
                }
                _ => {}
            }
            for s in &req.topology_spread {
                if s.when_unsatisfiable != WhenUnsatisfiable::DoNotSchedule {
                    continue;
                }
                let dom = |h: &scheduling::model::HostSpec| match s.key {
                    TopologyKey::Zone => h.zone.clone(),
                    TopologyKey::Rack => h.rack.clone(),
                };
                let Some(mine) = dom(host) else {
                    v.push("host lacks topology key".into());
                    continue;
                };
                let domains: HashSet<String> = self.spec.hosts.iter().filter_map(dom).collect();
                let count = |d: &String| self.members_where(gname, |h| dom(h).as_ref() == Some(d));
                let min = domains.iter().map(count).min().unwrap_or(0);
                let here = count(&mine);
                if here + 1 - min > s.max_skew {
                    v.push(format!("spread skew {} > {}", here + 1 - min, s.max_skew));
                }
            }
        }
        v
    }

    /// Whether an unnamed-only request fits some host (brute force, for checking rejections).
    pub fn some_host_fits(&self, req: &PlacementRequest) -> Option<String> {
        assert!(req.groups.is_empty());
        'hosts: for h in &self.spec.hosts {
            if !self.host_constraints(req, h).is_empty() {
                continue;
            }
            for (class, amount) in &req.resources {
                let amount = *amount as u64;
                let reach = self.reach.get(&h.name).map(|v| v.as_slice()).unwrap_or(&[]);
                let fits = reach.iter().any(|name| {
                    self.providers[name].inv.get(class).is_some_and(|i| {
                        let used = self
                            .used
                            .get(&(name.clone(), class.clone()))
                            .copied()
                            .unwrap_or(0);
                        amount >= i.min_unit
                            && amount <= i.max_unit
                            && amount.is_multiple_of(i.step)
                            && used + u128::from(amount) <= i.capacity
                    })
                });
                if !fits {
                    continue 'hosts;
                }
            }
            return Some(h.name.clone());
        }
        None
    }

    pub fn release(&mut self, consumer: &str) -> Vec<String> {
        let Some((_, _, p)) = self.live.remove(consumer) else {
            return vec![format!("release of unknown consumer {consumer}")];
        };
        for r in &p.resources {
            if let Some(u) = self.used.get_mut(&(r.provider.clone(), r.class.clone())) {
                *u -= u128::from(r.amount);
            }
        }
        Vec::new()
    }

    /// Usage replayed so far, by (provider, class).
    pub fn usage(&self) -> &HashMap<(String, String), u128> {
        &self.used
    }

    pub fn live_count(&self) -> usize {
        self.live.len()
    }
}
