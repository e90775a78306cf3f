//! The decision pipeline: pre-filter → filter (sampled, rotating start) → score → normalise → select, plus
//! commit with reserve/permit. One [`Scheduler`] is one decider; several can share a
//! [`crate::shared::SharedState`].
//!
//! Scale techniques: pre-filter results are cached per equivalence class (identical requests, same
//! topology), and a request shape known infeasible is rejected at once until capacity is freed or its
//! server group changes; hosts too full for the request are dropped by the state's free-capacity index
//! before any is visited; only a bounded number of feasible hosts is sought, in the order the policy
//! prefers (emptiest or fullest utilisation bucket first, or host order), starting where the previous
//! decision stopped; ties are broken by a seeded generator, so runs are reproducible.

use crate::error::{CommitError, PlacementRequestError};
use crate::explain::{Diagnosis, Explanation, HostScore, Reason};
use crate::fasthash::IntMap;
use crate::fit::FitScratch;
use crate::framework::CycleState;
use crate::hostset::HostSet;
use crate::model::{Cluster, HostId, ServerGroupPolicy, SlotAllocation};
use crate::placement::Placement;
use crate::profile::{Profile, ScanOrder};
use crate::request::{CompiledRequest, PlacementRequest};
use crate::rng::SplitMix64;
use crate::shapes::ShapeCache;
use crate::state::{Claim, State, FILL_BUCKETS};
use serde::Serialize;
use std::sync::Arc;

/// Options of one decision.
#[derive(Clone, Copy, Debug, Default)]
pub struct DecideOptions<'a> {
    /// Hosts not to consider.
    pub exclude: &'a [HostId],
    /// Record the reason of every rejected host (slower; bypasses caches).
    pub per_host_reasons: bool,
    /// Return the score breakdown of every scored host.
    pub score_breakdown: bool,
    /// Retry number after commit conflicts: from 1 on, the choice is randomised among the best
    /// `2^attempt` hosts so that deciders racing for the same best host spread out.
    pub attempt: u32,
}

/// A decision: the claim to commit, and how it was reached.
#[derive(Clone, Debug)]
pub struct Decision {
    /// The claim.
    pub claim: Claim,
    /// Weighted score of the chosen host.
    pub score: i64,
    /// Feasible hosts found (and scored).
    pub feasible: usize,
    /// Hosts visited by filters.
    pub visited: usize,
    /// Score breakdowns, when requested (best first).
    pub breakdown: Option<Vec<HostScore>>,
}

/// No host can take the request.
#[derive(Clone, Debug)]
pub struct Unschedulable {
    /// The request.
    pub request: Arc<CompiledRequest>,
    /// Reason counts.
    pub diagnosis: Diagnosis,
}

impl Unschedulable {
    /// Renders the reasons.
    pub fn explain(&self, cluster: &Cluster) -> Explanation {
        self.diagnosis.explain(cluster, &self.request)
    }
}

/// Counters of a decider.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct DeciderStats {
    /// Decisions made.
    pub decisions: u64,
    /// Pre-filter results served from the equivalence cache.
    pub prefilter_cache_hits: u64,
    /// Rejections served from the negative cache.
    pub negative_cache_hits: u64,
    /// Hosts visited by filters.
    pub hosts_visited: u64,
}

struct CacheEntry {
    topology_version: u64,
    candidates: HostSet,
    counts: Vec<(Reason, u32)>,
}

/// Hosts found too full for one resource shape: valid until capacity is freed (usage only grows
/// meanwhile, so an infeasible host stays infeasible). Lets scans skip full hosts in O(1).
struct FitMemo {
    release_epoch: u64,
    topology_version: u64,
    infeasible: HostSet,
    /// Compact resource reason per host (see [`Reason::to_code`]); zero-initialised lazily by the OS.
    reasons: Vec<u32>,
}

/// The last failure of an equivalence class: valid while nothing was freed and its group is unchanged.
struct NegativeEntry {
    topology_version: u64,
    release_epoch: u64,
    group_epoch: u64,
    diagnosis: Diagnosis,
}

