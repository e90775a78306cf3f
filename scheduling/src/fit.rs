//! Fitting one request onto one host's provider tree: which inventory slot serves each resource.
//!
//! Unnamed-group resources may each come from any provider in the tree (or a shared provider in reach).
//! Each named group must be served whole by one provider with the group's traits; `isolate` puts groups on
//! distinct providers and `same_subtree` requires one group's provider to be an ancestor of the others'.
//!
//! The search is complete: it never rejects a request some assignment of providers satisfies (a
//! property test compares it with brute force). Named groups are assigned by a depth-first search
//! over each group's candidates (the providers that can serve it alone), most constrained group
//! first. With `isolate`, groups take distinct providers, which is a bipartite matching: before
//! descending, an augmenting-path matching (Kuhn's algorithm, exact; with at most 8 groups it costs
//! a few hundred steps) checks that the groups still to place can all be matched, so the search
//! never enters a subtree without a solution and isolation alone never backtracks. It backtracks
//! only for what matching cannot express: `same_subtree`, groups sharing a provider's capacity, and
//! the unnamed resources, which are fitted at each leaf on top of the groups' allocations. Should
//! that ever take more than [`SEARCH_BUDGET`] steps on one host, the host is rejected with
//! [`Reason::SearchLimit`], which says so, rather than with a reason claiming the request cannot fit.
//! Scratch buffers are reused, so a warmed-up search does not allocate.

use crate::explain::Reason;
use crate::model::{Cluster, Host, HostId, Provider, ProviderId, SlotAllocation, SlotId};
use crate::request::{CompiledGroup, CompiledRequest};

/// Upper bound on search steps (providers tried) per host, so adversarial requests cannot stall a
/// decision. Isolation is solved by matching, so only `same_subtree` and shared capacity can use it.
pub const SEARCH_BUDGET: u32 = 1 << 16;

/// Reusable buffers of the resource fit, handed to every [`crate::framework::FilterPlugin`]: the
/// built-in resource filter leaves the inventory slots it chose there. Other filters ignore it.
#[derive(Debug, Default, Clone)]
pub struct FitScratch {
    allocs: Vec<SlotAllocation>,
    /// Per group (request order): the provider chosen, as an index into `providers`.
    chosen: Vec<usize>,
    steps: u32,
    /// The host's providers in reach: its tree, then shared providers.
    providers: Vec<ProviderId>,
    /// Per group (request order): indexes into `providers` that can serve it alone.
    candidates: Vec<Vec<usize>>,
    /// Groups in search order (fewest candidates first).
    order: Vec<usize>,
    /// Matching: per provider, the group matched to it (`usize::MAX` = none).
    matched: Vec<usize>,
    /// Per provider, whether the current augmenting path has visited it.
    seen: Vec<bool>,
    /// Whether some full assignment met the layout (so a failure is the unnamed resources').
    layout_met: bool,
    /// Why the unnamed resources did not fit at the last leaf that met the layout.
    unnamed_failure: Option<Reason>,
}

impl FitScratch {
    /// The slots found by the last successful fit.
    pub(crate) fn allocations(&self) -> &[SlotAllocation] {
        &self.allocs
    }

    /// Takes the allocations out.
    pub(crate) fn take_allocations(&mut self) -> Vec<SlotAllocation> {
        std::mem::take(&mut self.allocs)
    }
}

#[inline]
fn pending(allocs: &[SlotAllocation], slot: u32) -> u64 {
    allocs
        .iter()
        .filter(|a| a.slot().raw() == slot)
        .fold(0u64, |t, a| t.saturating_add(a.amount()))
}

#[inline]
fn at(slot: u32, amount: u64) -> SlotAllocation {
    SlotAllocation::new(SlotId::new(slot as usize), amount)
}

