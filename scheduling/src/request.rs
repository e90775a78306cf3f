//! Placement requests: what a VM (or a member of a group of VMs) asks for, and its compiled form.
//!
//! [`PlacementRequest`] is the serde input. [`CompiledRequest`] resolves names to ids against a cluster and
//! the state's server groups, checks amounts, and computes the equivalence key shared by identical requests.

use crate::error::PlacementRequestError;
use crate::model::{
    AggregateId, ClassId, Cluster, ServerGroupId, ServerGroupPolicy, TaintEffect, TraitId, ZoneId,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Most resource entries (over all groups) a request may carry; keeps the fit search allocation-free.
pub const MAX_RESOURCE_ENTRIES: usize = 16;
/// Most named request groups.
pub const MAX_GROUPS: usize = 8;

/// How named request groups relate to each other (OpenStack `group_policy`).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum GroupPolicy {
    /// Groups may share a provider.
    #[default]
    None,
    /// Each named group must land on a different provider.
    Isolate,
}

/// A named request group: all of its resources come from one provider (e.g. one NUMA node).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct RequestGroup {
    /// Name, referenced by `same_subtree`.
    pub name: String,
    /// Resources by class.
    #[serde(deserialize_with = "crate::load::unique_keys::deserialize")]
    pub resources: BTreeMap<String, i64>,
    /// Traits the serving provider must have.
    #[serde(default)]
    pub required_traits: Vec<String>,
    /// Traits the serving provider must not have.
    #[serde(default)]
    pub forbidden_traits: Vec<String>,
}

/// Label match operator.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum LabelOperator {
    /// Label value is one of `values`.
    In,
    /// Label absent or value not in `values`.
    NotIn,
    /// Label present.
    Exists,
    /// Label absent.
    DoesNotExist,
}

/// One node-affinity expression over host labels.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct LabelExpression {
    /// Label key.
    pub key: String,
    /// Operator.
    pub operator: LabelOperator,
    /// Values for `In`/`NotIn`.
    #[serde(default)]
    pub values: Vec<String>,
}

impl LabelExpression {
    /// Whether host labels satisfy the expression.
    pub fn matches(&self, labels: &crate::model::Labels) -> bool {
        let v = labels.get(&self.key);
        match self.operator {
            LabelOperator::In => v.is_some_and(|v| self.values.iter().any(|x| x == v)),
            LabelOperator::NotIn => v.is_none_or(|v| !self.values.iter().any(|x| x == v)),
            LabelOperator::Exists => v.is_some(),
            LabelOperator::DoesNotExist => v.is_none(),
        }
    }
}

/// A preferred (scored) affinity term.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct PreferredTerm {
    /// Weight 1..=100.
    pub weight: i64,
    /// Expression.
    pub expression: LabelExpression,
}

/// Toleration operator.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum TolerationOperator {
    /// Key and value must match.
    #[default]
    Equal,
    /// Key must match (any key when `key` is empty).
    Exists,
}

/// A toleration of host taints (Kubernetes semantics). In JSON and YAML it is either a map (the
/// fields below) or text, which `FromStr` and `Display` also use, in kubectl's taint syntax:
/// `key=value:Effect` and `key=value` (operator `Equal`, one effect or all), `key:Effect` and `key`
/// (operator `Exists`), `*` and `*:Effect` (every key).
///
/// ```
/// use scheduling::request::{Toleration, TolerationOperator};
/// use scheduling::model::{Taint, TaintEffect};
/// let t: Toleration = "dedicated=hpc:NoSchedule".parse().unwrap();
/// assert!(t.tolerates(&"dedicated=hpc:NoSchedule".parse::<Taint>().unwrap()));
/// assert!(!t.tolerates(&"dedicated=hpc:NoExecute".parse::<Taint>().unwrap()));
/// let any: Toleration = "gpu".parse().unwrap();
/// assert_eq!((any.operator, any.effect), (TolerationOperator::Exists, None));
/// assert_eq!("*:NoExecute".parse::<Toleration>().unwrap().to_string(), "*:NoExecute");
/// assert_eq!(t.to_string(), "dedicated=hpc:NoSchedule");
/// ```
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq, Hash)]
pub struct Toleration {
    /// Taint key; empty with `Exists` tolerates everything.
    #[serde(default)]
    pub key: String,
    /// Operator.
    #[serde(default)]
    pub operator: TolerationOperator,
    /// Value for `Equal`.
    #[serde(default)]
    pub value: String,
    /// Effect tolerated; `None` tolerates all effects.
    #[serde(default)]
    pub effect: Option<TaintEffect>,
}

