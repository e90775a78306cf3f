//! Error types: what went wrong, naming the field and the reason.
//!
//! Names are distinct from those of Keel's other crates (`vmm_core::StateError`,
//! `devices::...::RequestError`), so an embedder can import them side by side. Where an error has a
//! cause (a parser's error, a failed commit inside a bookkeeping operation), it is kept as the
//! error's [`source`](std::error::Error::source).

use std::sync::Arc;
use thiserror::Error;

/// A parser's (JSON or YAML) or reader's error, kept as the source of [`ModelError::Parse`] and
/// [`ModelError::Io`]. Cheap to clone; compares by message.
#[derive(Debug, Clone)]
pub struct ParseError(Arc<dyn std::error::Error + Send + Sync + 'static>);

impl ParseError {
    pub(crate) fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        ParseError(Arc::new(e))
    }

    /// The parser's own error (`serde_json::Error`, or the YAML parser's), to downcast.
    pub fn get_ref(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ParseError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for ParseError {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_string() == other.0.to_string()
    }
}

impl Eq for ParseError {}

fn at(line: Option<u64>, column: Option<u64>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" at line {l}, column {c}"),
        (Some(l), None) => format!(" at line {l}"),
        _ => String::new(),
    }
}

/// A value's text form is not one the type knows (see the `FromStr` implementations of
/// [`crate::Policy`], [`crate::model::TaintEffect`], [`crate::model::Taint`],
/// [`crate::request::Toleration`], ...).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("invalid {kind} `{value}`: {reason}")]
pub struct ParseTextError {
    /// What was being parsed (`policy`, `taint`, ...).
    pub kind: &'static str,
    /// The text given.
    pub value: String,
    /// Why it is refused (for enums: the values accepted).
    pub reason: String,
}

/// `FromStr` and `Display` for a serde enum of unit variants, spelled as serde spells them.
macro_rules! text_enum {
    ($($ty:ty => $kind:literal),* $(,)?) => {$(
        impl std::str::FromStr for $ty {
            type Err = $crate::error::ParseTextError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                serde_plain::from_str(s).map_err(|e| $crate::error::ParseTextError {
                    kind: $kind,
                    value: s.to_string(),
                    reason: e.to_string(),
                })
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match serde_plain::to_string(self) {
                    Ok(s) => f.write_str(&s),
                    Err(_) => std::fmt::Debug::fmt(self, f),
                }
            }
        }
    )*};
}
pub(crate) use text_enum;

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
    /// A provider tree nests deeper than the model allows.
    #[error("provider `{provider}`: children nest deeper than {max_depth} levels")]
    TreeTooDeep {
        /// The provider whose children are too deep.
        provider: String,
        /// Deepest nesting allowed.
        max_depth: usize,
    },
    /// The document could not be parsed (syntax, a duplicate key, or a shape the serde types do not
    /// accept).
    #[error("cannot parse {what} ({format}){}: {source}", at(*.line, *.column))]
    Parse {
        /// What was being parsed: `cluster description`, `placement request`, `request stream`, ...,
        /// followed by the file's path when it was read from a file.
        what: String,
        /// `JSON` or `YAML`.
        format: &'static str,
        /// 1-based line of the error, when the parser knows it.
        line: Option<u64>,
        /// 1-based column of the error, when the parser knows it.
        column: Option<u64>,
        /// The parser's error.
        #[source]
        source: ParseError,
    },
    /// The document is larger than a limit of [`crate::load::Limits`] allows.
    #[error("{what} ({format}): {found} exceeds the limit `{limit}` of {max}; raise it in scheduling::load::Limits")]
    DocumentTooLarge {
        /// What was being parsed (as in [`ModelError::Parse`]).
        what: String,
        /// `JSON` or `YAML`.
        format: &'static str,
        /// The limit's field in [`crate::load::Limits`].
        limit: &'static str,
        /// Its value.
        max: u64,
        /// What was found (`52428800 bytes`, `more YAML nodes`, ...).
        found: String,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: ParseError,
    },
    /// A quantity (an inventory field, a capacity after the allocation ratio, or a host's capacity
    /// summed over its provider tree) is larger than the model accepts.
    #[error("provider `{provider}`, inventory {class}: {field} = {value} exceeds the largest quantity the model accepts ({limit}, scheduling::model::MAX_QUANTITY)")]
    QuantityTooLarge {
        /// Provider (or host, for a tree's sum).
        provider: String,
        /// Resource class.
        class: String,
        /// What is too large: `total`, `capacity ((total - reserved) × allocation_ratio)`, ...
        field: &'static str,
        /// The value (exact: computed in 128 bits).
        value: u128,
        /// The limit ([`crate::model::MAX_QUANTITY`]).
        limit: u64,
    },
    /// The document's format is not compiled in.
    #[error("{format} input needs the `{feature}` feature of the scheduling crate")]
    FormatUnavailable {
        /// The format.
        format: &'static str,
        /// The cargo feature that enables it.
        feature: &'static str,
    },
}