fn providers<'a>(
    c: &'a Cluster,
    h: &'a Host,
) -> impl Iterator<Item = (ProviderId, &'a Provider)> + 'a {
    (h.provider_start..h.provider_end)
        .map(|i| {
            (
                ProviderId::new(i as usize),
                c.provider(ProviderId::new(i as usize)),
            )
        })
        .chain(h.shared.iter().map(|p| (*p, c.provider(*p))))
}

/// Tries to take `resources` from provider `p` on top of `allocs`; pushes onto `allocs` on success.
fn take_from(
    c: &Cluster,
    used: &[u64],
    p: &Provider,
    g: &CompiledGroup,
    allocs: &mut Vec<SlotAllocation>,
) -> bool {
    let mark = allocs.len();
    for &(class, amount) in &g.resources {
        let mut ok = false;
        for slot in p.slot_start..p.slot_end {
            let s = &c.slots()[slot as usize];
            if s.class != class {
                continue;
            }
            if s.unit_ok(amount)
                && used[slot as usize]
                    .saturating_add(pending(allocs, slot))
                    .saturating_add(amount)
                    <= s.capacity
            {
                allocs.push(at(slot, amount));
                ok = true;
            }
            break;
        }
        if !ok {
            allocs.truncate(mark);
            return false;
        }
    }
    true
}

fn traits_ok(p: &Provider, g: &CompiledGroup) -> bool {
    g.required.iter().all(|t| t.is_some_and(|t| p.has_trait(t)))
        && !g.forbidden.iter().any(|t| p.has_trait(*t))
}

fn layout_ok(c: &Cluster, req: &CompiledRequest, s: &FitScratch) -> bool {
    req.same_subtree.iter().all(|set| {
        set.iter().any(|&a| {
            set.iter()
                .all(|&b| c.is_ancestor_or_self(s.providers[s.chosen[a]], s.providers[s.chosen[b]]))
        })
    })
}

/// Kuhn's augmenting path from group `g` over providers not in use by assigned groups.
fn augment(s: &mut FitScratch, g: usize, assigned: &[bool]) -> bool {
    for k in 0..s.candidates[g].len() {
        let p = s.candidates[g][k];
        if s.seen[p] || s.used_by_assigned(p, assigned) {
            continue;
        }
        s.seen[p] = true;
        let other = s.matched[p];
        if other == usize::MAX || augment(s, other, assigned) {
            s.matched[p] = g;
            return true;
        }
    }
    false
}

impl FitScratch {
    fn used_by_assigned(&self, p: usize, assigned: &[bool]) -> bool {
        self.chosen.iter().zip(assigned).any(|(&q, &a)| a && q == p)
    }

    /// Whether the groups of `order[from..]` can be matched to distinct providers, none of them
    /// one chosen by `order[..from]`.
    fn rest_matches(&mut self, from: usize) -> bool {
        let n = self.chosen.len();
        let mut assigned = [false; crate::request::MAX_GROUPS];
        for &g in &self.order[..from] {
            assigned[g] = true;
        }
        self.matched.clear();
        self.matched.resize(self.providers.len(), usize::MAX);
        for i in from..self.order.len() {
            let g = self.order[i];
            self.seen.clear();
            self.seen.resize(self.providers.len(), false);
            self.steps += 1;
            if !augment(self, g, &assigned[..n]) {
                return false;
            }
        }
        true
    }
}

enum Search {
    Found,
    Exhausted,
    Budget,
}

/// Depth-first search over the groups in `s.order`, from position `depth`.
fn search(
    c: &Cluster,
    used: &[u64],
    req: &CompiledRequest,
    host: HostId,
    depth: usize,
    s: &mut FitScratch,
) -> Search {
    if depth == s.order.len() {
        if !layout_ok(c, req, s) {
            return Search::Exhausted;
        }
        s.layout_met = true;
        let mark = s.allocs.len();
        match fit_unnamed(c, used, req, host, &mut s.allocs) {
            Ok(()) => return Search::Found,
            Err(r) => {
                s.allocs.truncate(mark);
                s.unnamed_failure = Some(r);
                return Search::Exhausted;
            }
        }
    }
    let g = s.order[depth];
    let group = &req.groups[g];
    for k in 0..s.candidates[g].len() {
        let p = s.candidates[g][k];
        s.steps += 1;
        if s.steps > SEARCH_BUDGET {
            return Search::Budget;
        }
        if req.isolate && s.order[..depth].iter().any(|&h| s.chosen[h] == p) {
            continue;
        }
        let mark = s.allocs.len();
        if !take_from(c, used, c.provider(s.providers[p]), group, &mut s.allocs) {
            continue;
        }
        s.chosen[g] = p;
        let viable = if req.isolate {
            s.rest_matches(depth + 1)
        } else {
            // Each group still to place must fit alone somewhere on top of what is taken.
            let mut tmp = std::mem::take(&mut s.allocs);
            let ok = s.order[depth + 1..].iter().all(|&h| {
                s.candidates[h].iter().any(|&q| {
                    let m = tmp.len();
                    let fits = take_from(
                        c,
                        used,
                        c.provider(s.providers[q]),
                        &req.groups[h],
                        &mut tmp,
                    );
                    tmp.truncate(m);
                    fits
                })
            });
            s.allocs = tmp;
            ok
        };
        if viable {
            match search(c, used, req, host, depth + 1, s) {
                Search::Exhausted => {}
                done => return done,
            }
        }
        s.allocs.truncate(mark);
    }
    Search::Exhausted
}

/// Why the named groups failed: the first group that fits nowhere alone, else the layout.
fn group_failure(c: &Cluster, used: &[u64], req: &CompiledRequest, h: &Host) -> Reason {
    let mut tmp = Vec::new();
    for (gi, g) in req.groups.iter().enumerate() {
        let mut any_trait_ok = false;
        let mut fits = false;
        for (_, p) in providers(c, h) {
            if !traits_ok(p, g) {
                continue;
            }
            any_trait_ok = true;
            tmp.clear();
            if take_from(c, used, p, g, &mut tmp) {
                fits = true;
                break;
            }
        }
        if fits {
            continue;
        }
        if !any_trait_ok {
            return Reason::GroupUnsatisfiable(gi as u16);
        }
        // Name the first class no single trait-compatible provider can serve on its own.
        for &(class, amount) in &g.resources {
            let mut unit_seen = false;
            let mut capacity_ok = false;
            for (_, p) in providers(c, h).filter(|(_, p)| traits_ok(p, g)) {
                for slot in p.slot_start..p.slot_end {
                    let sl = &c.slots()[slot as usize];
                    if sl.class == class {
                        // An amount above the whole capacity reads as "insufficient", not as a unit rule.
                        unit_seen |= sl.unit_ok(amount) || amount > sl.capacity;
                        capacity_ok |= sl.unit_ok(amount)
                            && used[slot as usize].saturating_add(amount) <= sl.capacity;
                    }
                }
            }
            if !capacity_ok {
                return if unit_seen {
                    Reason::Insufficient(class)
                } else {
                    Reason::UnitConstraint(class)
                };
            }
        }
        return Reason::GroupUnsatisfiable(gi as u16);
    }
    Reason::GroupLayout
}

/// Assigns the named groups (see the module documentation), then the unnamed resources.
fn fit_groups(
    c: &Cluster,
    used: &[u64],
    req: &CompiledRequest,
    host: HostId,
    s: &mut FitScratch,
) -> Result<(), Reason> {
    let h = c.host(host);
    s.providers.clear();
    s.providers.extend(providers(c, h).map(|(id, _)| id));
    let n = req.groups.len();
    s.candidates
        .resize_with(n.max(s.candidates.len()), Vec::new);
    s.chosen.clear();
    s.chosen.resize(n, usize::MAX);
    let mut tmp = std::mem::take(&mut s.allocs);
    for (g, group) in req.groups.iter().enumerate() {
        s.candidates[g].clear();
        for (k, &p) in s.providers.iter().enumerate() {
            let prov = c.provider(p);
            tmp.clear();
            if traits_ok(prov, group) && take_from(c, used, prov, group, &mut tmp) {
                s.candidates[g].push(k);
            }
        }
        if s.candidates[g].is_empty() {
            s.allocs = tmp;
            return Err(group_failure(c, used, req, h));
        }
    }
    tmp.clear();
    s.allocs = tmp;
    s.order.clear();
    s.order.extend(0..n);
    let cands = &s.candidates;
    s.order.sort_by_key(|&g| (cands[g].len(), g));
    s.layout_met = false;
    s.unnamed_failure = None;
    if req.isolate && !s.rest_matches(0) {
        return Err(Reason::GroupLayout);
    }
    match search(c, used, req, host, 0, s) {
        Search::Found => {
            // Named groups' allocations in request order (feasibility does not depend on it).
            s.allocs.clear();
            for g in 0..n {
                let p = c.provider(s.providers[s.chosen[g]]);
                // Each slot's total is what the search checked, so every prefix fits too.
                let taken = take_from(c, used, p, &req.groups[g], &mut s.allocs);
                debug_assert!(taken);
            }
            let unnamed = fit_unnamed(c, used, req, host, &mut s.allocs);
            debug_assert!(unnamed.is_ok());
            unnamed
        }
        Search::Budget => Err(Reason::SearchLimit(host)),
        Search::Exhausted => Err(match (s.layout_met, s.unnamed_failure) {
            (true, Some(r)) => r,
            _ => Reason::GroupLayout,
        }),
    }
}

/// Fits `req` on `host` given per-slot usage `used`. On success `scratch.allocations()` holds the
/// slots and amounts; on failure the reason names the first resource or group that does not fit.
pub(crate) fn fit_host(
    c: &Cluster,
    used: &[u64],
    req: &CompiledRequest,
    host: HostId,
    scratch: &mut FitScratch,
) -> Result<(), Reason> {
    scratch.allocs.clear();
    scratch.steps = 0;
    if req.groups.is_empty() {
        fit_unnamed(c, used, req, host, &mut scratch.allocs)
    } else {
        fit_groups(c, used, req, host, scratch)
    }
}

/// Unnamed resources: the first slot of the class, in tree order then shared providers, with room,
/// on top of `allocs`. Each class takes one slot and classes never share one, so first-fit is exact.
fn fit_unnamed(
    c: &Cluster,
    used: &[u64],
    req: &CompiledRequest,
    host: HostId,
    allocs: &mut Vec<SlotAllocation>,
) -> Result<(), Reason> {
    // Tree slots are contiguous and each provider has at most one slot per class, so scanning the
    // packed class column visits the same slots as walking the providers, touching less memory.
    let (start, end) = c.host_slots[host.idx()];
    for &(class, amount) in &req.unnamed {
        let mut unit_seen = false;
        let mut try_slot = |slot: u32, allocs: &mut Vec<SlotAllocation>| -> bool {
            let s = &c.slots()[slot as usize];
            if amount > s.capacity {
                unit_seen = true;
            } else if s.unit_ok(amount) {
                unit_seen = true;
                if used[slot as usize]
                    .saturating_add(pending(allocs, slot))
                    .saturating_add(amount)
                    <= s.capacity
                {
                    allocs.push(at(slot, amount));
                    return true;
                }
            }
            false
        };
        let mut found = (start..end)
            .filter(|slot| c.slot_class[*slot as usize] == class)
            .any(|slot| try_slot(slot, allocs));
        if !found {
            'shared: for p in &c.host(host).shared {
                let p = c.provider(*p);
                for slot in p.slot_start..p.slot_end {
                    if c.slot_class[slot as usize] == class {
                        if try_slot(slot, allocs) {
                            found = true;
                            break 'shared;
                        }
                        break;
                    }
                }
            }
        }
        if !found {
            return Err(if unit_seen {
                Reason::Insufficient(class)
            } else {
                Reason::UnitConstraint(class)
            });
        }
    }
    Ok(())
}