/// The map form of a [`Toleration`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TolerationFields {
    #[serde(default)]
    key: String,
    #[serde(default)]
    operator: TolerationOperator,
    #[serde(default)]
    value: String,
    #[serde(default)]
    effect: Option<TaintEffect>,
}

impl From<TolerationFields> for Toleration {
    fn from(t: TolerationFields) -> Self {
        Toleration {
            key: t.key,
            operator: t.operator,
            value: t.value,
            effect: t.effect,
        }
    }
}

impl<'de> Deserialize<'de> for Toleration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::model::spec::text_or_map::<D, Toleration, TolerationFields>(
            d,
            "a toleration: `key=value:Effect`, `key:Effect`, `key`, `*`, or a map",
        )
    }
}

impl std::str::FromStr for Toleration {
    type Err = crate::error::ParseTextError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| crate::error::ParseTextError {
            kind: "toleration",
            value: s.to_string(),
            reason,
        };
        let (rest, effect) = match s.rsplit_once(':') {
            Some((rest, e)) => (
                rest,
                Some(e.parse::<TaintEffect>().map_err(|e| bad(e.reason))?),
            ),
            None => (s, None),
        };
        let (key, operator, value) = match rest.split_once('=') {
            Some((k, v)) => (k, TolerationOperator::Equal, v),
            None if rest == "*" => ("", TolerationOperator::Exists, ""),
            None => (rest, TolerationOperator::Exists, ""),
        };
        if key.is_empty() && operator == TolerationOperator::Equal || rest.is_empty() {
            return Err(bad("the key is empty (use `*` for every key)".into()));
        }
        Ok(Toleration {
            key: key.to_string(),
            operator,
            value: value.to_string(),
            effect,
        })
    }
}

impl std::fmt::Display for Toleration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.operator, self.key.is_empty()) {
            (TolerationOperator::Exists, true) => f.write_str("*")?,
            (TolerationOperator::Exists, false) => f.write_str(&self.key)?,
            (TolerationOperator::Equal, _) => write!(f, "{}={}", self.key, self.value)?,
        }
        match self.effect {
            Some(e) => write!(f, ":{e}"),
            None => Ok(()),
        }
    }
}

impl Toleration {
    /// Whether this toleration covers `taint`.
    pub fn tolerates(&self, taint: &crate::model::Taint) -> bool {
        if self.effect.is_some_and(|e| e != taint.effect) {
            return false;
        }
        match self.operator {
            TolerationOperator::Exists => self.key.is_empty() || self.key == taint.key,
            TolerationOperator::Equal => self.key == taint.key && self.value == taint.value,
        }
    }
}

/// Failure domain used by topology spread.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum TopologyKey {
    /// Availability zone.
    Zone,
    /// Rack.
    Rack,
}

/// What to do when a spread constraint cannot be met.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum WhenUnsatisfiable {
    /// Hard: filter.
    #[default]
    DoNotSchedule,
    /// Soft: score.
    ScheduleAnyway,
}

/// Topology spread over the members of the request's server group.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct SpreadConstraint {
    /// Domain key.
    pub key: TopologyKey,
    /// Largest allowed difference between the fullest and emptiest domain (≥ 1).
    pub max_skew: u32,
    /// Hard or soft.
    #[serde(default)]
    pub when_unsatisfiable: WhenUnsatisfiable,
}

