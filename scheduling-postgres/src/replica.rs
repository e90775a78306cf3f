//! A decider's in-memory replica of the database: scheduling's [`State`] for deciding, plus the
//! database generation of every owner, server group and consumer, kept current by applying the
//! change rows other deciders commit.
//!
//! Changes are applied in each owner's generation order, whatever order they arrive in: an item
//! is applied only once the replica holds, for every owner (and group) it touched, the generation
//! just before the item's; one that arrives early waits. A claim decided on this replica therefore
//! names, for each owner, a generation at which the replica's picture of that owner was exact, and
//! the database's generation check makes that picture the truth or refuses the claim. An item
//! whose generations the replica already has is a repeat (this decider's own commit, or a row read
//! again) and is skipped.

use crate::db::{decode_json, Snapshot};
use crate::error::PgStoreError;
use scheduling::model::{OwnerId, ServerGroupSpec};
use scheduling::state::{QuotaLimits, QuotaScope};
use scheduling::{Cluster, Placement, State};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;

/// One applied change, as the commit function writes it into `keel_changes`.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct ChangeItem {
    #[serde(default)]
    pub(crate) op: String,
    #[serde(default)]
    pub(crate) consumer: Option<String>,
    #[serde(default)]
    pub(crate) host: Option<String>,
    #[serde(default)]
    pub(crate) disabled: Option<bool>,
    #[serde(default)]
    pub(crate) gens: Vec<(usize, i64)>,
    #[serde(default)]
    pub(crate) group: Option<(String, i64)>,
    #[serde(default)]
    pub(crate) cgen: Option<i64>,
    #[serde(default)]
    pub(crate) placement: Option<Placement>,
    #[serde(default)]
    pub(crate) project: Option<String>,
    #[serde(default)]
    pub(crate) user: Option<String>,
    #[serde(default)]
    pub(crate) limits: Option<QuotaLimits>,
    #[serde(default)]
    pub(crate) spec: Option<ServerGroupSpec>,
}

/// Where an item stands against the replica.
#[derive(Debug, PartialEq, Eq)]
enum Gate {
    /// Already reflected.
    Done,
    /// Next for all its owners.
    Ready,
    /// An earlier change of one of its owners is missing.
    Later,
}

/// The replica.
pub(crate) struct Replica {
    pub(crate) state: State,
    owner_gen: Vec<i64>,
    group_gen: HashMap<String, i64>,
    consumer_gen: HashMap<String, i64>,
    pending: Vec<ChangeItem>,
    /// Placements applied (their generations recorded) but not yet imported into `state`.
    unflushed: Vec<Placement>,
    /// Since when some item has been waiting (none waits: `None`).
    waiting_since: Option<std::time::Instant>,
    /// Xid below which every change row has been read.
    pub(crate) floor: i64,
    /// Change rows at or above the floor read already, with their xids.
    pub(crate) seen: Vec<(i64, i64)>,
}

impl Replica {
    /// Builds the replica from a snapshot of the database.
    pub(crate) fn from_snapshot(snap: Snapshot) -> Result<Replica, PgStoreError> {
        let cluster = Arc::new(Cluster::from_spec(&snap.spec)?);
        if snap.owners.len() != cluster.owner_count()
            || snap
                .owners
                .iter()
                .zip(cluster.owner_ids())
                .any(|((id, name, _, _), o)| {
                    usize::try_from(*id).ok() != Some(o.index()) || cluster.owner_name(o) != name
                })
        {
            return Err(PgStoreError::OutOfStep(
                "the owners table does not match the stored cluster description".into(),
            ));
        }
        let mut state = State::new(cluster.clone());
        let mut group_gen = HashMap::new();
        for (spec, gen) in snap.groups {
            group_gen.insert(spec.name.clone(), gen);
            state.ensure_server_group(spec)?;
        }
        let mut consumer_gen = HashMap::with_capacity(snap.consumers.len());
        let mut placements = Vec::with_capacity(snap.consumers.len());
        for (id, gen, p) in snap.consumers {
            placements.push(decode_json::<Placement>(format!("placement of `{id}`"), p)?);
            consumer_gen.insert(id, gen);
        }
        state
            .import(&placements)
            .map_err(|e| PgStoreError::OutOfStep(format!("stored allocations: {e}")))?;
        let mut owner_gen = Vec::with_capacity(snap.owners.len());
        for (id, name, gen, disabled) in snap.owners {
            owner_gen.push(gen);
            if disabled {
                if let Some(h) = cluster.host_id(&name) {
                    state.set_host_enabled(h, false);
                }
            }
            let _ = id;
        }
        for ((project, user), limits) in snap.quotas {
            state.set_quota(scope_of(project, user), limits)?;
        }
        Ok(Replica {
            state,
            owner_gen,
            group_gen,
            consumer_gen,
            pending: Vec::new(),
            unflushed: Vec::new(),
            waiting_since: None,
            floor: snap.floor,
            seen: Vec::new(),
        })
    }