/// A placement request that is malformed or refers to things the cluster does not know.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PlacementRequestError {
    /// The request names a resource class the cluster does not know.
    #[error("request `{request}`: unknown resource class `{class}`")]
    UnknownResourceClass {
        /// Request id.
        request: String,
        /// The class.
        class: String,
    },
    /// No provider of the cluster has an inventory of the class.
    #[error("request `{request}`: no host offers {class} (no provider has an inventory of it)")]
    NotOffered {
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
    #[error("request `{request}`: unknown server group `{group}` (create it first: State::create_server_group, State::ensure_server_group, or a stream's `server_groups`)")]
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
    /// An inventory slot in the claim is not in the cluster or not within reach of the claim's host.
    #[error("claim refers to inventory slot {0:?}, unknown or out of the host's reach")]
    UnknownSlot(crate::model::SlotId),
    /// A generation owner in the claim does not belong to the cluster.
    #[error("claim refers to an unknown generation owner {0:?}")]
    UnknownOwner(crate::model::OwnerId),
    /// The claim would take a project's or user's usage past a quota (see
    /// [`crate::State::set_quota`]).
    #[error(
        "quota of {scope} exceeded: {class} limit {limit}, used {used}, requested {requested}"
    )]
    QuotaExceeded {
        /// `project `p`` or `user `u` of project `p``.
        scope: String,
        /// `instances`, or the resource class.
        class: String,
        /// The limit.
        limit: u64,
        /// Used before this claim.
        used: u64,
        /// What the claim asks for.
        requested: u64,
    },
    /// A permit plugin rejected the claim.
    #[error("permit plugin `{plugin}` rejected: {reason}")]
    Denied {
        /// Plugin name.
        plugin: &'static str,
        /// Reason.
        reason: String,
    },
}

/// Errors of the bookkeeping operations on a [`crate::State`] (release, migrate, server groups,
/// hosts added or retired).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PlacementStateError {
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
    /// An invalid server group or host description (shown as the [`ModelError`] itself).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The new allocation could not be committed (shown as the [`CommitError`] itself).
    #[error(transparent)]
    Commit(#[from] CommitError),
}

/// Why an operation of [`crate::store::MemoryStore`] failed. Nothing changed.
#[derive(Debug, Error, Clone)]
pub enum MemoryStoreError {
    /// The placement failed: invalid request, nothing fits, or the commit was refused (shown as
    /// the [`crate::PlaceError`] itself).
    #[error(transparent)]
    Place(#[from] crate::PlaceError),
    /// A bookkeeping operation failed, e.g. releasing an unknown consumer (shown as the
    /// [`PlacementStateError`] itself).
    #[error(transparent)]
    State(#[from] PlacementStateError),
}

/// Why [`crate::State::restore`] or [`crate::State::import`] refused a list of placements. Nothing
/// of the list was applied.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RestoreError {
    /// The placement's request is invalid against this cluster.
    #[error("placement `{consumer}`: invalid request: {source}")]
    Request {
        /// Consumer id of the placement.
        consumer: String,
        /// Why.
        #[source]
        source: PlacementRequestError,
    },
    /// The server group a placement records conflicts with the state's group of that name.
    #[error("placement `{consumer}`: server group `{group}`: {reason}")]
    ServerGroupConflict {
        /// Consumer id.
        consumer: String,
        /// The group.
        group: String,
        /// Why.
        reason: String,
    },
    /// The placement's consumer differs from its request's id.
    #[error("placement `{consumer}`: its request is for `{request}`")]
    ConsumerMismatch {
        /// Consumer id of the placement.
        consumer: String,
        /// Id of its request.
        request: String,
    },
    /// The consumer already holds an allocation (in the state, or earlier in the list).
    #[error("placement `{0}`: consumer already has an allocation")]
    DuplicateConsumer(String),
    /// The host is not in the cluster.
    #[error("placement `{consumer}`: unknown host `{host}`")]
    UnknownHost {
        /// Consumer id.
        consumer: String,
        /// The host named.
        host: String,
    },
    /// The host was retired (see [`crate::State::retire_host`]).
    #[error("placement `{consumer}`: host `{host}` is retired")]
    HostRetired {
        /// Consumer id.
        consumer: String,
        /// The host named.
        host: String,
    },
    /// The provider is not in the cluster.
    #[error("placement `{consumer}`: unknown provider `{provider}`")]
    UnknownProvider {
        /// Consumer id.
        consumer: String,
        /// The provider named.
        provider: String,
    },
    /// The provider is neither in the host's tree nor a shared provider the host draws on.
    #[error("placement `{consumer}`: provider `{provider}` is out of reach of host `{host}`")]
    ProviderNotOnHost {
        /// Consumer id.
        consumer: String,
        /// The provider.
        provider: String,
        /// The placement's host.
        host: String,
    },
    /// The provider has no inventory of the class.
    #[error("placement `{consumer}`: provider `{provider}` has no {class} inventory")]
    NoInventory {
        /// Consumer id.
        consumer: String,
        /// The provider.
        provider: String,
        /// The class named (possibly unknown to the cluster).
        class: String,
    },
    /// The amount breaks the inventory's min_unit, max_unit or step_size.
    #[error("placement `{consumer}`: {amount} {class} on `{provider}` breaks its min_unit/max_unit/step_size")]
    UnitConstraint {
        /// Consumer id.
        consumer: String,
        /// The provider.
        provider: String,
        /// The class.
        class: String,
        /// The amount.
        amount: u64,
    },
    /// The amount does not fit in what is left of the inventory.
    #[error("placement `{consumer}`: {amount} {class} on `{provider}` exceeds the {free} left of its capacity {capacity}")]
    OverCapacity {
        /// Consumer id.
        consumer: String,
        /// The provider.
        provider: String,
        /// The class.
        class: String,
        /// The amount.
        amount: u64,
        /// What was left when this placement was reached.
        free: u64,
        /// The inventory's capacity.
        capacity: u64,
    },
    /// The resources placed are not what the request asks for.
    #[error(
        "placement `{consumer}`: {class} placed {placed}, but the request asks for {requested}"
    )]
    ResourcesMismatch {
        /// Consumer id.
        consumer: String,
        /// The class.
        class: String,
        /// Total placed.
        placed: u64,
        /// Total requested.
        requested: u64,
    },
}