const CACHE_LIMIT: usize = 4096;
/// Fit memos hold a reason per host, so keep fewer of them.
const MEMO_LIMIT: usize = 64;

/// One decider: a profile, a seeded generator, a rotating scan position and caches.
pub struct Scheduler {
    profile: Arc<Profile>,
    rng: SplitMix64,
    cursor: usize,
    cache: IntMap<u64, CacheEntry>,
    negative: IntMap<u64, NegativeEntry>,
    memo: IntMap<u64, FitMemo>,
    skipped: Vec<u32>,
    /// The filters that apply to the request being decided (indexes into the profile's).
    filter_ix: Vec<usize>,
    /// The diagnosis of the decision under way, reused so that a success allocates nothing for it.
    diag: Diagnosis,
    scratch: FitScratch,
    feasible: Vec<HostId>,
    feasible_allocs: Vec<SlotAllocation>,
    feasible_ranges: Vec<(u32, u32)>,
    scores: Vec<i64>,
    totals: Vec<i64>,
    candidates: HostSet,
    scan: HostSet,
    stats: DeciderStats,
}

impl Scheduler {
    /// A decider running `profile`, seeded with `seed`.
    pub fn new(profile: Arc<Profile>, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let cursor = rng.next_u64() as usize;
        Scheduler {
            profile,
            rng,
            cursor,
            cache: IntMap::default(),
            negative: IntMap::default(),
            memo: IntMap::default(),
            skipped: Vec::new(),
            filter_ix: Vec::new(),
            diag: Diagnosis::new(0, false),
            scratch: FitScratch::default(),
            feasible: Vec::new(),
            feasible_allocs: Vec::new(),
            feasible_ranges: Vec::new(),
            scores: Vec::new(),
            totals: Vec::new(),
            candidates: HostSet::empty(0),
            scan: HostSet::empty(0),
            stats: DeciderStats::default(),
        }
    }

    /// The profile.
    pub fn profile(&self) -> &Arc<Profile> {
        &self.profile
    }

    /// Counters so far.
    pub fn stats(&self) -> DeciderStats {
        self.stats
    }

    fn group_epoch(state: &State, req: &CompiledRequest) -> u64 {
        req.server_group
            .and_then(|g| state.group(g.id))
            .map_or(0, |g| g.epoch)
    }

    /// Runs the pre-filters. Those whose result depends only on the request's static fields and the
    /// topology are served from the equivalence cache (keyed by [`crate::request::RequestShape::prefilter_key`]); the
    /// others (server group, spread) run every time on the cached result.
    fn prefilter(
        &mut self,
        profile: &Profile,
        cx: &mut CycleState<'_>,
        diag: &mut Diagnosis,
        use_cache: bool,
    ) {
        let req = cx.request;
        let topo = cx.state.topology_version();
        let hit = use_cache
            && match self.cache.get(&req.prefilter_key) {
                Some(e) if e.topology_version == topo => {
                    self.candidates.copy_from(&e.candidates);
                    for (r, n) in &e.counts {
                        diag.add_n(*r, *n);
                    }
                    true
                }
                _ => false,
            };
        if hit {
            self.stats.prefilter_cache_hits += 1;
        } else {
            self.candidates.copy_from(cx.cluster.index().all());
            for p in profile.pre_filters.iter().filter(|p| p.cacheable(req)) {
                p.pre_filter(cx, &mut self.candidates, diag);
            }
            if use_cache {
                if self.cache.len() >= CACHE_LIMIT {
                    self.cache.clear();
                }
                self.cache.insert(
                    req.prefilter_key,
                    CacheEntry {
                        topology_version: topo,
                        candidates: self.candidates.clone(),
                        counts: diag.counts.clone(),
                    },
                );
            }
        }
        for p in profile.pre_filters.iter().filter(|p| !p.cacheable(req)) {
            p.pre_filter(cx, &mut self.candidates, diag);
        }
    }

