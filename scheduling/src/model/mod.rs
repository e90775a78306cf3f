//! The resource model: classes, inventories, provider trees, hosts (and their serde descriptions).

mod cluster;
mod ids;
mod resource;
pub mod spec;

pub use cluster::{Cluster, Host, Labels, Provider, Slot};
pub use ids::{
    AggregateId, ClassId, HostId, OwnerGeneration, OwnerId, ProviderId, RackId, ServerGroupId,
    SlotAllocation, SlotId, TraitId, ZoneId,
};
pub use resource::{is_valid_custom_class, AllocationRatio, MAX_QUANTITY, STANDARD_CLASSES};
pub use spec::{
    ClusterSpec, HostSpec, InventorySpec, ProviderSpec, ServerGroupPolicy, ServerGroupSpec,
    SharedProviderSpec, Taint, TaintEffect,
};
