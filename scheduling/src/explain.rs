//! Why hosts were rejected, and how the chosen host was scored.
//!
//! Filters return a [`Reason`] (a small `Copy` value, cheap to count on the hot path); a [`Diagnosis`] counts
//! them, and [`Diagnosis::explain`] renders what users see, such as
//! `0/5000 hosts available: 3120 insufficient MEMORY_MB, 1500 missing trait HW_GPU, 380 anti-affinity`.

use crate::model::{ClassId, Cluster, HostId, TraitId};
use crate::request::CompiledRequest;
use serde::{Deserialize, Serialize};

/// Why one host cannot take a request.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The host is disabled (failed, maintenance).
    HostDisabled,
    /// The caller excluded the host (e.g. the source of a migration).
    Excluded,
    /// Not in the requested availability zone.
    WrongZone,
    /// In none of the aggregates of `member_of[i]`.
    NotInAggregates(u16),
    /// Lacks `required_traits[i]`.
    MissingTrait(u16),
    /// Has a forbidden trait.
    ForbiddenTrait(TraitId),
    /// Has none of `any_of_traits[i]`.
    NoneOfTraits(u16),
    /// Label `node_selector[i]` does not match.
    NodeSelector(u16),
    /// `node_affinity[i]` does not match.
    NodeAffinity(u16),
    /// Has blocking taint `i` of the cluster index, not tolerated.
    UntoleratedTaint(u16),
    /// No provider in reach has any inventory of the class.
    NoInventory(ClassId),
    /// Not enough free capacity of the class.
    Insufficient(ClassId),
    /// Inventories of the class exist but their min_unit/max_unit/step_size reject the amount.
    UnitConstraint(ClassId),
    /// Named group `i` fits on no single provider (traits, or its resources not co-located).
    GroupUnsatisfiable(u16),
    /// Each named group fits alone, but no assignment places them all together (isolation,
    /// same-subtree, or their sum on a shared provider).
    GroupLayout,
    /// The fit search on this host stopped at [`crate::framework::SEARCH_BUDGET`] steps without an answer
    /// (the request may fit there).
    SearchLimit(HostId),
    /// A member of the (anti-affinity) server group is already there.
    AntiAffinity,
    /// The host already has `max_per_host` members of the server group.
    MaxPerHost,
    /// The (affinity) server group's members are elsewhere.
    Affinity,
    /// Placing here would exceed `topology_spread[i].max_skew`, or the host lacks the topology key.
    TopologySpread(u16),
    /// A plugin rejected the host.
    Plugin(&'static str),
}

impl Reason {
    /// Packs a resource reason (see [`Reason::is_resource`]) into 32 bits; other reasons map to 0.
    pub(crate) fn to_code(self) -> u32 {
        match self {
            Reason::Insufficient(c) => (1 << 16) | u32::from(c.raw()),
            Reason::UnitConstraint(c) => (2 << 16) | u32::from(c.raw()),
            Reason::GroupUnsatisfiable(i) => (3 << 16) | u32::from(i),
            Reason::GroupLayout => 4 << 16,
            _ => 0,
        }
    }

    /// Inverse of [`Reason::to_code`] (0 and unknown codes decode as [`Reason::GroupLayout`]).
    pub(crate) fn from_code(code: u32) -> Reason {
        let v = (code & 0xffff) as u16;
        match code >> 16 {
            1 => Reason::Insufficient(ClassId::new(v as usize)),
            2 => Reason::UnitConstraint(ClassId::new(v as usize)),
            3 => Reason::GroupUnsatisfiable(v),
            _ => Reason::GroupLayout,
        }
    }

    /// Whether the reason is about inventory fit (which, until capacity is freed, can only get worse).
    pub fn is_resource(&self) -> bool {
        matches!(
            self,
            Reason::Insufficient(_)
                | Reason::UnitConstraint(_)
                | Reason::GroupUnsatisfiable(_)
                | Reason::GroupLayout
        )
    }

    /// Human-readable reason, resolving ids through the cluster and request (the text of
    /// [`Reason::resolve`]).
    pub fn describe(&self, cluster: &Cluster, req: &CompiledRequest) -> String {
        self.resolve(cluster, req).to_string()
    }

