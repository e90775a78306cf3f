//! Dense ids: what the hot path compares and indexes arrays with.
//!
//! Every id is a plain integer behind a `#[repr(transparent)]`, `Copy` newtype, so it costs nothing
//! at run time while keeping a host from being mistaken for a slot. Ids are only meaningful for the
//! [`Cluster`](crate::model::Cluster) they came from, and embedders never make them from integers:
//! they get them from the cluster (by name, or by iterating) and from the state. Names are what
//! crosses process boundaries (see [`crate::Placement`]); ids never need to be persisted.

macro_rules! dense_id {
    ($(#[$doc:meta])* $name:ident($raw:ty)) => {
        $(#[$doc])*
        #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(transparent)]
        pub struct $name($raw);

        impl $name {
            /// The id at dense position `i`.
            #[inline]
            #[allow(dead_code)]
            pub(crate) const fn new(i: usize) -> Self {
                Self(i as $raw)
            }

            /// The dense position, to index arrays.
            #[inline]
            #[allow(dead_code)]
            pub(crate) const fn idx(self) -> usize {
                self.0 as usize
            }

            /// The raw integer (for packing into caches and codes).
            #[inline]
            #[allow(dead_code)]
            pub(crate) const fn raw(self) -> $raw {
                self.0
            }
        }
    };
}

dense_id! {
    /// A host (the root of a provider tree). Hosts are numbered densely from 0 in the order the
    /// cluster lists them; hosts added at run time get the next numbers, and no host is ever removed
    /// (a retired host keeps its id), so [`HostId::index`] is stable for the life of a state.
    HostId(u32)
}

impl HostId {
    /// The host's dense position (`0..cluster.host_count()`), for embedders keeping per-host arrays.
    ///
    /// ```
    /// let c = scheduling::Cluster::from_json(r#"{"hosts": [
    ///   {"name": "a", "inventories": {"VCPU": {"total": 4}}},
    ///   {"name": "b", "inventories": {"VCPU": {"total": 4}}}]}"#).unwrap();
    /// assert_eq!(c.host_id("b").unwrap().index(), 1);
    /// assert_eq!(c.host_ids().map(|h| h.index()).collect::<Vec<_>>(), [0, 1]);
    /// ```
    #[inline]
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

dense_id! {
    /// A resource provider: a host's tree providers (root, NUMA nodes, devices), then shared providers.
    ProviderId(u32)
}

dense_id! {
    /// An inventory slot: one provider's stock of one resource class.
    SlotId(u32)
}

dense_id! {
    /// A generation owner: a host's whole provider tree, or one shared provider. Each has a generation
    /// bumped on every change, which a [`crate::Claim`] checks at commit (optimistic concurrency).
    OwnerId(u32)
}

impl OwnerId {
    /// The owner's dense position (`0..cluster.owner_count()`: hosts in host order, then shared
    /// providers), for stores keeping a generation per owner.
    ///
    /// ```
    /// let c = scheduling::Cluster::from_json(r#"{"hosts": [
    ///   {"name": "a", "inventories": {"VCPU": {"total": 4}}}]}"#).unwrap();
    /// let owner = c.host_owner(c.host_id("a").unwrap());
    /// assert_eq!((owner.index(), c.owner_name(owner)), (0, "a"));
    /// ```
    #[inline]
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

dense_id! {
    /// A trait name (`HW_CPU_X86_AVX2`, `CUSTOM_*`, ...).
    TraitId(u32)
}

dense_id! {
    /// A resource class (`VCPU`, `MEMORY_MB`, `CUSTOM_*`, ...).
    ClassId(u16)
}

dense_id! {
    /// An availability zone.
    ZoneId(u32)
}

dense_id! {
    /// A rack (or other failure domain below the zone).
    RackId(u32)
}

dense_id! {
    /// A host aggregate.
    AggregateId(u32)
}

dense_id! {
    /// A server group of a [`crate::State`].
    ServerGroupId(u32)
}

/// An amount of one inventory slot, as allocated by a claim or an allocation.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct SlotAllocation {
    slot: SlotId,
    amount: u64,
}

impl SlotAllocation {
    #[inline]
    pub(crate) const fn new(slot: SlotId, amount: u64) -> Self {
        Self { slot, amount }
    }

    /// The inventory slot (see [`crate::Cluster::slot`]).
    #[inline]
    pub const fn slot(self) -> SlotId {
        self.slot
    }

    /// The amount allocated.
    #[inline]
    pub const fn amount(self) -> u64 {
        self.amount
    }
}

/// The generation of one owner (host tree or shared provider) as a decision saw it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct OwnerGeneration {
    owner: OwnerId,
    generation: u64,
}

impl OwnerGeneration {
    #[inline]
    pub(crate) const fn new(owner: OwnerId, generation: u64) -> Self {
        Self { owner, generation }
    }

    /// The owner (see [`crate::Cluster::owner_name`]).
    #[inline]
    pub const fn owner(self) -> OwnerId {
        self.owner
    }

    /// Its generation when the claim was decided.
    #[inline]
    pub const fn generation(self) -> u64 {
        self.generation
    }
}
