//! Serde types describing a cluster, as a manager loads it from JSON or YAML.
//!
//! These are the *input* shapes: plain data with signed integers so that a negative total is reported as
//! a clear error instead of a parse failure. [`crate::model::Cluster::from_spec`] validates and compiles them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A whole cluster: hosts (each a tree of resource providers), shared providers and server groups.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// Custom resource classes used by inventories (`CUSTOM_*`).
    #[serde(default)]
    pub custom_resource_classes: Vec<String>,
    /// Hosts (root resource providers).
    pub hosts: Vec<HostSpec>,
    /// Providers shared by every host of some aggregate (e.g. a storage pool).
    #[serde(default)]
    pub shared_providers: Vec<SharedProviderSpec>,
    /// Server groups existing at load time.
    #[serde(default)]
    pub server_groups: Vec<ServerGroupSpec>,
}

/// A host: the root resource provider of a tree, with placement metadata.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    /// Unique name (also the root provider's name).
    pub name: String,
    /// Availability zone.
    #[serde(default)]
    pub zone: Option<String>,
    /// Rack (or any failure domain below the zone).
    #[serde(default)]
    pub rack: Option<String>,
    /// Host aggregates this host belongs to.
    #[serde(default)]
    pub aggregates: Vec<String>,
    /// Labels matched by node selectors and affinity terms.
    #[serde(default, deserialize_with = "crate::load::unique_keys::deserialize")]
    pub labels: BTreeMap<String, String>,
    /// Taints; requests must tolerate `NoSchedule`/`NoExecute` ones.
    #[serde(default)]
    pub taints: Vec<Taint>,
    /// Traits of the root provider.
    #[serde(default)]
    pub traits: Vec<String>,
    /// Inventories of the root provider, by resource class.
    #[serde(default, deserialize_with = "crate::load::unique_keys::deserialize")]
    pub inventories: BTreeMap<String, InventorySpec>,
    /// Nested providers (NUMA nodes, GPUs, NIC physical functions, ...).
    #[serde(default)]
    pub children: Vec<ProviderSpec>,
}

/// A nested resource provider.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    /// Unique name.
    pub name: String,
    /// The host's NUMA node number (the Linux node id a VMM pins vCPUs and memory to) when this
    /// provider is a NUMA node. When absent, a provider with the trait `HW_NUMA_ROOT` (OpenStack's
    /// marker) is numbered by its position among the host's `HW_NUMA_ROOT` providers, in tree order.
    /// Providers below a NUMA node (a GPU, a NIC function) report their node's number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numa_node: Option<u32>,
    /// Traits of this provider.
    #[serde(default)]
    pub traits: Vec<String>,
    /// Inventories by resource class.
    #[serde(default, deserialize_with = "crate::load::unique_keys::deserialize")]
    pub inventories: BTreeMap<String, InventorySpec>,
    /// Nested providers below this one.
    #[serde(default)]
    pub children: Vec<ProviderSpec>,
}

/// A provider outside any host tree, usable by every host in one of `aggregates`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SharedProviderSpec {
    /// Unique name.
    pub name: String,
    /// Aggregates whose hosts may draw from this provider.
    pub aggregates: Vec<String>,
    /// Traits.
    #[serde(default)]
    pub traits: Vec<String>,
    /// Inventories by resource class.
    #[serde(default, deserialize_with = "crate::load::unique_keys::deserialize")]
    pub inventories: BTreeMap<String, InventorySpec>,
}

/// One inventory record, as in OpenStack Placement.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InventorySpec {
    /// Physical amount. Must be > 0.
    pub total: i64,
    /// Amount held back for the host itself. 0 ≤ reserved ≤ total.
    #[serde(default)]
    pub reserved: i64,
    /// Smallest single allocation (default 1).
    #[serde(default)]
    pub min_unit: Option<i64>,
    /// Largest single allocation (default `total`).
    #[serde(default)]
    pub max_unit: Option<i64>,
    /// Allocations must be multiples of this (default 1).
    #[serde(default)]
    pub step_size: Option<i64>,
    /// Overcommit factor (default 1.0); must be > 0.
    #[serde(default)]
    pub allocation_ratio: Option<f64>,
}

impl InventorySpec {
    /// An inventory of `total` with defaults for everything else.
    pub fn new(total: i64) -> Self {
        Self {
            total,
            reserved: 0,
            min_unit: None,
            max_unit: None,
            step_size: None,
            allocation_ratio: None,
        }
    }

    /// Sets the allocation ratio.
    pub fn ratio(mut self, ratio: f64) -> Self {
        self.allocation_ratio = Some(ratio);
        self
    }

    /// Sets the reserved amount.
    pub fn reserved(mut self, reserved: i64) -> Self {
        self.reserved = reserved;
        self
    }