    /// Runs the filters on one host; records it if feasible. Returns whether enough hosts were found.
    #[allow(clippy::too_many_arguments)]
    fn visit(
        &mut self,
        cx: &CycleState<'_>,
        profile: &Profile,
        filters: &[usize],
        host: HostId,
        diag: &mut Diagnosis,
        target: usize,
        memo: &mut Option<FitMemo>,
    ) -> bool {
        if let Some(m) = memo.as_ref() {
            if m.infeasible.contains(host.idx()) {
                // Counted into the diagnosis only if the decision fails (see `decide`).
                self.skipped.push(host.raw());
                return false;
            }
        }
        for &f in filters {
            if let Err(reason) = profile.filters[f].filter(cx, &mut self.scratch, host) {
                diag.add(host, reason);
                if let (Some(m), true) = (memo.as_mut(), reason.is_resource()) {
                    m.infeasible.insert(host.idx());
                    m.reasons[host.idx()] = reason.to_code();
                }
                return false;
            }
        }
        let start = self.feasible_allocs.len() as u32;
        self.feasible_allocs
            .extend_from_slice(self.scratch.allocations());
        self.feasible_ranges
            .push((start, self.feasible_allocs.len() as u32));
        self.feasible.push(host);
        self.feasible.len() >= target
    }

    /// The fit memo of `req`'s resource shape, reset if capacity was freed since it was filled.
    fn take_memo(
        &mut self,
        state: &State,
        req: &CompiledRequest,
        enabled: bool,
    ) -> Option<FitMemo> {
        if !enabled {
            return None;
        }
        let n = state.cluster().host_count();
        let mut m = self.memo.remove(&req.fit_key).unwrap_or_else(|| FitMemo {
            release_epoch: state.release_epoch(),
            topology_version: state.topology_version(),
            infeasible: HostSet::empty(n),
            reasons: vec![0; n],
        });
        if m.release_epoch != state.release_epoch()
            || m.topology_version != state.topology_version()
        {
            m.infeasible = HostSet::empty(n);
            m.reasons.resize(n, 0);
            m.release_epoch = state.release_epoch();
            m.topology_version = state.topology_version();
        }
        Some(m)
    }

