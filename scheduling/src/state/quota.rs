//! Quotas as OpenStack managers count them: usage per project and per user within a project
//! (instances and any resource class), with limits checked in the same step as the claim.
//!
//! A request names its `project` and `user`; every allocation counts towards both scopes. Limits are
//! set per scope with [`State::set_quota`] and checked by [`State::commit`] (hence by every decider's
//! commit, under [`crate::SharedState`]'s write lock): a claim that would take a scope past a limit
//! is refused with [`CommitError::QuotaExceeded`] and changes nothing, so no number of concurrent
//! deciders can exceed a quota. Usage is derived from the allocations (restore rebuilds it); limits
//! are the manager's to set again after a restart. A limit set below the current usage refuses new
//! claims and keeps what is there.

use super::State;
use crate::error::{CommitError, PlacementStateError};
use crate::model::{ClassId, Cluster};
use crate::request::CompiledRequest;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Whose usage a quota counts.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaScope {
    /// Every VM of the project.
    Project(String),
    /// The VMs one user started in a project.
    User {
        /// The project.
        project: String,
        /// The user.
        user: String,
    },
}

impl std::fmt::Display for QuotaScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QuotaScope::Project(p) => write!(f, "project `{p}`"),
            QuotaScope::User { project, user } => write!(f, "user `{user}` of project `{project}`"),
        }
    }
}

/// Limits of one scope: instances, and amounts per resource class (classes not listed are not
/// limited).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaLimits {
    /// Most VMs.
    #[serde(default)]
    pub instances: Option<u64>,
    /// Most of each class (`VCPU`, `MEMORY_MB`, ...), summed over the scope's VMs.
    #[serde(default)]
    pub resources: BTreeMap<String, u64>,
}

/// What a scope uses now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct QuotaUsage {
    /// VMs.
    pub instances: u64,
    /// Amounts per class.
    pub resources: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    instances: u64,
    /// Per class id (dense).
    resources: Vec<u64>,
}

/// One scope's limits, with classes resolved.
#[derive(Clone, Debug, Default)]
struct Limits {
    instances: Option<u64>,
    classes: Vec<(ClassId, u64)>,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Quotas {
    limits: HashMap<QuotaScope, Limits>,
    usage: HashMap<QuotaScope, Counts>,
}

/// The scopes a request counts towards.
fn scopes(req: &CompiledRequest) -> impl Iterator<Item = QuotaScope> + '_ {
    let source = req.source();
    let project = source.project.as_ref();
    let user = project.and_then(|p| {
        source.user.as_ref().map(|u| QuotaScope::User {
            project: p.clone(),
            user: u.clone(),
        })
    });
    project
        .map(|p| QuotaScope::Project(p.clone()))
        .into_iter()
        .chain(user)
}

impl Quotas {
    pub(crate) fn is_empty(&self) -> bool {
        self.limits.is_empty() && self.usage.is_empty()
    }

    /// Adds (`sign` true) or removes a VM of `req` from its scopes' usage.
    pub(crate) fn count(&mut self, req: &CompiledRequest, add: bool) {
        for scope in scopes(req) {
            let u = self.usage.entry(scope).or_default();
            if add {
                u.instances += 1;
            } else {
                u.instances = u.instances.saturating_sub(1);
            }
            for &(c, amount) in &req.totals {
                if u.resources.len() <= c.idx() {
                    u.resources.resize(c.idx() + 1, 0);
                }
                let r = &mut u.resources[c.idx()];
                *r = if add {
                    r.saturating_add(amount)
                } else {
                    r.saturating_sub(amount)
                };
            }
        }
    }