/// A VM asking to be placed.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct PlacementRequest {
    /// Consumer id (the VM's id); becomes the allocation's key.
    pub id: String,
    /// Resources of the unnamed group: each class may come from any provider of the host tree.
    #[serde(default, deserialize_with = "crate::load::unique_keys::deserialize")]
    pub resources: BTreeMap<String, i64>,
    /// Named groups, each served by a single provider.
    #[serde(default)]
    pub groups: Vec<RequestGroup>,
    /// Relation between named groups.
    #[serde(default)]
    pub group_policy: GroupPolicy,
    /// Sets of named groups whose providers must lie in one subtree (e.g. a GPU under the NUMA node).
    #[serde(default)]
    pub same_subtree: Vec<Vec<String>>,
    /// Traits the host (root provider) must have.
    #[serde(default)]
    pub required_traits: Vec<String>,
    /// Traits the host must not have.
    #[serde(default)]
    pub forbidden_traits: Vec<String>,
    /// Each inner list: the host must have at least one of these traits.
    #[serde(default)]
    pub any_of_traits: Vec<Vec<String>>,
    /// Each inner list: the host must be in at least one of these aggregates.
    #[serde(default)]
    pub member_of: Vec<Vec<String>>,
    /// Availability zone.
    #[serde(default)]
    pub zone: Option<String>,
    /// Required host labels.
    #[serde(default, deserialize_with = "crate::load::unique_keys::deserialize")]
    pub node_selector: BTreeMap<String, String>,
    /// Required node-affinity expressions (all must hold).
    #[serde(default)]
    pub node_affinity: Vec<LabelExpression>,
    /// Preferred node-affinity terms (scored).
    #[serde(default)]
    pub preferred_affinity: Vec<PreferredTerm>,
    /// Tolerations of host taints.
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
    /// Server group to join.
    #[serde(default)]
    pub server_group: Option<String>,
    /// Topology spread over the server group's members.
    #[serde(default)]
    pub topology_spread: Vec<SpreadConstraint>,
    /// Priority (higher preempts lower).
    #[serde(default)]
    pub priority: i32,
    /// Project the VM belongs to (its usage counts towards the project's quota).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// User who started it (counts towards the user's quota within the project).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl PlacementRequest {
    /// A request for the unnamed-group resources `resources` (class name, amount).
    ///
    /// ```
    /// let r = scheduling::PlacementRequest::new("vm1", &[("VCPU", 2), ("MEMORY_MB", 4096)]);
    /// assert_eq!(r.resources["VCPU"], 2);
    /// ```
    pub fn new(id: impl Into<String>, resources: &[(&str, i64)]) -> Self {
        Self {
            id: id.into(),
            resources: resources.iter().map(|(c, a)| (c.to_string(), *a)).collect(),
            ..Default::default()
        }
    }

    /// Hash of everything but the id (and the quota owners, which do not change where a request
    /// fits): identical requests share an equivalence class.
    pub fn equivalence_key(&self) -> u64 {
        self.keys().0
    }

    /// `(equivalence, prefilter, fit)` keys in one pass: the equivalence key combines the two others
    /// with the fields neither covers, so the request is hashed once, not three times.
    pub(crate) fn keys(&self) -> (u64, u64, u64) {
        let Self {
            id: _,
            // Covered by the prefilter and fit keys.
            resources: _,
            groups: _,
            group_policy: _,
            same_subtree: _,
            required_traits: _,
            forbidden_traits: _,
            any_of_traits: _,
            member_of: _,
            zone: _,
            node_selector: _,
            node_affinity: _,
            tolerations: _,
            // Covered by neither.
            preferred_affinity,
            server_group,
            topology_spread,
            priority,
            // Quotas are checked at commit; they do not change which hosts fit.
            project: _,
            user: _,
        } = self;
        let (prefilter, fit) = (self.prefilter_key(), self.fit_key());
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (
            prefilter,
            fit,
            preferred_affinity,
            server_group,
            topology_spread,
            priority,
        )
            .hash(&mut h);
        (h.finish(), prefilter, fit)
    }
}

