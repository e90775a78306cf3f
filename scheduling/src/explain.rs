//! Why hosts were rejected, and how the chosen host was scored.
//!
//! Filters return a [`Reason`] (a small `Copy` value, cheap to count on the hot path); a [`Diagnosis`] counts
//! them, and [`Diagnosis::explain`] renders what users see, such as
//! `0/5000 hosts available: 3120 insufficient MEMORY_MB, 1500 missing trait HW_GPU, 380 anti-affinity`.

use crate::model::{ClassId, Cluster, HostId, TraitId};
use crate::request::CompiledRequest;
use serde::Serialize;

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

    /// Human-readable reason, resolving ids through the cluster and request.
    pub fn describe(&self, cluster: &Cluster, req: &CompiledRequest) -> String {
        let group_name = || req.server_group_name.clone().unwrap_or_else(|| "?".into());
        match *self {
            Reason::HostDisabled => "host disabled".into(),
            Reason::Excluded => "excluded by caller".into(),
            Reason::WrongZone => "not in requested zone".into(),
            Reason::NotInAggregates(i) => format!(
                "not in aggregate {}",
                req.member_of
                    .get(i as usize)
                    .map(|s| s
                        .iter()
                        .map(|a| cluster.aggregate_name(*a))
                        .collect::<Vec<_>>()
                        .join("|"))
                    .unwrap_or_default()
            ),
            Reason::MissingTrait(i) => {
                format!(
                    "missing trait {}",
                    req.required_traits
                        .get(i as usize)
                        .map_or("?", |t| t.name.as_str())
                )
            }
            Reason::ForbiddenTrait(t) => format!("forbidden trait {}", cluster.trait_name(t)),
            Reason::NoneOfTraits(i) => format!(
                "none of traits {}",
                req.any_of_traits
                    .get(i as usize)
                    .map(|s| s
                        .iter()
                        .map(|t| cluster.trait_name(*t))
                        .collect::<Vec<_>>()
                        .join("|"))
                    .unwrap_or_default()
            ),
            Reason::NodeSelector(i) => match req.node_selector.get(i as usize) {
                Some((k, v)) => format!("label {k}={v} mismatch"),
                None => "node selector mismatch".into(),
            },
            Reason::NodeAffinity(i) => match req.node_affinity.get(i as usize) {
                Some(e) => format!("node affinity on {} not met", e.key),
                None => "node affinity not met".into(),
            },
            Reason::UntoleratedTaint(i) => {
                match cluster.index().blocking_taints().get(i as usize) {
                    Some((t, _)) => format!("untolerated taint {}={}", t.key, t.value),
                    None => "untolerated taint".into(),
                }
            }
            Reason::NoInventory(c) => format!("no {} inventory", cluster.class_name(c)),
            Reason::Insufficient(c) => format!("insufficient {}", cluster.class_name(c)),
            Reason::UnitConstraint(c) => format!(
                "{} outside min_unit/max_unit/step_size",
                cluster.class_name(c)
            ),
            Reason::GroupUnsatisfiable(i) => format!(
                "no single provider for group {}",
                req.groups.get(i as usize).map_or("?", |g| g.name.as_str())
            ),
            Reason::GroupLayout => {
                "named groups cannot be placed together (isolation, same_subtree or shared capacity)".into()
            }
            Reason::SearchLimit(h) => format!(
                "search limit of {} steps reached on host {}",
                crate::fit::SEARCH_BUDGET,
                cluster.host(h).name
            ),
            Reason::AntiAffinity => format!("anti-affinity (group {})", group_name()),
            Reason::MaxPerHost => format!("max-per-host reached (group {})", group_name()),
            Reason::Affinity => format!("affinity (group {} members elsewhere)", group_name()),
            Reason::TopologySpread(i) => match req.spread.get(i as usize) {
                Some(s) => format!("topology spread over {:?} (max skew {})", s.key, s.max_skew)
                    .to_lowercase(),
                None => "topology spread".into(),
            },
            Reason::Plugin(name) => format!("rejected by {name}"),
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
        let mut reasons: Vec<(String, u32)> = Vec::new();
        for (r, n) in &self.counts {
            let text = r.describe(cluster, req);
            match reasons.iter_mut().find(|(t, _)| *t == text) {
                Some((_, c)) => *c += n,
                None => reasons.push((text, *n)),
            }
        }
        reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let per_host = self.per_host.as_ref().map(|v| {
            v.iter()
                .map(|(h, r)| (cluster.host(*h).name.clone(), r.describe(cluster, req)))
                .collect()
        });
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
            per_host,
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
    /// `(host, reason)` for every rejected host, when requested.
    pub per_host: Option<Vec<(String, String)>>,
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
