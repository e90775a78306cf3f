//! Built-in score plugins: the placement policies (spread, pack, balanced, power saving, even VM count,
//! stranded-resource aware) and the soft constraints (soft affinity, preferred labels, taints, spread).
//!
//! Resource scores look at the classes the request asks for, on the host's own tree, after placement.
//!
//! Arithmetic: capacities and usage are at most [`crate::model::MAX_QUANTITY`] (2^53) and a
//! request's total of a class at most 16 times that, so `used + amount` and the largest product
//! here (a quantity times 1000) stay below 2^63; sums that could exceed that saturate.

use crate::framework::{CycleState, ScorePlugin};
use crate::model::{HostId, ServerGroupPolicy, TaintEffect};
use crate::request::{CompiledRequest, TopologyKey, WhenUnsatisfiable};

/// `(capacity, used_after)` per requested class present on the host.
#[inline]
fn after<'a>(cx: &'a CycleState<'a>, host: HostId) -> impl Iterator<Item = (u64, u64)> + 'a {
    cx.request.totals.iter().filter_map(move |&(c, amount)| {
        let (cap, used) = cx.state.host_capacity_used(host, c);
        (cap > 0).then(|| (cap, used.saturating_add(amount).min(cap)))
    })
}

fn mean(it: impl Iterator<Item = i64>) -> i64 {
    let (sum, n) = it.fold((0i64, 0i64), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        0
    } else {
        sum / n
    }
}

/// Scales scores to 0..=100 by the maximum (kube's DefaultNormalizeScore); `reverse` makes low raw values win.
pub fn normalize_by_max(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    for s in scores.iter_mut() {
        let v = if max > 0 { *s * 100 / max } else { 0 };
        *s = if reverse { 100 - v } else { v };
    }
}

/// Spread: prefer hosts with the most free capacity left.
pub struct LeastAllocated;

impl ScorePlugin for LeastAllocated {
    fn name(&self) -> &'static str {
        "LeastAllocated"
    }
    #[inline]
    fn score(&self, cx: &CycleState<'_>, host: HostId) -> i64 {
        mean(after(cx, host).map(|(cap, used)| ((cap - used) * 100 / cap) as i64))
    }
}

/// Pack: prefer the fullest hosts that still fit.
pub struct MostAllocated;

impl ScorePlugin for MostAllocated {
    fn name(&self) -> &'static str {
        "MostAllocated"
    }
    #[inline]
    fn score(&self, cx: &CycleState<'_>, host: HostId) -> i64 {
        mean(after(cx, host).map(|(cap, used)| (used * 100 / cap) as i64))
    }
}

/// Alignment (Tetris-style): prefer hosts whose free capacity has the same shape as the request, so
/// memory-heavy VMs go where memory is plentiful relative to CPUs and vice versa. Scores the cosine of
/// the angle between the request and the free capacity, each normalised by the host's capacity.
pub struct Alignment;

impl ScorePlugin for Alignment {
    fn name(&self) -> &'static str {
        "Alignment"
    }
    fn score(&self, cx: &CycleState<'_>, host: HostId) -> i64 {
        let (mut dot, mut rr, mut ff) = (0f64, 0f64, 0f64);
        for &(c, amount) in &cx.request.totals {
            let cap = cx.cluster.host_capacity(host, c);
            if cap == 0 {
                continue;
            }
            let r = amount as f64 / cap as f64;
            let f = cap.saturating_sub(cx.state.host_used(host, c)) as f64 / cap as f64;
            dot += r * f;
            rr += r * r;
            ff += f * f;
        }
        if rr == 0.0 || ff == 0.0 {
            return 0;
        }
        (100.0 * dot / (rr.sqrt() * ff.sqrt())).round() as i64
    }
}

/// Balanced: prefer hosts whose per-class utilisations stay close to each other.
pub struct BalancedAllocation;

impl ScorePlugin for BalancedAllocation {
    fn name(&self) -> &'static str {
        "BalancedAllocation"
    }
    fn score(&self, cx: &CycleState<'_>, host: HostId) -> i64 {
        // 100 × (1 - (max utilisation - min utilisation)), in per-mille integer arithmetic.
        let (mut lo, mut hi) = (1000u64, 0u64);
        let mut n = 0;
        for (cap, used) in after(cx, host) {
            let u = used * 1000 / cap;
            lo = lo.min(u);
            hi = hi.max(u);
            n += 1;
        }
        if n < 2 {
            return 100;
        }
        (100 - (hi - lo) / 10) as i64
    }
}

/// Power saving (oVirt): concentrate load on hosts already running VMs so empty hosts can be switched off.
pub struct PowerSaving;

impl ScorePlugin for PowerSaving {
    fn name(&self) -> &'static str {
        "PowerSaving"
    }
    fn score(&self, cx: &CycleState<'_>, host: HostId) -> i64 {
        if cx.state.vm_count(host) == 0 {
            return 0;
        }
        50 + MostAllocated.score(cx, host) / 2
    }
}

/// Evenly distributed (oVirt): prefer hosts running the fewest VMs.
pub struct EvenVmCount;

impl ScorePlugin for EvenVmCount {
    fn name(&self) -> &'static str {
        "EvenVmCount"
    }
    fn score(&self, cx: &CycleState<'_>, host: HostId) -> i64 {
        i64::from(cx.state.vm_count(host))
    }
    fn normalize(&self, scores: &mut [i64]) {
        // One more than the maximum so that an all-equal set still scores > 0.
        let max = scores.iter().copied().max().unwrap_or(0) + 1;
        for s in scores.iter_mut() {
            *s = 100 - *s * 100 / max;
        }
    }
}