impl PlacementRequest {
    /// The checks of [`CompiledRequest::compile`] on the id and the quota owners: the fields a
    /// shared [`RequestShape`] does not cover.
    fn validate_owners(&self) -> Result<(), PlacementRequestError> {
        let invalid = |field: &'static str, reason: &str| PlacementRequestError::Invalid {
            request: self.id.clone(),
            field,
            reason: reason.into(),
        };
        if self.id.is_empty() {
            return Err(invalid("id", "must not be empty"));
        }
        if self.user.is_some() && self.project.is_none() {
            return Err(invalid(
                "user",
                "needs `project` (quotas count a user's VMs within a project)",
            ));
        }
        Ok(())
    }

    /// Whether `self` and `other` are equal but for their ids and quota owners (`project`,
    /// `user`): then they compile to the same [`RequestShape`].
    pub(crate) fn same_but_owners(&self, other: &PlacementRequest) -> bool {
        // Destructured, so that a field added later must be placed on one side or the other.
        let Self {
            id: _,
            project: _,
            user: _,
            resources,
            groups,
            group_policy,
            same_subtree,
            required_traits,
            forbidden_traits,
            any_of_traits,
            member_of,
            zone,
            node_selector,
            node_affinity,
            preferred_affinity,
            tolerations,
            server_group,
            topology_spread,
            priority,
        } = self;
        *resources == other.resources
            && *groups == other.groups
            && *group_policy == other.group_policy
            && *same_subtree == other.same_subtree
            && *required_traits == other.required_traits
            && *forbidden_traits == other.forbidden_traits
            && *any_of_traits == other.any_of_traits
            && *member_of == other.member_of
            && *zone == other.zone
            && *node_selector == other.node_selector
            && *node_affinity == other.node_affinity
            && *preferred_affinity == other.preferred_affinity
            && *tolerations == other.tolerations
            && *server_group == other.server_group
            && *topology_spread == other.topology_spread
            && *priority == other.priority
    }

    /// A quick hash of the fields [`PlacementRequest::same_but_owners`] compares, for looking up
    /// shapes (each hit is confirmed by comparing: unlike the keys of [`RequestShape`], which
    /// caches trust, this hash may collide harmlessly).
    pub(crate) fn shape_hash(&self) -> u64 {
        let Self {
            id: _,
            project: _,
            user: _,
            resources,
            groups,
            group_policy,
            same_subtree,
            required_traits,
            forbidden_traits,
            any_of_traits,
            member_of,
            zone,
            node_selector,
            node_affinity,
            preferred_affinity,
            tolerations,
            server_group,
            topology_spread,
            priority,
        } = self;
        let mut h = crate::fasthash::IntHasher::default();
        (
            resources,
            groups,
            group_policy,
            same_subtree,
            required_traits,
        )
            .hash(&mut h);
        (
            forbidden_traits,
            any_of_traits,
            member_of,
            zone,
            node_selector,
        )
            .hash(&mut h);
        (node_affinity, preferred_affinity, tolerations, server_group).hash(&mut h);
        (topology_spread, priority).hash(&mut h);
        h.finish()
    }

    /// Hash of the resource part of the request (see [`RequestShape::fit_key`]).
    pub fn fit_key(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (
            &self.resources,
            &self.groups,
            &self.group_policy,
            &self.same_subtree,
        )
            .hash(&mut h);
        h.finish()
    }

    /// Hash of the fields static pre-filters depend on (see [`RequestShape::prefilter_key`]).
    pub fn prefilter_key(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        // The class names in order (each hash ends with a terminator), then their count: as
        // unambiguous as hashing them collected in a Vec, without allocating one per request.
        let classes = self
            .resources
            .keys()
            .chain(self.groups.iter().flat_map(|g| g.resources.keys()));
        let mut n = 0usize;
        for c in classes {
            c.hash(&mut h);
            n += 1;
        }
        (
            n,
            &self.required_traits,
            &self.forbidden_traits,
            &self.any_of_traits,
        )
            .hash(&mut h);
        (
            &self.member_of,
            &self.zone,
            &self.node_selector,
            &self.node_affinity,
            &self.tolerations,
        )
            .hash(&mut h);
        h.finish()
    }
}

/// A trait reference that may name a trait no provider has (then nothing can satisfy it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraitRef {
    /// Name as requested.
    pub name: String,
    /// Id when some provider has it.
    pub id: Option<TraitId>,
}

/// A compiled named group.
#[derive(Clone, Debug)]
pub struct CompiledGroup {
    /// Name.
    pub name: String,
    /// Resources.
    pub resources: Vec<(ClassId, u64)>,
    /// Required provider traits (`None` = unknown trait: unsatisfiable).
    pub required: Vec<Option<TraitId>>,
    /// Forbidden provider traits (unknown ones are dropped: trivially satisfied).
    pub forbidden: Vec<TraitId>,
}

/// The server group a request joins, resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupRef {
    /// The group in the state's group table.
    pub id: ServerGroupId,
    /// Policy.
    pub policy: ServerGroupPolicy,
    /// Members allowed per host for anti-affinity.
    pub max_per_host: u32,
}