    /// Decides where `req` should go, without changing `state`.
    pub fn decide(
        &mut self,
        state: &State,
        req: &Arc<CompiledRequest>,
        opts: &DecideOptions<'_>,
    ) -> Result<Decision, Unschedulable> {
        self.stats.decisions += 1;
        let cluster = state.cluster().as_ref();
        let use_cache = opts.exclude.is_empty() && !opts.per_host_reasons;
        let group_epoch = Self::group_epoch(state, req);
        if use_cache {
            if let Some(n) = self.negative.get(&req.equivalence_key) {
                if n.topology_version == state.topology_version()
                    && n.release_epoch == state.release_epoch()
                    && n.group_epoch == group_epoch
                {
                    self.stats.negative_cache_hits += 1;
                    return Err(Unschedulable {
                        request: req.clone(),
                        diagnosis: n.diagnosis.clone(),
                    });
                }
            }
        }
        let mut diag = std::mem::replace(&mut self.diag, Diagnosis::new(0, false));
        diag.total_hosts = cluster.host_count();
        diag.counts.clear();
        diag.per_host = opts.per_host_reasons.then(Vec::new);
        let mut cx = CycleState::new(state, req, opts.exclude);
        // One reference for the whole decision (the scheduler's fields are borrowed mutably below).
        let profile = self.profile.clone();
        self.prefilter(&profile, &mut cx, &mut diag, use_cache);

        let mut filters = std::mem::take(&mut self.filter_ix);
        filters.clear();
        filters.extend(
            profile
                .filters
                .iter()
                .enumerate()
                .filter(|(_, f)| f.applies(req))
                .map(|(i, _)| i),
        );
        let n_candidates = self.candidates.count();
        let target = profile.sampling.target(n_candidates);
        self.feasible.clear();
        self.feasible_allocs.clear();
        self.feasible_ranges.clear();
        let n_hosts = cluster.host_count().max(1);
        let mut visited = 0usize;
        let candidates = std::mem::take(&mut self.candidates);
        let mut memo = self.take_memo(state, req, use_cache);
        self.skipped.clear();
        match profile.scan_order {
            ScanOrder::Rotating => {
                let mut last = self.cursor % n_hosts;
                for h in candidates.iter_from(self.cursor % n_hosts) {
                    last = h;
                    visited += 1;
                    if self.visit(
                        &cx,
                        &profile,
                        &filters,
                        HostId::new(h),
                        &mut diag,
                        target,
                        &mut memo,
                    ) {
                        break;
                    }
                }
                self.cursor = last + 1;
            }
            ScanOrder::FullestFirst | ScanOrder::EmptiestFirst => {
                let rotation = self.cursor % n_hosts;
                let mut last = None;
                let fullest_first = profile.scan_order == ScanOrder::FullestFirst;
                'buckets: for i in 0..FILL_BUCKETS {
                    let b = if fullest_first {
                        FILL_BUCKETS - 1 - i
                    } else {
                        i
                    };
                    if n_candidates == 0 {
                        break;
                    }
                    if state.fill_bucket_len(b) == 0 {
                        continue;
                    }
                    let Some(bucket) = state.fill_bucket(b) else {
                        continue;
                    };
                    self.scan.copy_from(bucket);
                    self.scan.intersect_with(&candidates);
                    let scan = std::mem::take(&mut self.scan);
                    let mut done = false;
                    for h in scan.iter_from(rotation) {
                        visited += 1;
                        last = Some(h);
                        if self.visit(
                            &cx,
                            &profile,
                            &filters,
                            HostId::new(h),
                            &mut diag,
                            target,
                            &mut memo,
                        ) {
                            done = true;
                            break;
                        }
                    }
                    self.scan = scan;
                    if done {
                        break 'buckets;
                    }
                }
                // Continue after the last host visited, so successive decisions rotate.
                if let Some(h) = last {
                    self.cursor = h + 1;
                }
            }
        }
        self.candidates = candidates;
        self.filter_ix = filters;
        if self.feasible.is_empty() {
            if let Some(m) = memo.as_ref() {
                for h in &self.skipped {
                    diag.add(
                        HostId::new(*h as usize),
                        Reason::from_code(m.reasons[*h as usize]),
                    );
                }
            }
        }
        if let Some(m) = memo {
            if self.memo.len() >= MEMO_LIMIT {
                self.memo.clear();
            }
            self.memo.insert(req.fit_key, m);
        }
        self.stats.hosts_visited += visited as u64;

        if self.feasible.is_empty() {
            if use_cache {
                if self.negative.len() >= CACHE_LIMIT {
                    self.negative.clear();
                }
                self.negative.insert(
                    req.equivalence_key,
                    NegativeEntry {
                        topology_version: state.topology_version(),
                        release_epoch: state.release_epoch(),
                        group_epoch,
                        diagnosis: diag.clone(),
                    },
                );
            }
            return Err(Unschedulable {
                request: req.clone(),
                diagnosis: diag,
            });
        }
        self.diag = diag;

