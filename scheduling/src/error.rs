//! Error types: what went wrong, naming the field and the reason.

use thiserror::Error;

/// A cluster description that cannot be loaded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ModelError {
    /// An inventory field has a value outside its allowed range.
    #[error("provider `{provider}`, inventory {class}: field `{field}` {reason}")]
    InvalidInventory {
        /// Provider holding the inventory.
        provider: String,
        /// Resource class of the inventory.
        class: String,
        /// Offending field (`total`, `reserved`, `allocation_ratio`, ...).
        field: &'static str,
        /// Why the value is rejected, including the value.
        reason: String,
    },
    /// A resource class that is neither standard nor declared as a custom class.
    #[error("provider `{provider}`: unknown resource class `{class}` (declare it in `custom_resource_classes`; custom names start with CUSTOM_)")]
    UnknownResourceClass {
        /// Provider that referenced it.
        provider: String,
        /// The class name.
        class: String,
    },
    /// A custom resource class with a bad name.
    #[error("custom resource class `{0}`: custom classes must match CUSTOM_[A-Z0-9_]+")]
    BadCustomClass(String),
    /// Two providers (or hosts) share a name.
    #[error("duplicate provider name `{0}`")]
    DuplicateProvider(String),
    /// A field that must not be empty is empty.
    #[error("{what}: field `{field}` must not be empty")]
    Empty {
        /// Which object.
        what: String,
        /// Which field.
        field: &'static str,
    },
    /// A server group definition is invalid.
    #[error("server group `{group}`: {reason}")]
    InvalidServerGroup {
        /// Group name.
        group: String,
        /// Why.
        reason: String,
    },
    /// The description could not be parsed.
    #[error("cannot parse cluster description: {0}")]
    Parse(String),
}

/// A placement request that is malformed or refers to things the cluster does not know.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// The request names a resource class the cluster does not know.
    #[error("request `{request}`: unknown resource class `{class}`")]
    UnknownResourceClass {
        /// Request id.
        request: String,
        /// The class.
        class: String,
    },
    /// An amount is zero or negative.
    #[error("request `{request}`: {class} amount must be > 0, got {amount}")]
    NonPositiveAmount {
        /// Request id.
        request: String,
        /// Class.
        class: String,
        /// Requested amount.
        amount: i64,
    },
    /// No inventory of that class anywhere accepts that much in one allocation.
    #[error("request `{request}`: {amount} {class} exceeds the largest max_unit in the cluster ({max_unit})")]
    ExceedsMaxUnit {
        /// Request id.
        request: String,
        /// Class.
        class: String,
        /// Requested amount.
        amount: u64,
        /// Largest `max_unit` of that class across all providers.
        max_unit: u64,
    },
    /// A request group name is referenced but not defined, or defined twice.
    #[error("request `{request}`: {reason}")]
    BadGroup {
        /// Request id.
        request: String,
        /// What is wrong.
        reason: String,
    },
    /// The request refers to a server group that does not exist.
    #[error("request `{request}`: unknown server group `{group}`")]
    UnknownServerGroup {
        /// Request id.
        request: String,
        /// Group name.
        group: String,
    },
    /// The request refers to a host that does not exist.
    #[error("unknown host `{0}`")]
    UnknownHost(String),
    /// The request is structurally invalid.
    #[error("request `{request}`: field `{field}` {reason}")]
    Invalid {
        /// Request id.
        request: String,
        /// Field.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

/// Why a claim could not be committed. The state is unchanged whenever one of these is returned.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CommitError {
    /// Another decider changed a provider this claim uses since it was decided (optimistic concurrency).
    #[error("generation conflict on provider tree `{owner}`: expected {expected}, found {found}")]
    GenerationConflict {
        /// Host or shared provider name.
        owner: String,
        /// Generation the decision saw.
        expected: u64,
        /// Generation now.
        found: u64,
    },
    /// The server group's membership changed since the decision (affinity or spread may no longer hold).
    #[error("server group `{0}` changed since the decision")]
    GroupChanged(String),
    /// A consumer with that id already holds an allocation.
    #[error("consumer `{0}` already has an allocation")]
    DuplicateConsumer(String),
    /// The claim would exceed an inventory's capacity.
    #[error("claim exceeds capacity of {class} on `{provider}`")]
    OverCapacity {
        /// Provider.
        provider: String,
        /// Class.
        class: String,
    },
    /// The host is disabled (failed or in maintenance).
    #[error("host `{0}` is disabled")]
    HostDisabled(String),
    /// A slot index in the claim does not belong to the cluster.
    #[error("claim refers to an unknown inventory slot {0}")]
    UnknownSlot(u32),
    /// A permit plugin rejected the claim.
    #[error("permit plugin `{plugin}` rejected: {reason}")]
    Denied {
        /// Plugin name.
        plugin: &'static str,
        /// Reason.
        reason: String,
    },
}

/// Errors of the bookkeeping operations (release, resize, migrate, ...).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StateError {
    /// No allocation for that consumer.
    #[error("unknown consumer `{0}`")]
    UnknownConsumer(String),
    /// No host with that name.
    #[error("unknown host `{0}`")]
    UnknownHost(String),
    /// Server group already exists.
    #[error("server group `{0}` already exists")]
    DuplicateServerGroup(String),
    /// The host still holds allocations.
    #[error("host `{host}` still holds {vms} VM(s): release or evacuate them first")]
    HostInUse {
        /// Host name.
        host: String,
        /// VMs on it.
        vms: u32,
    },
    /// Invalid server group.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Commit failure.
    #[error(transparent)]
    Commit(#[from] CommitError),
}