/// A request resolved against a cluster and state. Its ids are only meaningful for that cluster:
/// obtain it from [`crate::state::State::compile`] of the state it is decided and committed on.
///
/// It is the request as given (with its id, the consumer id) and its resolved [`RequestShape`],
/// whose fields it dereferences to (`compiled.totals`, `compiled.server_group`, ...). Requests that
/// differ only in their id and quota owners have the same shape, and [`crate::Placer`] shares one
/// between them: a placement then keeps only the request's own copy and two pointers.
#[derive(Clone, Debug)]
pub struct CompiledRequest {
    /// The request as given (its id is the consumer id).
    source: Arc<PlacementRequest>,
    /// Everything resolved from it.
    shape: Arc<RequestShape>,
}

impl std::ops::Deref for CompiledRequest {
    type Target = RequestShape;

    #[inline]
    fn deref(&self) -> &RequestShape {
        &self.shape
    }
}

/// What a request resolves to against a cluster and state, apart from its id and quota owners
/// (which [`CompiledRequest::source`] holds): read through a [`CompiledRequest`].
#[derive(Clone, Debug)]
pub struct RequestShape {
    /// Unnamed-group resources.
    pub unnamed: Vec<(ClassId, u64)>,
    /// Named groups.
    pub groups: Vec<CompiledGroup>,
    /// Named groups on distinct providers.
    pub isolate: bool,
    /// `same_subtree` as indexes into `groups`.
    pub same_subtree: Vec<Vec<usize>>,
    /// Host-level required traits.
    pub required_traits: Vec<TraitRef>,
    /// Host-level forbidden traits (known ones only).
    pub forbidden_traits: Vec<TraitId>,
    /// Any-of trait sets (known ones only; an empty set is unsatisfiable).
    pub any_of_traits: Vec<Vec<TraitId>>,
    /// Aggregate sets.
    pub member_of: Vec<Vec<AggregateId>>,
    /// Zone.
    pub zone: Option<ZoneId>,
    /// Node selector pairs.
    pub node_selector: Vec<(String, String)>,
    /// Required affinity expressions.
    pub node_affinity: Vec<LabelExpression>,
    /// Preferred affinity terms.
    pub preferred_affinity: Vec<PreferredTerm>,
    /// Tolerations.
    pub tolerations: Vec<Toleration>,
    /// Server group.
    pub server_group: Option<GroupRef>,
    /// Server group name.
    pub server_group_name: Option<String>,
    /// Spread constraints.
    pub spread: Vec<SpreadConstraint>,
    /// Priority.
    pub priority: i32,
    /// Sum of resources per class over all groups (used by scores).
    pub totals: Vec<(ClassId, u64)>,
    /// Equivalence key (see [`PlacementRequest::equivalence_key`]).
    pub equivalence_key: u64,
    /// Hash of the resource part (amounts, named groups, group policy, same_subtree): requests with the
    /// same key fit on exactly the same hosts given the same usage.
    pub fit_key: u64,
    /// Hash of the fields the static pre-filters read (resource classes, traits, aggregates, zone,
    /// labels, tolerations): requests differing only in amounts or server group share cached candidates.
    pub prefilter_key: u64,
}

impl CompiledRequest {
    /// `source` with the shape of `like`, which must have been compiled, against the same cluster
    /// and state, from a request equal to `source` but for its id and quota owners (see
    /// [`PlacementRequest::same_but_owners`]); `source`'s own fields are validated.
    pub(crate) fn with_shape_of(
        source: Arc<PlacementRequest>,
        like: &CompiledRequest,
    ) -> Result<Self, PlacementRequestError> {
        debug_assert!(source.same_but_owners(&like.source));
        source.validate_owners()?;
        Ok(CompiledRequest {
            source,
            shape: like.shape.clone(),
        })
    }

    /// The shape, to change (copied first if shared).
    pub(crate) fn shape_mut(&mut self) -> &mut RequestShape {
        Arc::make_mut(&mut self.shape)
    }

    /// Consumer id (the request's id).
    #[inline]
    pub fn id(&self) -> &str {
        &self.source.id
    }

    /// The request as given.
    #[inline]
    pub fn source(&self) -> &Arc<PlacementRequest> {
        &self.source
    }

    /// Total amount of class `c` requested.
    pub fn total(&self, c: ClassId) -> u64 {
        self.totals
            .iter()
            .find(|(k, _)| *k == c)
            .map_or(0, |(_, a)| *a)
    }

    /// Whether any taint-blocking toleration covers `taint`.
    pub fn tolerates(&self, taint: &crate::model::Taint) -> bool {
        self.tolerations.iter().any(|t| t.tolerates(taint))
    }