    /// The reason by names, as an embedder matches on it or serialises it.
    pub fn resolve(&self, cluster: &Cluster, req: &CompiledRequest) -> RejectionReason {
        let server_group = || req.server_group_name.clone().unwrap_or_default();
        let traits = |set: Option<&Vec<TraitId>>| {
            set.map(|s| {
                s.iter()
                    .map(|t| cluster.trait_name(*t).to_string())
                    .collect()
            })
            .unwrap_or_default()
        };
        let class = |c: ClassId| cluster.class_name(c).to_string();
        match *self {
            Reason::HostDisabled => RejectionReason::HostDisabled,
            Reason::Excluded => RejectionReason::Excluded,
            Reason::WrongZone => RejectionReason::WrongZone {
                zone: req
                    .zone
                    .map(|z| cluster.zone_name(z).to_string())
                    .unwrap_or_default(),
            },
            Reason::NotInAggregates(i) => RejectionReason::NotInAggregates {
                aggregates: req
                    .member_of
                    .get(i as usize)
                    .map(|s| {
                        s.iter()
                            .map(|a| cluster.aggregate_name(*a).to_string())
                            .collect()
                    })
                    .unwrap_or_default(),
            },
            Reason::MissingTrait(i) => RejectionReason::MissingTrait {
                trait_name: req
                    .required_traits
                    .get(i as usize)
                    .map_or_else(String::new, |t| t.name.clone()),
            },
            Reason::ForbiddenTrait(t) => RejectionReason::ForbiddenTrait {
                trait_name: cluster.trait_name(t).to_string(),
            },
            Reason::NoneOfTraits(i) => RejectionReason::NoneOfTraits {
                traits: traits(req.any_of_traits.get(i as usize)),
            },
            Reason::NodeSelector(i) => {
                let (key, value) = req
                    .node_selector
                    .get(i as usize)
                    .cloned()
                    .unwrap_or_default();
                RejectionReason::NodeSelector { key, value }
            }
            Reason::NodeAffinity(i) => RejectionReason::NodeAffinity {
                key: req
                    .node_affinity
                    .get(i as usize)
                    .map_or_else(String::new, |e| e.key.clone()),
            },
            Reason::UntoleratedTaint(i) => {
                match cluster.index().blocking_taints().get(i as usize) {
                    Some((t, _)) => RejectionReason::UntoleratedTaint { taint: t.clone() },
                    None => RejectionReason::Plugin {
                        plugin: "TaintToleration".into(),
                    },
                }
            }
            Reason::NoInventory(c) => RejectionReason::NoInventory { class: class(c) },
            Reason::Insufficient(c) => RejectionReason::Insufficient { class: class(c) },
            Reason::UnitConstraint(c) => RejectionReason::UnitConstraint { class: class(c) },
            Reason::GroupUnsatisfiable(i) => RejectionReason::GroupUnsatisfiable {
                group: req
                    .groups
                    .get(i as usize)
                    .map_or_else(String::new, |g| g.name.clone()),
            },
            Reason::GroupLayout => RejectionReason::GroupLayout,
            Reason::SearchLimit(h) => RejectionReason::SearchLimit {
                host: cluster.host(h).name.clone(),
                steps: crate::fit::SEARCH_BUDGET,
            },
            Reason::AntiAffinity => RejectionReason::AntiAffinity {
                server_group: server_group(),
            },
            Reason::MaxPerHost => RejectionReason::MaxPerHost {
                server_group: server_group(),
                max_per_host: req.server_group.map_or(0, |g| g.max_per_host),
            },
            Reason::Affinity => RejectionReason::Affinity {
                server_group: server_group(),
            },
            Reason::TopologySpread(i) => {
                let s = req.spread.get(i as usize);
                RejectionReason::TopologySpread {
                    key: s.map_or(crate::request::TopologyKey::Zone, |s| s.key),
                    max_skew: s.map_or(0, |s| s.max_skew),
                }
            }
            Reason::Plugin(name) => RejectionReason::Plugin {
                plugin: name.to_string(),
            },
        }
    }
}