        // Score: one column per applicable plugin, normalised, then weighted.
        let nf = self.feasible.len();
        self.totals.clear();
        self.totals.resize(nf, 0);
        let mut parts: Vec<Vec<(&'static str, i64, i64)>> = if opts.score_breakdown {
            vec![Vec::new(); nf]
        } else {
            Vec::new()
        };
        for (plugin, weight) in profile.scores.iter().filter(|(p, _)| p.applies(req)) {
            self.scores.clear();
            self.scores
                .extend(self.feasible.iter().map(|h| plugin.score(&cx, *h)));
            plugin.normalize(&mut self.scores);
            for (i, s) in self.scores.iter().enumerate() {
                self.totals[i] += s * weight;
                if opts.score_breakdown {
                    parts[i].push((plugin.name(), *s, *weight));
                }
            }
        }
        let mut best = 0usize;
        let mut ties = 1u64;
        for i in 1..nf {
            if self.totals[i] > self.totals[best] {
                best = i;
                ties = 1;
            } else if self.totals[i] == self.totals[best] {
                ties += 1;
                if self.rng.below(ties) == 0 {
                    best = i;
                }
            }
        }
        if opts.attempt > 0 && nf > 1 {
            let k = (1usize << opts.attempt.min(16)).min(nf);
            let mut order: Vec<usize> = (0..nf).collect();
            order.sort_unstable_by(|a, b| self.totals[*b].cmp(&self.totals[*a]));
            best = order[self.rng.below(k as u64) as usize];
        }
        let host = self.feasible[best];
        let (a, b) = self.feasible_ranges[best];
        let allocations = self.feasible_allocs[a as usize..b as usize].to_vec();
        let group_epoch = req.server_group.and_then(|g| {
            let hard = matches!(
                g.policy,
                ServerGroupPolicy::Affinity | ServerGroupPolicy::AntiAffinity
            );
            (hard || !req.spread.is_empty()).then_some(group_epoch)
        });
        let breakdown = opts.score_breakdown.then(|| {
            let mut v: Vec<HostScore> = self
                .feasible
                .iter()
                .zip(parts)
                .enumerate()
                .map(|(i, (h, parts))| HostScore {
                    host: cluster.host(*h).name.clone(),
                    total: self.totals[i],
                    parts,
                })
                .collect();
            v.sort_by(|x, y| y.total.cmp(&x.total).then_with(|| x.host.cmp(&y.host)));
            v
        });
        Ok(Decision {
            claim: Claim::current(state, req.clone(), host, allocations, group_epoch),
            score: self.totals[best],
            feasible: nf,
            visited,
            breakdown,
        })
    }

    /// Runs reserve and permit plugins, then commits. On any failure reserve is undone and `state` is unchanged.
    pub fn commit(&self, state: &mut State, claim: Claim) -> Result<(), CommitError> {
        for (i, r) in self.profile.reserve.iter().enumerate() {
            if let Err(reason) = r.reserve(state, &claim) {
                for u in self.profile.reserve[..i].iter().rev() {
                    u.unreserve(state, &claim);
                }
                return Err(CommitError::Denied {
                    plugin: r.name(),
                    reason,
                });
            }
        }
        let undo = |state: &State, claim: &Claim| {
            for u in self.profile.reserve.iter().rev() {
                u.unreserve(state, claim);
            }
        };
        for p in &self.profile.permit {
            if let Err(reason) = p.permit(state, &claim) {
                undo(state, &claim);
                return Err(CommitError::Denied {
                    plugin: p.name(),
                    reason,
                });
            }
        }
        let copy = if self.profile.reserve.is_empty() {
            None
        } else {
            Some(claim.clone())
        };
        state.commit(claim).inspect_err(|_| {
            if let Some(c) = &copy {
                undo(state, c);
            }
        })
    }
}

