//! Profiles: which plugins run at each extension point, with which weights, and how many hosts to sample.

use crate::framework::{FilterPlugin, PermitPlugin, PreFilterPlugin, ReservePlugin, ScorePlugin};
use crate::plugins::filters::*;
use crate::plugins::scores::*;
use serde::{Deserialize, Serialize};

/// Placement policies (what the score stage optimises for).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Least allocated first: spread load, keep headroom everywhere.
    #[default]
    Spread,
    /// Most allocated first: fill hosts before opening new ones.
    Pack,
    /// Keep per-class utilisation even on each host.
    Balanced,
    /// Keep empty hosts empty so they can be powered off (oVirt power saving).
    PowerSaving,
    /// Even VM count per host (oVirt evenly distributed).
    EvenVmCount,
    /// Minimise capacity left unusable because another class ran out.
    StrandedAware,
}

impl Policy {
    /// All policies.
    pub const ALL: [Policy; 6] = [
        Policy::Spread,
        Policy::Pack,
        Policy::Balanced,
        Policy::PowerSaving,
        Policy::EvenVmCount,
        Policy::StrandedAware,
    ];
}

/// How many feasible hosts to find before scoring (kube's `percentageOfNodesToScore`, Borg's relaxed
/// randomisation). Scanning starts where the previous decision stopped, so successive decisions see
/// different hosts and the cost per decision stays bounded at any cluster size.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Sampling {
    /// Always look for at least this many feasible hosts (or all, if fewer exist).
    pub min_feasible: usize,
    /// Percentage of candidates to find feasible; 0 = adaptive (50% minus 1% per 125 hosts, at least 5%).
    pub percentage: u32,
    /// Never look for more than this many.
    pub max_feasible: usize,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            min_feasible: 32,
            percentage: 0,
            max_feasible: 64,
        }
    }
}

impl Sampling {
    /// For scan orders that visit the hosts a policy prefers first ([`ScanOrder::EmptiestFirst`]): the
    /// first feasible hosts found already lie in the best utilisation bucket, so scoring a few of them
    /// loses little and visits a quarter of the hosts of [`Sampling::default`]. (Eight were tried:
    /// 10% faster, but `tests/quality.rs` then found spread slightly worse than a rotating sample of
    /// 64.)
    pub const ORDERED: Sampling = Sampling {
        min_feasible: 16,
        percentage: 0,
        max_feasible: 16,
    };

    /// Score every feasible host (exhaustive; best quality, slowest).
    pub const EXHAUSTIVE: Sampling = Sampling {
        min_feasible: usize::MAX,
        percentage: 100,
        max_feasible: usize::MAX,
    };

    /// Feasible hosts to find among `candidates`.
    pub fn target(&self, candidates: usize) -> usize {
        if candidates <= self.min_feasible {
            return candidates.max(1);
        }
        let pct = if self.percentage == 0 {
            50usize.saturating_sub(candidates / 125).max(5)
        } else {
            self.percentage.min(100) as usize
        };
        (candidates * pct / 100)
            .max(self.min_feasible)
            .min(self.max_feasible)
            .max(1)
    }
}

/// In which order hosts are visited by the filters.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ScanOrder {
    /// Host order, starting where the previous decision stopped (kube-scheduler).
    #[default]
    Rotating,
    /// Fullest hosts first (by dominant utilisation bucket), rotating within a bucket: with a bounded
    /// sample, packing policies still see the hosts they prefer.
    FullestFirst,
    /// Emptiest hosts first (by dominant utilisation bucket), rotating within a bucket: with a bounded
    /// sample, spreading policies still see the hosts with the most headroom.
    EmptiestFirst,
}

/// The plugins of each extension point, with score weights.
pub struct Profile {
    /// Name shown in reports.
    pub name: String,
    /// Pre-filters, in order.
    pub pre_filters: Vec<Box<dyn PreFilterPlugin>>,
    /// Filters, in order (cheap ones first: a host's reason is the first failing filter's).
    pub filters: Vec<Box<dyn FilterPlugin>>,
    /// Scores and their weights.
    pub scores: Vec<(Box<dyn ScorePlugin>, i64)>,
    /// Reserve plugins.
    pub reserve: Vec<Box<dyn ReservePlugin>>,
    /// Permit plugins.
    pub permit: Vec<Box<dyn PermitPlugin>>,
    /// Sampling.
    pub sampling: Sampling,
    /// Visiting order.
    pub scan_order: ScanOrder,
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("name", &self.name)
            .field(
                "pre_filters",
                &self
                    .pre_filters
                    .iter()
                    .map(|p| p.name())
                    .collect::<Vec<_>>(),
            )
            .field(
                "filters",
                &self.filters.iter().map(|p| p.name()).collect::<Vec<_>>(),
            )
            .field(
                "scores",
                &self
                    .scores
                    .iter()
                    .map(|(p, w)| (p.name(), *w))
                    .collect::<Vec<_>>(),
            )
            .field("sampling", &self.sampling)
            .finish()
    }
}