/// Stranded-resource aware: after placement, how much free capacity is left that no further VM of the
/// same shape could use because another class ran out first (e.g. free vCPUs on a host with no memory
/// left). Less stranded capacity scores higher.
pub struct StrandedAware;

impl ScorePlugin for StrandedAware {
    fn name(&self) -> &'static str {
        "StrandedAware"
    }
    fn score(&self, cx: &CycleState<'_>, host: HostId) -> i64 {
        let mut more = u64::MAX;
        for &(c, amount) in &cx.request.totals {
            let cap = cx.cluster.host_capacity(host, c);
            if cap == 0 {
                continue;
            }
            let free = cap.saturating_sub(cx.state.host_used(host, c).saturating_add(amount));
            more = more.min(free / amount.max(1));
        }
        if more == u64::MAX {
            return 100;
        }
        let stranded = mean(cx.request.totals.iter().filter_map(|&(c, amount)| {
            let cap = cx.cluster.host_capacity(host, c);
            (cap > 0).then(|| {
                let free = cap.saturating_sub(cx.state.host_used(host, c).saturating_add(amount));
                // more ≤ free / amount for every class, so more × amount ≤ free.
                ((free - more * amount) * 100 / cap) as i64
            })
        }));
        100 - stranded
    }
}

/// Soft affinity and soft anti-affinity of the request's server group.
pub struct ServerGroupSoft;

impl ScorePlugin for ServerGroupSoft {
    fn name(&self) -> &'static str {
        "ServerGroupSoft"
    }
    fn applies(&self, request: &CompiledRequest) -> bool {
        request.server_group.is_some_and(|g| {
            matches!(
                g.policy,
                ServerGroupPolicy::SoftAffinity | ServerGroupPolicy::SoftAntiAffinity
            )
        })
    }
    fn score(&self, cx: &CycleState<'_>, host: HostId) -> i64 {
        let Some(g) = cx.request.server_group else {
            return 0;
        };
        let members = i64::from(cx.state.group(g.id).map_or(0, |gs| gs.on_host(host)));
        match g.policy {
            ServerGroupPolicy::SoftAffinity => members,
            ServerGroupPolicy::SoftAntiAffinity => -members,
            _ => 0,
        }
    }
    fn normalize(&self, scores: &mut [i64]) {
        let min = scores.iter().copied().min().unwrap_or(0);
        let max = scores.iter().copied().max().unwrap_or(0);
        for s in scores.iter_mut() {
            *s = if max > min {
                (*s - min) * 100 / (max - min)
            } else {
                100
            };
        }
    }
}

/// Preferred node-affinity terms: sum of the weights of matching terms.
pub struct PreferredAffinity;

impl ScorePlugin for PreferredAffinity {
    fn name(&self) -> &'static str {
        "PreferredAffinity"
    }
    fn applies(&self, request: &CompiledRequest) -> bool {
        !request.preferred_affinity.is_empty()
    }
    fn score(&self, cx: &CycleState<'_>, host: HostId) -> i64 {
        let labels = &cx.cluster.host(host).labels;
        cx.request
            .preferred_affinity
            .iter()
            .filter(|t| t.expression.matches(labels))
            .map(|t| t.weight)
            .sum()
    }
    fn normalize(&self, scores: &mut [i64]) {
        normalize_by_max(scores, false);
    }
}

/// Avoid hosts with untolerated `PreferNoSchedule` taints.
pub struct TaintPreference;

impl ScorePlugin for TaintPreference {
    fn name(&self) -> &'static str {
        "TaintPreference"
    }
    fn score(&self, cx: &CycleState<'_>, host: HostId) -> i64 {
        if !cx.cluster.prefer_no_schedule.contains(host.idx()) {
            return 0;
        }
        cx.cluster
            .host(host)
            .taints
            .iter()
            .filter(|t| t.effect == TaintEffect::PreferNoSchedule && !cx.request.tolerates(t))
            .count() as i64
    }
    fn normalize(&self, scores: &mut [i64]) {
        normalize_by_max(scores, true);
    }
}

/// Soft topology spread: prefer domains with fewer members of the group.
pub struct SpreadPreference;

impl ScorePlugin for SpreadPreference {
    fn name(&self) -> &'static str {
        "SpreadPreference"
    }
    fn applies(&self, request: &CompiledRequest) -> bool {
        request
            .spread
            .iter()
            .any(|s| s.when_unsatisfiable == WhenUnsatisfiable::ScheduleAnyway)
    }
    fn score(&self, cx: &CycleState<'_>, host: HostId) -> i64 {
        let Some(g) = cx.request.server_group else {
            return 0;
        };
        let Some(gs) = cx.state.group(g.id) else {
            return 0;
        };
        let (zone, rack) = (cx.cluster.host_zone(host), cx.cluster.host_rack(host));
        cx.request
            .spread
            .iter()
            .filter(|s| s.when_unsatisfiable == WhenUnsatisfiable::ScheduleAnyway)
            .map(|s| match s.key {
                TopologyKey::Zone => zone.map_or(0, |z| i64::from(gs.per_zone[z.idx()])),
                TopologyKey::Rack => rack.map_or(0, |r| i64::from(gs.per_rack[r.idx()])),
            })
            .sum()
    }
    fn normalize(&self, scores: &mut [i64]) {
        normalize_by_max(scores, true);
    }
}
