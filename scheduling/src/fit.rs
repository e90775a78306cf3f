//! Fitting one request onto one host's provider tree: which inventory slot serves each resource.
//!
//! Unnamed-group resources may each come from any provider in the tree (or a shared provider in reach).
//! Each named group must be served whole by one provider with the group's traits; `isolate` puts groups on
//! distinct providers and `same_subtree` requires one group's provider to be an ancestor of the others'.
//! The search is a bounded backtracking over the (small) tree and never allocates once warmed up.

use crate::explain::Reason;
use crate::model::{Cluster, Host, HostId, Provider, ProviderId, SlotAllocation, SlotId};
use crate::request::{CompiledGroup, CompiledRequest};

/// Upper bound on backtracking steps per host, so adversarial requests cannot stall a decision.
const SEARCH_BUDGET: u32 = 4096;

/// Reusable buffers of the resource fit, handed to every [`crate::framework::FilterPlugin`]: the
/// built-in resource filter leaves the inventory slots it chose there. Other filters ignore it.
#[derive(Debug, Default, Clone)]
pub struct FitScratch {
    allocs: Vec<SlotAllocation>,
    chosen: Vec<ProviderId>,
    steps: u32,
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

fn layout_ok(c: &Cluster, req: &CompiledRequest, chosen: &[ProviderId]) -> bool {
    req.same_subtree.iter().all(|set| {
        set.iter().any(|&a| {
            set.iter()
                .all(|&b| c.is_ancestor_or_self(chosen[a], chosen[b]))
        })
    })
}

fn place_groups(
    c: &Cluster,
    used: &[u64],
    req: &CompiledRequest,
    h: &Host,
    gi: usize,
    s: &mut FitScratch,
) -> bool {
    if gi == req.groups.len() {
        return layout_ok(c, req, &s.chosen);
    }
    let g = &req.groups[gi];
    for (pid, p) in providers(c, h) {
        s.steps += 1;
        if s.steps > SEARCH_BUDGET {
            return false;
        }
        if req.isolate && s.chosen.contains(&pid) || !traits_ok(p, g) {
            continue;
        }
        let mark = s.allocs.len();
        if take_from(c, used, p, g, &mut s.allocs) {
            s.chosen.push(pid);
            if place_groups(c, used, req, h, gi + 1, s) {
                return true;
            }
            s.chosen.pop();
            s.allocs.truncate(mark);
        }
    }
    false
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
    scratch.chosen.clear();
    scratch.steps = 0;
    if !req.groups.is_empty() {
        let h = c.host(host);
        if !place_groups(c, used, req, h, 0, scratch) {
            return Err(group_failure(c, used, req, h));
        }
    }
    // Unnamed resources: the first slot of the class, in tree order then shared providers, with room.
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
            .any(|slot| try_slot(slot, &mut scratch.allocs));
        if !found {
            'shared: for p in &c.host(host).shared {
                let p = c.provider(*p);
                for slot in p.slot_start..p.slot_end {
                    if c.slot_class[slot as usize] == class {
                        if try_slot(slot, &mut scratch.allocs) {
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