    /// Sets the max unit.
    pub fn max_unit(mut self, max_unit: i64) -> Self {
        self.max_unit = Some(max_unit);
        self
    }

    /// Sets the step size.
    pub fn step_size(mut self, step: i64) -> Self {
        self.step_size = Some(step);
        self
    }
}

/// Taint effect, as in Kubernetes.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum TaintEffect {
    /// Do not place unless tolerated.
    NoSchedule,
    /// Avoid placing unless tolerated (scored, not filtered).
    PreferNoSchedule,
    /// Do not place unless tolerated (eviction semantics are the manager's).
    NoExecute,
}

/// A taint on a host. In JSON and YAML it is either a map (`{key, value, effect}`) or kubectl's text
/// form, which `FromStr` and `Display` also use: `key=value:Effect`, or `key:Effect` for an empty
/// value.
///
/// ```
/// use scheduling::model::{Taint, TaintEffect};
/// let t: Taint = "dedicated=hpc:NoSchedule".parse().unwrap();
/// assert_eq!((t.key.as_str(), t.value.as_str(), t.effect), ("dedicated", "hpc", TaintEffect::NoSchedule));
/// assert_eq!(t.to_string(), "dedicated=hpc:NoSchedule");
/// assert_eq!("maintenance:NoExecute".parse::<Taint>().unwrap().to_string(), "maintenance:NoExecute");
/// let err = "dedicated=hpc".parse::<Taint>().unwrap_err();
/// assert_eq!(err.to_string(), "invalid taint `dedicated=hpc`: expected key=value:Effect or key:Effect");
/// ```
#[derive(Clone, Debug, Serialize, PartialEq, Eq, Hash)]
pub struct Taint {
    /// Key.
    pub key: String,
    /// Value (may be empty).
    pub value: String,
    /// Effect.
    pub effect: TaintEffect,
}

/// The map form of a [`Taint`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaintFields {
    key: String,
    #[serde(default)]
    value: String,
    effect: TaintEffect,
}

impl std::str::FromStr for Taint {
    type Err = crate::error::ParseTextError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| crate::error::ParseTextError {
            kind: "taint",
            value: s.to_string(),
            reason,
        };
        let (pair, effect) = s
            .rsplit_once(':')
            .ok_or_else(|| bad("expected key=value:Effect or key:Effect".into()))?;
        let effect: TaintEffect = effect
            .parse()
            .map_err(|e: crate::error::ParseTextError| bad(e.reason))?;
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key.is_empty() {
            return Err(bad("the key is empty".into()));
        }
        Ok(Taint {
            key: key.to_string(),
            value: value.to_string(),
            effect,
        })
    }
}

impl std::fmt::Display for Taint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}:{}", self.key, self.effect)
        } else {
            write!(f, "{}={}:{}", self.key, self.value, self.effect)
        }
    }
}

/// Deserialises a value given either as text (parsed with `FromStr`) or as the map `M`.
pub(crate) fn text_or_map<'de, D, T, M>(d: D, expecting: &'static str) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr<Err = crate::error::ParseTextError>,
    M: Deserialize<'de> + Into<T>,
{
    struct V<T, M>(&'static str, std::marker::PhantomData<(T, M)>);
    impl<'de, T, M> serde::de::Visitor<'de> for V<T, M>
    where
        T: std::str::FromStr<Err = crate::error::ParseTextError>,
        M: Deserialize<'de> + Into<T>,
    {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<T, E> {
            s.parse().map_err(E::custom)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            M::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Into::into)
        }
    }
    d.deserialize_any(V::<T, M>(expecting, std::marker::PhantomData))
}

impl From<TaintFields> for Taint {
    fn from(t: TaintFields) -> Self {
        Taint {
            key: t.key,
            value: t.value,
            effect: t.effect,
        }
    }
}

impl<'de> Deserialize<'de> for Taint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        text_or_map::<D, Taint, TaintFields>(
            d,
            "a taint: `key=value:Effect`, or a map with key, value and effect",
        )
    }
}

/// Server group policy (OpenStack's, including soft variants).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum ServerGroupPolicy {
    /// All members on one host.
    Affinity,
    /// At most `max_per_host` members per host.
    AntiAffinity,
    /// Prefer one host (scored).
    SoftAffinity,
    /// Prefer distinct hosts (scored).
    SoftAntiAffinity,
}

/// A server group: members share an affinity policy and are counted for topology spread.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServerGroupSpec {
    /// Unique name.
    pub name: String,
    /// Policy.
    pub policy: ServerGroupPolicy,
    /// For anti-affinity: members allowed per host (default 1).
    #[serde(default)]
    pub max_per_host: Option<u32>,
}

crate::error::text_enum!(TaintEffect => "taint effect", ServerGroupPolicy => "server group policy");