    /// Resolves `req` against `cluster`; `lookup_group` resolves server group names.
    pub fn compile(
        req: &PlacementRequest,
        cluster: &Cluster,
        lookup_group: impl Fn(&str) -> Option<GroupRef>,
    ) -> Result<Self, PlacementRequestError> {
        Self::compile_shared(Arc::new(req.clone()), cluster, lookup_group)
    }

    /// As [`CompiledRequest::compile`], keeping `source` without copying it.
    pub fn compile_shared(
        source: Arc<PlacementRequest>,
        cluster: &Cluster,
        lookup_group: impl Fn(&str) -> Option<GroupRef>,
    ) -> Result<Self, PlacementRequestError> {
        let req = &*source;
        let rid = || req.id.clone();
        let invalid = |field: &'static str, reason: String| PlacementRequestError::Invalid {
            request: req.id.clone(),
            field,
            reason,
        };
        req.validate_owners()?;
        let mut entries = 0usize;
        let mut totals: Vec<(ClassId, u64)> = Vec::new();
        let mut resolve =
            |res: &BTreeMap<String, i64>| -> Result<Vec<(ClassId, u64)>, PlacementRequestError> {
                let mut out = Vec::with_capacity(res.len());
                for (name, amount) in res {
                    let c = cluster.class_id(name).ok_or_else(|| {
                        PlacementRequestError::UnknownResourceClass {
                            request: rid(),
                            class: name.clone(),
                        }
                    })?;
                    if *amount <= 0 {
                        return Err(PlacementRequestError::NonPositiveAmount {
                            request: rid(),
                            class: name.clone(),
                            amount: *amount,
                        });
                    }
                    if !cluster.offered[c.idx()] {
                        return Err(PlacementRequestError::NotOffered {
                            request: rid(),
                            class: name.clone(),
                        });
                    }
                    let amount = *amount as u64;
                    let max_unit = cluster.max_unit_by_class[c.idx()];
                    if amount > max_unit {
                        return Err(PlacementRequestError::ExceedsMaxUnit {
                            request: rid(),
                            class: name.clone(),
                            amount,
                            max_unit,
                        });
                    }
                    // At most MAX_RESOURCE_ENTRIES amounts of at most MAX_QUANTITY each: no wrap.
                    match totals.iter_mut().find(|(k, _)| *k == c) {
                        Some((_, t)) => *t = t.saturating_add(amount),
                        None => totals.push((c, amount)),
                    }
                    out.push((c, amount));
                }
                entries += out.len();
                Ok(out)
            };
        let unnamed = resolve(&req.resources)?;
        if req.groups.len() > MAX_GROUPS {
            return Err(invalid(
                "groups",
                format!(
                    "at most {MAX_GROUPS} named groups, got {}",
                    req.groups.len()
                ),
            ));
        }
        let mut groups = Vec::with_capacity(req.groups.len());
        for g in &req.groups {
            if g.name.is_empty() {
                return Err(PlacementRequestError::BadGroup {
                    request: rid(),
                    reason: "a named group has an empty name".into(),
                });
            }
            if groups.iter().any(|x: &CompiledGroup| x.name == g.name) {
                return Err(PlacementRequestError::BadGroup {
                    request: rid(),
                    reason: format!("group `{}` defined twice", g.name),
                });
            }
            let resources = resolve(&g.resources)?;
            if resources.is_empty() {
                return Err(PlacementRequestError::BadGroup {
                    request: rid(),
                    reason: format!("group `{}` requests no resources", g.name),
                });
            }
            groups.push(CompiledGroup {
                name: g.name.clone(),
                resources,
                required: g
                    .required_traits
                    .iter()
                    .map(|t| cluster.trait_id(t))
                    .collect(),
                forbidden: g
                    .forbidden_traits
                    .iter()
                    .filter_map(|t| cluster.trait_id(t))
                    .collect(),
            });
        }
        if entries == 0 {
            return Err(invalid(
                "resources",
                "the request asks for no resources".into(),
            ));
        }
        if entries > MAX_RESOURCE_ENTRIES {
            return Err(invalid(
                "resources",
                format!("at most {MAX_RESOURCE_ENTRIES} resource entries, got {entries}"),
            ));
        }
        let mut same_subtree = Vec::new();
        for set in &req.same_subtree {
            let mut idx = Vec::with_capacity(set.len());
            for name in set {
                let i = groups.iter().position(|g| &g.name == name).ok_or_else(|| {
                    PlacementRequestError::BadGroup {
                        request: rid(),
                        reason: format!("same_subtree refers to unknown group `{name}`"),
                    }
                })?;
                idx.push(i);
            }
            same_subtree.push(idx);
        }
        let mut member_of = Vec::new();
        for set in &req.member_of {
            let mut ids = Vec::new();
            for a in set {
                ids.push(
                    cluster
                        .aggregate_id(a)
                        .ok_or_else(|| invalid("member_of", format!("unknown aggregate `{a}`")))?,
                );
            }
            if ids.is_empty() {
                return Err(invalid("member_of", "an aggregate set is empty".into()));
            }
            member_of.push(ids);
        }
        let zone = match &req.zone {
            None => None,
            Some(z) => Some(
                cluster
                    .zone_id(z)
                    .ok_or_else(|| invalid("zone", format!("unknown zone `{z}`")))?,
            ),
        };
        let server_group = match &req.server_group {
            None => None,
            Some(name) => Some(lookup_group(name).ok_or_else(|| {
                PlacementRequestError::UnknownServerGroup {
                    request: rid(),
                    group: name.clone(),
                }
            })?),
        };
        if !req.topology_spread.is_empty() && server_group.is_none() {
            return Err(invalid(
                "topology_spread",
                "needs `server_group` (spread counts the group's members)".into(),
            ));
        }
        if req.topology_spread.iter().any(|s| s.max_skew == 0) {
            return Err(invalid("topology_spread", "max_skew must be >= 1".into()));
        }
        for t in &req.preferred_affinity {
            if !(1..=100).contains(&t.weight) {
                return Err(invalid(
                    "preferred_affinity",
                    format!("weight must be within 1..=100, got {}", t.weight),
                ));
            }
        }
        let (equivalence_key, prefilter_key, fit_key) = req.keys();
        let shape = RequestShape {
            unnamed,
            groups,
            isolate: req.group_policy == GroupPolicy::Isolate,
            same_subtree,
            required_traits: req
                .required_traits
                .iter()
                .map(|t| TraitRef {
                    name: t.clone(),
                    id: cluster.trait_id(t),
                })
                .collect(),
            forbidden_traits: req
                .forbidden_traits
                .iter()
                .filter_map(|t| cluster.trait_id(t))
                .collect(),
            any_of_traits: req
                .any_of_traits
                .iter()
                .map(|set| set.iter().filter_map(|t| cluster.trait_id(t)).collect())
                .collect(),
            member_of,
            zone,
            node_selector: req
                .node_selector
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            node_affinity: req.node_affinity.clone(),
            preferred_affinity: req.preferred_affinity.clone(),
            tolerations: req.tolerations.clone(),
            server_group,
            server_group_name: req.server_group.clone(),
            spread: req.topology_spread.clone(),
            priority: req.priority,
            totals,
            equivalence_key,
            prefilter_key,
            fit_key,
        };
        Ok(CompiledRequest {
            source,
            shape: Arc::new(shape),
        })
    }
}

/// One event of a request stream.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StreamEvent {
    /// Place a VM.
    Place(Box<PlacementRequest>),
    /// Release a VM by consumer id.
    Release(String),
}

/// A stream of requests as a manager would replay it: server groups to create, then events in order.
///
/// ```
/// let s: scheduling::request::RequestStream = serde_json::from_str(r#"{
///   "server_groups": [{"name": "web", "policy": "anti-affinity"}],
///   "events": [
///     {"place": {"id": "vm1", "resources": {"VCPU": 2}, "server_group": "web"}},
///     {"release": "vm1"}
///   ]}"#).unwrap();
/// assert_eq!(s.events.len(), 2);
/// ```
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RequestStream {
    /// Server groups to create before the events.
    #[serde(default)]
    pub server_groups: Vec<crate::model::ServerGroupSpec>,
    /// Events in order.
    pub events: Vec<StreamEvent>,
}

crate::error::text_enum!(
    GroupPolicy => "group policy",
    LabelOperator => "label operator",
    TolerationOperator => "toleration operator",
    TopologyKey => "topology key",
    WhenUnsatisfiable => "when_unsatisfiable",
);