    /// The database generation of `owner` as this replica holds it.
    pub(crate) fn owner_generation(&self, owner: OwnerId) -> i64 {
        self.owner_generation_at(owner.index())
    }

    /// The same, by the owner's dense position.
    pub(crate) fn owner_generation_at(&self, index: usize) -> i64 {
        self.owner_gen.get(index).copied().unwrap_or(0)
    }

    /// The database generation of server group `name` (0 for one not yet stored).
    pub(crate) fn group_generation(&self, name: &str) -> i64 {
        self.group_gen.get(name).copied().unwrap_or(0)
    }

    /// The generation of `consumer`'s allocation.
    pub(crate) fn consumer_generation(&self, consumer: &str) -> Option<i64> {
        self.consumer_gen.get(consumer).copied()
    }

    /// Records what a commit of this decider returned for a claim already applied to the state.
    /// Returns false when a generation did not follow the replica's (the claim was decided on a
    /// picture the database did not have): the replica must then be rebuilt.
    pub(crate) fn confirm(
        &mut self,
        gens: &[(usize, i64)],
        group: Option<&(String, i64)>,
        consumer: &str,
        cgen: Option<i64>,
    ) -> bool {
        let mut in_step = true;
        for &(o, g) in gens {
            if let Some(slot) = self.owner_gen.get_mut(o) {
                in_step &= *slot == g - 1;
                *slot = (*slot).max(g);
            }
        }
        if let Some((name, g)) = group {
            let slot = self.group_gen.entry(name.clone()).or_insert(0);
            in_step &= *slot == g - 1;
            *slot = (*slot).max(*g);
        }
        if let Some(c) = cgen {
            self.consumer_gen.insert(consumer.to_string(), c);
        }
        in_step
    }

    fn gate(&self, item: &ChangeItem) -> Gate {
        let mut done = true;
        let mut ready = true;
        let mut check = |have: i64, got: i64| {
            done &= have >= got;
            ready &= have == got - 1;
        };
        for &(o, g) in &item.gens {
            check(self.owner_gen.get(o).copied().unwrap_or(i64::MAX), g);
        }
        if let Some((name, g)) = &item.group {
            check(self.group_generation(name), *g);
        }
        if item.gens.is_empty() && item.group.is_none() {
            // Quota and group definitions carry no generation: always applied, idempotently.
            return Gate::Ready;
        }
        if done {
            Gate::Done
        } else if ready {
            Gate::Ready
        } else {
            Gate::Later
        }
    }

    /// Applies `item` when its turn has come (and any waiting item it unblocks), keeps it for
    /// later otherwise. An error means the replica no longer matches the database: rebuild it.
    pub(crate) fn offer(&mut self, item: ChangeItem) -> Result<(), PgStoreError> {
        match self.gate(&item) {
            Gate::Done => return Ok(()),
            Gate::Later => {
                self.pending.push(item);
                self.waiting_since
                    .get_or_insert_with(std::time::Instant::now);
                return Ok(());
            }
            Gate::Ready => self.apply(item)?,
        }
        // Whatever was waiting for it.
        loop {
            let mut progressed = false;
            let mut i = 0;
            while i < self.pending.len() {
                match self.gate(&self.pending[i]) {
                    Gate::Done => {
                        self.pending.swap_remove(i);
                    }
                    Gate::Ready => {
                        let item = self.pending.swap_remove(i);
                        self.apply(item)?;
                        progressed = true;
                    }
                    Gate::Later => i += 1,
                }
            }
            if !progressed {
                if self.pending.is_empty() {
                    self.waiting_since = None;
                }
                return Ok(());
            }
        }
    }