/// Why a placement failed.
#[derive(Debug, thiserror::Error, Clone)]
pub enum PlaceError {
    /// The request is invalid.
    #[error(transparent)]
    Request(#[from] PlacementRequestError),
    /// No host fits.
    #[error("{}", .0.summary)]
    Unschedulable(Box<Explanation>),
    /// The commit failed (after retries, for concurrency conflicts).
    #[error(transparent)]
    Commit(#[from] CommitError),
}

/// Single-threaded convenience: a state plus one decider.
///
/// Requests equal but for their ids and quota owners share one compiled shape (see
/// [`crate::request::CompiledRequest`]), so placing many VMs of a few flavours resolves each
/// flavour once.
pub struct Placer {
    state: State,
    scheduler: Scheduler,
    shapes: ShapeCache,
}

impl Placer {
    /// A placer over `cluster` with `profile`, seeded with `seed`.
    pub fn new(cluster: Arc<Cluster>, profile: Profile, seed: u64) -> Self {
        Placer {
            state: State::new(cluster),
            scheduler: Scheduler::new(Arc::new(profile), seed),
            shapes: ShapeCache::default(),
        }
    }

    /// A placer over an existing state (e.g. one rebuilt by [`State::restore`] after a restart).
    pub fn from_state(state: State, profile: Profile, seed: u64) -> Self {
        Placer {
            state,
            scheduler: Scheduler::new(Arc::new(profile), seed),
            shapes: ShapeCache::default(),
        }
    }

    /// The state, handing it back (to persist its [`State::placements`], or share it).
    pub fn into_state(self) -> State {
        self.state
    }

    /// The state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The state, mutably (release, resize, server groups, host enable/disable).
    pub fn state_mut(&mut self) -> &mut State {
        &mut self.state
    }

    /// The decider.
    pub fn scheduler(&mut self) -> &mut Scheduler {
        &mut self.scheduler
    }

    /// Both halves at once.
    pub fn parts(&mut self) -> (&mut State, &mut Scheduler) {
        (&mut self.state, &mut self.scheduler)
    }

    /// Decides and commits.
    pub fn place(&mut self, req: &PlacementRequest) -> Result<Placement, PlaceError> {
        let compiled = self.shapes.compile(&self.state, req)?;
        self.place_compiled(&compiled, &DecideOptions::default())
    }

    /// Decides and commits a request the caller hands over: as [`Placer::place`], but the request
    /// itself is kept (in the state and the returned [`Placement`]) instead of a copy of it.
    ///
    /// ```
    /// use scheduling::{Cluster, PlacementRequest, Placer, Profile};
    /// use std::sync::Arc;
    ///
    /// let cluster = Arc::new(Cluster::from_json(r#"{"hosts": [
    ///   {"name": "a", "inventories": {"VCPU": {"total": 8}}}]}"#).unwrap());
    /// let mut placer = Placer::new(cluster, Profile::default(), 1);
    /// let req = Arc::new(PlacementRequest::new("vm-1", &[("VCPU", 2)]));
    /// let placed = placer.place_shared(req.clone()).unwrap();
    /// assert!(Arc::ptr_eq(&placed.request, &req));
    /// ```
    pub fn place_shared(&mut self, req: Arc<PlacementRequest>) -> Result<Placement, PlaceError> {
        let compiled = self.shapes.compile_shared(&self.state, req)?;
        self.place_compiled(&compiled, &DecideOptions::default())
    }

    /// Decides and commits an already compiled request.
    pub fn place_compiled(
        &mut self,
        req: &Arc<CompiledRequest>,
        opts: &DecideOptions<'_>,
    ) -> Result<Placement, PlaceError> {
        let decision = self
            .scheduler
            .decide(&self.state, req, opts)
            .map_err(|u| PlaceError::Unschedulable(Box::new(u.explain(self.state.cluster()))))?;
        let placement = decision.claim.placement(self.state.cluster());
        self.scheduler.commit(&mut self.state, decision.claim)?;
        Ok(placement)
    }

    /// Decides an already compiled request without committing.
    pub fn decide_compiled(
        &mut self,
        req: &Arc<CompiledRequest>,
        opts: &DecideOptions<'_>,
    ) -> Result<Decision, Unschedulable> {
        self.scheduler.decide(&self.state, req, opts)
    }

    /// Decides without committing, with options (explanations, score breakdowns).
    pub fn decide(
        &mut self,
        req: &PlacementRequest,
        opts: &DecideOptions<'_>,
    ) -> Result<Decision, PlaceError> {
        let compiled = self.shapes.compile(&self.state, req)?;
        self.scheduler
            .decide(&self.state, &compiled, opts)
            .map_err(|u| PlaceError::Unschedulable(Box::new(u.explain(self.state.cluster()))))
    }
}