/// Why one host cannot take a request, by names: what [`Reason`] says, resolved against the cluster
/// and the request, for an embedder to match on or serialise (`{"reason": "insufficient", "class":
/// "MEMORY_MB"}`). `Display` gives the text users see.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum RejectionReason {
    /// The host is disabled (failed, maintenance).
    HostDisabled,
    /// The caller excluded the host.
    Excluded,
    /// Not in the requested zone.
    WrongZone {
        /// The zone requested.
        zone: String,
    },
    /// In none of these aggregates (one `member_of` entry).
    NotInAggregates {
        /// The aggregates.
        aggregates: Vec<String>,
    },
    /// Lacks a required trait.
    MissingTrait {
        /// The trait.
        #[serde(rename = "trait")]
        trait_name: String,
    },
    /// Has a forbidden trait.
    ForbiddenTrait {
        /// The trait.
        #[serde(rename = "trait")]
        trait_name: String,
    },
    /// Has none of these traits (one `any_of_traits` entry).
    NoneOfTraits {
        /// The traits.
        traits: Vec<String>,
    },
    /// A node selector label does not match.
    NodeSelector {
        /// Label key.
        key: String,
        /// Value required.
        value: String,
    },
    /// A required node-affinity expression does not match.
    NodeAffinity {
        /// Its label key.
        key: String,
    },
    /// Carries a `NoSchedule`/`NoExecute` taint the request does not tolerate.
    UntoleratedTaint {
        /// The taint, with its effect.
        taint: crate::model::Taint,
    },
    /// No provider in reach has an inventory of the class.
    NoInventory {
        /// The class.
        class: String,
    },
    /// Not enough free capacity of the class.
    Insufficient {
        /// The class.
        class: String,
    },
    /// The class's min_unit/max_unit/step_size reject the amount.
    UnitConstraint {
        /// The class.
        class: String,
    },
    /// A named group fits on no single provider.
    GroupUnsatisfiable {
        /// The group.
        group: String,
    },
    /// The named groups each fit alone but not together.
    GroupLayout,
    /// The fit search stopped at its step limit on this host without an answer.
    SearchLimit {
        /// The host.
        host: String,
        /// The limit.
        steps: u32,
    },
    /// A member of the anti-affinity server group is there.
    AntiAffinity {
        /// The server group.
        server_group: String,
    },
    /// The host has `max_per_host` members of the server group.
    MaxPerHost {
        /// The server group.
        server_group: String,
        /// Its limit.
        max_per_host: u32,
    },
    /// The affinity server group's members are elsewhere.
    Affinity {
        /// The server group.
        server_group: String,
    },
    /// One more member here would exceed a topology spread constraint's skew (or the host lacks
    /// the domain).
    TopologySpread {
        /// The domain key.
        key: crate::request::TopologyKey,
        /// The constraint's max skew.
        max_skew: u32,
    },
    /// A plugin rejected the host.
    Plugin {
        /// The plugin.
        plugin: String,
    },
}

impl std::fmt::Display for RejectionReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RejectionReason::HostDisabled => f.write_str("host disabled"),
            RejectionReason::Excluded => f.write_str("excluded by caller"),
            RejectionReason::WrongZone { .. } => f.write_str("not in requested zone"),
            RejectionReason::NotInAggregates { aggregates } => {
                write!(f, "not in aggregate {}", aggregates.join("|"))
            }
            RejectionReason::MissingTrait { trait_name } => write!(f, "missing trait {trait_name}"),
            RejectionReason::ForbiddenTrait { trait_name } => {
                write!(f, "forbidden trait {trait_name}")
            }
            RejectionReason::NoneOfTraits { traits } => {
                write!(f, "none of traits {}", traits.join("|"))
            }
            RejectionReason::NodeSelector { key, value } => write!(f, "label {key}={value} mismatch"),
            RejectionReason::NodeAffinity { key } => write!(f, "node affinity on {key} not met"),
            RejectionReason::UntoleratedTaint { taint } => write!(f, "untolerated taint {taint}"),
            RejectionReason::NoInventory { class } => write!(f, "no {class} inventory"),
            RejectionReason::Insufficient { class } => write!(f, "insufficient {class}"),
            RejectionReason::UnitConstraint { class } => {
                write!(f, "{class} outside min_unit/max_unit/step_size")
            }
            RejectionReason::GroupUnsatisfiable { group } => {
                write!(f, "no single provider for group {group}")
            }
            RejectionReason::GroupLayout => f.write_str(
                "named groups cannot be placed together (isolation, same_subtree or shared capacity)",
            ),
            RejectionReason::SearchLimit { host, steps } => {
                write!(f, "search limit of {steps} steps reached on host {host}")
            }
            RejectionReason::AntiAffinity { server_group } => {
                write!(f, "anti-affinity (group {server_group})")
            }
            RejectionReason::MaxPerHost { server_group, .. } => {
                write!(f, "max-per-host reached (group {server_group})")
            }
            RejectionReason::Affinity { server_group } => {
                write!(f, "affinity (group {server_group} members elsewhere)")
            }
            RejectionReason::TopologySpread { key, max_skew } => {
                write!(f, "topology spread over {key} (max skew {max_skew})")
            }
            RejectionReason::Plugin { plugin } => write!(f, "rejected by {plugin}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_reasons_round_trip_through_codes() {
        for r in [
            Reason::Insufficient(ClassId::new(3)),
            Reason::UnitConstraint(ClassId::new(65535)),
            Reason::GroupUnsatisfiable(7),
            Reason::GroupLayout,
        ] {
            assert!(r.is_resource());
            assert_eq!(Reason::from_code(r.to_code()), r);
        }
        assert!(!Reason::AntiAffinity.is_resource());
        assert_eq!(Reason::AntiAffinity.to_code(), 0);
    }
}