    /// Refuses a replica where a change has waited longer than `limit` for an earlier change of
    /// one of its owners. Earlier changes commit first, so one read of the feed brings both; a
    /// change still waiting means the replica's generations went wrong, and it must be rebuilt.
    pub(crate) fn check_stalled(&self, limit: std::time::Duration) -> Result<(), PgStoreError> {
        match self.waiting_since {
            Some(t) if !self.pending.is_empty() && t.elapsed() > limit => {
                Err(PgStoreError::OutOfStep(format!(
                    "{} change(s) waited over {} ms for earlier changes (first: {} of `{}`)",
                    self.pending.len(),
                    limit.as_millis(),
                    self.pending[0].op,
                    self.pending[0].consumer.as_deref().unwrap_or("")
                )))
            }
            _ => Ok(()),
        }
    }

    /// Imports the placements applied since the last flush into the state, in one call (an
    /// import checks against a copy of the whole usage vector: once per read of the feed, not
    /// once per placement). Every reader of the state flushes first: the feed's reader and the
    /// committer do, at the end of each read.
    pub(crate) fn flush(&mut self) -> Result<(), PgStoreError> {
        if self.unflushed.is_empty() {
            return Ok(());
        }
        let placements = std::mem::take(&mut self.unflushed);
        self.state
            .import(&placements)
            .map_err(|e| PgStoreError::OutOfStep(format!("place: {e}")))
    }

    fn apply(&mut self, item: ChangeItem) -> Result<(), PgStoreError> {
        let broken = PgStoreError::OutOfStep;
        let consumer = item.consumer.clone().unwrap_or_default();
        match item.op.as_str() {
            "place" => {
                let placement = item
                    .placement
                    .clone()
                    .ok_or_else(|| broken(format!("place of `{consumer}` without placement")))?;
                self.unflushed.push(placement);
            }
            "move" => {
                self.flush()?;
                let placement = item.placement.clone().ok_or_else(|| {
                    broken(format!("{} of `{consumer}` without placement", item.op))
                })?;
                {
                    self.state
                        .release(&consumer)
                        .map_err(|e| broken(format!("move: {e}")))?;
                }
                self.state
                    .import(std::slice::from_ref(&placement))
                    .map_err(|e| broken(format!("{}: {e}", item.op)))?;
            }
            "release" => {
                self.flush()?;
                self.state
                    .release(&consumer)
                    .map_err(|e| broken(format!("release: {e}")))?;
                self.consumer_gen.remove(&consumer);
            }
            "disable" => {
                self.flush()?;
                let host = item.host.clone().unwrap_or_default();
                let h = self
                    .state
                    .cluster()
                    .host_id(&host)
                    .ok_or_else(|| broken(format!("unknown host `{host}`")))?;
                self.state
                    .set_host_enabled(h, !item.disabled.unwrap_or(true));
            }
            "quota" => {
                self.flush()?;
                let scope = scope_of(
                    item.project.clone().unwrap_or_default(),
                    item.user.clone().unwrap_or_default(),
                );
                match &item.limits {
                    Some(l) => self.state.set_quota(scope, l.clone())?,
                    None => self.state.clear_quota(&scope),
                }
            }
            "group" => {
                self.flush()?;
                if let Some(spec) = &item.spec {
                    self.state.ensure_server_group(spec.clone())?;
                }
            }
            other => return Err(broken(format!("unknown change `{other}`"))),
        }
        for &(o, g) in &item.gens {
            if let Some(slot) = self.owner_gen.get_mut(o) {
                *slot = g;
            }
        }
        if let Some((name, g)) = item.group {
            self.group_gen.insert(name, g);
        }
        if item.op != "release" {
            if let Some(c) = item.cgen {
                self.consumer_gen.insert(consumer, c);
            }
        }
        Ok(())
    }

    /// Ensures server group `spec` in the state (as created on first use).
    pub(crate) fn ensure_group(&mut self, spec: &ServerGroupSpec) -> Result<(), PgStoreError> {
        self.state.ensure_server_group(spec.clone())?;
        Ok(())
    }
}

/// The quota scope a `(project, user)` key names.
pub(crate) fn scope_of(project: String, user: String) -> QuotaScope {
    if user.is_empty() {
        QuotaScope::Project(project)
    } else {
        QuotaScope::User { project, user }
    }
}
