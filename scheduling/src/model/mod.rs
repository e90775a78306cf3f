//! The resource model: classes, inventories, provider trees, hosts (and their serde descriptions).

mod cluster;
mod resource;
pub mod spec;

pub use cluster::{Cluster, Host, HostId, Interner, Provider, ProviderId, Slot, TraitId};
pub use resource::{is_valid_custom_class, AllocationRatio, ClassId, STANDARD_CLASSES};
pub use spec::{
    ClusterSpec, HostSpec, InventorySpec, ProviderSpec, ServerGroupPolicy, ServerGroupSpec,
    SharedProviderSpec, Taint, TaintEffect,
};