    /// Refuses `req` if it would take one of its scopes past a limit; `credit` is a request whose
    /// usage it replaces (a resize).
    pub(crate) fn check(
        &self,
        cluster: &Cluster,
        req: &CompiledRequest,
        credit: Option<&CompiledRequest>,
    ) -> Result<(), CommitError> {
        if self.limits.is_empty() {
            return Ok(());
        }
        for scope in scopes(req) {
            let Some(Limits {
                instances,
                classes: limits,
            }) = self.limits.get(&scope)
            else {
                continue;
            };
            let used = self.usage.get(&scope);
            let credited = credit.is_some_and(|c| scopes(c).any(|s| s == scope));
            if let Some(limit) = instances {
                let now = used.map_or(0, |u| u.instances);
                let after = if credited { now } else { now + 1 };
                if after > *limit {
                    return Err(CommitError::QuotaExceeded {
                        scope: scope.to_string(),
                        class: "instances".into(),
                        limit: *limit,
                        used: now,
                        requested: 1,
                    });
                }
            }
            for &(c, limit) in limits {
                let now = used
                    .and_then(|u| u.resources.get(c.idx()).copied())
                    .unwrap_or(0);
                let back = if credited {
                    credit.map_or(0, |r| r.total(c))
                } else {
                    0
                };
                let want = req.total(c);
                if u128::from(now) - u128::from(back.min(now)) + u128::from(want)
                    > u128::from(limit)
                {
                    return Err(CommitError::QuotaExceeded {
                        scope: scope.to_string(),
                        class: cluster.class_name(c).to_string(),
                        limit,
                        used: now,
                        requested: want,
                    });
                }
            }
        }
        Ok(())
    }

    pub(crate) fn same_usage(&self, other: &Quotas) -> bool {
        let norm = |q: &Quotas| {
            let mut v: Vec<(QuotaScope, Counts)> = q
                .usage
                .iter()
                .filter(|(_, c)| c.instances > 0)
                .map(|(s, c)| {
                    let mut c = c.clone();
                    while c.resources.last() == Some(&0) {
                        c.resources.pop();
                    }
                    (s.clone(), c)
                })
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        norm(self) == norm(other)
    }
}

impl State {
    /// Sets (replaces) the limits of `scope`. Classes must be known to the cluster.
    ///
    /// ```
    /// use scheduling::state::{QuotaLimits, QuotaScope};
    /// use scheduling::{Cluster, CommitError, PlaceError, PlacementRequest, Placer, Profile};
    /// use std::sync::Arc;
    ///
    /// let cluster = Cluster::from_json(r#"{"hosts": [
    ///   {"name": "a", "inventories": {"VCPU": {"total": 64}}}]}"#).unwrap();
    /// let mut placer = Placer::new(Arc::new(cluster), Profile::default(), 1);
    /// let limits = QuotaLimits { instances: Some(10), resources: [("VCPU".into(), 6)].into() };
    /// placer.state_mut().set_quota(QuotaScope::Project("web".into()), limits).unwrap();
    /// let vm = |id: &str| {
    ///     let mut r = PlacementRequest::new(id, &[("VCPU", 4)]);
    ///     r.project = Some("web".into());
    ///     r
    /// };
    /// placer.place(&vm("vm-1")).unwrap();
    /// let err = placer.place(&vm("vm-2")).unwrap_err();
    /// assert!(matches!(err, PlaceError::Commit(CommitError::QuotaExceeded { .. })));
    /// assert_eq!(err.to_string(), "quota of project `web` exceeded: VCPU limit 6, used 4, requested 4");
    /// ```
    pub fn set_quota(
        &mut self,
        scope: QuotaScope,
        limits: QuotaLimits,
    ) -> Result<(), PlacementStateError> {
        let mut classes = Vec::with_capacity(limits.resources.len());
        for (name, limit) in &limits.resources {
            let c = self.cluster.class_id(name).ok_or_else(|| {
                PlacementStateError::Model(crate::error::ModelError::Empty {
                    what: format!("quota of {scope}: unknown resource class `{name}`"),
                    field: "resources",
                })
            })?;
            classes.push((c, *limit));
        }
        self.quotas.limits.insert(
            scope,
            Limits {
                instances: limits.instances,
                classes,
            },
        );
        Ok(())
    }

    /// Removes the limits of `scope` (its usage is still counted).
    pub fn clear_quota(&mut self, scope: &QuotaScope) {
        self.quotas.limits.remove(scope);
    }

    /// What `scope` uses now.
    pub fn quota_usage(&self, scope: &QuotaScope) -> QuotaUsage {
        let Some(u) = self.quotas.usage.get(scope) else {
            return QuotaUsage::default();
        };
        QuotaUsage {
            instances: u.instances,
            resources: u
                .resources
                .iter()
                .enumerate()
                .filter(|(_, a)| **a > 0)
                .map(|(c, a)| (self.cluster.class_name(ClassId::new(c)).to_string(), *a))
                .collect(),
        }
    }
}