/// Counts of rejection reasons over the hosts considered, and optionally the reason of every host.
#[derive(Clone, Debug, Default)]
pub struct Diagnosis {
    /// Hosts in the cluster.
    pub total_hosts: usize,
    /// Reason counts, in first-seen order.
    pub counts: Vec<(Reason, u32)>,
    /// Per-host reasons, when requested.
    pub per_host: Option<Vec<(HostId, Reason)>>,
}

impl Diagnosis {
    /// An empty diagnosis over `total_hosts` hosts; `per_host` enables per-host recording.
    pub fn new(total_hosts: usize, per_host: bool) -> Self {
        Self {
            total_hosts,
            counts: Vec::new(),
            per_host: per_host.then(Vec::new),
        }
    }

    /// Counts `n` hosts rejected for `reason`.
    #[inline]
    pub fn add_n(&mut self, reason: Reason, n: u32) {
        if n == 0 {
            return;
        }
        match self.counts.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, c)) => *c += n,
            None => self.counts.push((reason, n)),
        }
    }

    /// Records one host rejected for `reason`.
    #[inline]
    pub fn add(&mut self, host: HostId, reason: Reason) {
        self.add_n(reason, 1);
        if let Some(v) = &mut self.per_host {
            v.push((host, reason));
        }
    }

    /// Total hosts rejected.
    pub fn rejected(&self) -> u64 {
        self.counts.iter().map(|(_, n)| u64::from(*n)).sum()
    }

    /// Renders the diagnosis for users.
    pub fn explain(&self, cluster: &Cluster, req: &CompiledRequest) -> Explanation {
        let mut details: Vec<(RejectionReason, u32)> = Vec::new();
        for (r, n) in &self.counts {
            let reason = r.resolve(cluster, req);
            match details.iter_mut().find(|(x, _)| *x == reason) {
                Some((_, c)) => *c += n,
                None => details.push((reason, *n)),
            }
        }
        let mut reasons: Vec<(String, u32)> = Vec::new();
        for (r, n) in &details {
            let text = r.to_string();
            match reasons.iter_mut().find(|(t, _)| *t == text) {
                Some((_, c)) => *c += n,
                None => reasons.push((text, *n)),
            }
        }
        reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        details.sort_by(|a, b| {
            b.1.cmp(&a.1)
                .then_with(|| a.0.to_string().cmp(&b.0.to_string()))
        });
        let host_reasons: Option<Vec<(String, RejectionReason)>> =
            self.per_host.as_ref().map(|v| {
                v.iter()
                    .map(|(h, r)| (cluster.host(*h).name.clone(), r.resolve(cluster, req)))
                    .collect()
            });
        let per_host = host_reasons
            .as_ref()
            .map(|v| v.iter().map(|(h, r)| (h.clone(), r.to_string())).collect());
        let list = reasons
            .iter()
            .map(|(t, n)| format!("{n} {t}"))
            .collect::<Vec<_>>()
            .join(", ");
        Explanation {
            request: req.id().to_string(),
            summary: format!(
                "0/{} hosts available: {}",
                self.total_hosts,
                if list.is_empty() {
                    "no hosts".into()
                } else {
                    list
                }
            ),
            reasons,
            details,
            per_host,
            host_reasons,
        }
    }
}

/// A rendered diagnosis.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Explanation {
    /// Request id.
    pub request: String,
    /// One line, e.g. `0/5000 hosts available: 3120 insufficient MEMORY_MB, ...`.
    pub summary: String,
    /// `(reason, hosts)` sorted by count, descending.
    pub reasons: Vec<(String, u32)>,
    /// The same counts with each reason structured (its class, trait, taint, group or limit).
    pub details: Vec<(RejectionReason, u32)>,
    /// `(host, reason)` for every rejected host, when requested.
    pub per_host: Option<Vec<(String, String)>>,
    /// The same with each reason structured, when requested.
    pub host_reasons: Option<Vec<(String, RejectionReason)>>,
}

/// Score breakdown of one host.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct HostScore {
    /// Host name.
    pub host: String,
    /// Weighted total.
    pub total: i64,
    /// `(plugin, normalised score, weight)`.
    pub parts: Vec<(&'static str, i64, i64)>,
}