impl Default for Profile {
    fn default() -> Self {
        Profile::for_policy(Policy::Spread)
    }
}

impl Profile {
    /// The default plugins with the score weights of `policy`.
    pub fn for_policy(policy: Policy) -> Self {
        let pre_filters: Vec<Box<dyn PreFilterPlugin>> = vec![
            Box::new(HostAvailability),
            Box::new(ZoneAndAggregates),
            Box::new(HostTraits),
            Box::new(NodeLabels),
            Box::new(TaintToleration),
            Box::new(ResourceClassPresence),
            Box::new(ServerGroupAffinity),
            Box::new(ServerGroupAntiAffinityPre),
            Box::new(TopologySpreadPre),
            Box::new(FreeCapacity),
        ];
        let filters: Vec<Box<dyn FilterPlugin>> = vec![
            Box::new(ServerGroupAntiAffinity),
            Box::new(TopologySpread),
            Box::new(ResourceFit),
        ];
        let mut scores: Vec<(Box<dyn ScorePlugin>, i64)> = match policy {
            Policy::Spread => vec![
                (Box::new(LeastAllocated), 2),
                (Box::new(BalancedAllocation), 1),
            ],
            // Alignment dominates: on mixed host shapes, matching the VM's shape to the free space
            // strands far less than pure best-fit (measured in benches/placement.rs, W2).
            Policy::Pack => vec![(Box::new(MostAllocated), 1), (Box::new(Alignment), 3)],
            Policy::Balanced => vec![
                (Box::new(BalancedAllocation), 2),
                (Box::new(LeastAllocated), 1),
            ],
            Policy::PowerSaving => vec![
                (Box::new(PowerSaving), 3),
                (Box::new(BalancedAllocation), 1),
            ],
            Policy::EvenVmCount => vec![(Box::new(EvenVmCount), 2), (Box::new(LeastAllocated), 1)],
            Policy::StrandedAware => vec![
                (Box::new(StrandedAware), 2),
                (Box::new(Alignment), 1),
                (Box::new(MostAllocated), 1),
            ],
        };
        scores.push((Box::new(ServerGroupSoft), 2));
        scores.push((Box::new(PreferredAffinity), 1));
        scores.push((Box::new(TaintPreference), 1));
        scores.push((Box::new(SpreadPreference), 2));
        // Packing policies visit the fullest hosts first, so a bounded sample still sees the hosts
        // they prefer; spreading policies rotate through all hosts.
        let scan_order = match policy {
            Policy::Pack | Policy::PowerSaving | Policy::StrandedAware => ScanOrder::FullestFirst,
            Policy::Spread => ScanOrder::EmptiestFirst,
            _ => ScanOrder::Rotating,
        };
        Profile {
            name: format!("{policy:?}").to_lowercase(),
            pre_filters,
            filters,
            scores,
            reserve: Vec::new(),
            permit: Vec::new(),
            sampling: if scan_order == ScanOrder::EmptiestFirst {
                Sampling::ORDERED
            } else {
                Sampling::default()
            },
            scan_order,
        }
    }

    /// Replaces the sampling configuration.
    pub fn with_sampling(mut self, sampling: Sampling) -> Self {
        self.sampling = sampling;
        self
    }

    /// Replaces the scan order.
    pub fn with_scan_order(mut self, order: ScanOrder) -> Self {
        self.scan_order = order;
        self
    }

    /// Adds a permit plugin.
    pub fn with_permit(mut self, p: Box<dyn PermitPlugin>) -> Self {
        self.permit.push(p);
        self
    }

    /// Adds a reserve plugin.
    pub fn with_reserve(mut self, p: Box<dyn ReservePlugin>) -> Self {
        self.reserve.push(p);
        self
    }
}

crate::error::text_enum!(Policy => "policy", ScanOrder => "scan order");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_read_and_print_as_serde_spells_them() {
        for p in Policy::ALL {
            let text = p.to_string();
            assert_eq!(text.parse::<Policy>(), Ok(p));
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{text}\""));
        }
        assert_eq!("power_saving".parse::<Policy>(), Ok(Policy::PowerSaving));
        let err = "fastest".parse::<Policy>().unwrap_err();
        assert!(
            err.to_string().starts_with(
                "invalid policy `fastest`: unknown variant `fastest`, expected one of `spread`"
            ),
            "{err}"
        );
        assert_eq!(ScanOrder::FullestFirst.to_string(), "fullest_first");
    }

    #[test]
    fn sampling_targets() {
        let s = Sampling::default();
        assert_eq!(s.target(10), 10);
        assert_eq!(s.target(5000), 64);
        assert_eq!(
            Sampling {
                min_feasible: 10,
                percentage: 50,
                max_feasible: 1000
            }
            .target(100),
            50
        );
        assert_eq!(Sampling::EXHAUSTIVE.target(20000), 20000);
        assert_eq!(s.target(0), 1);
    }
}
