//! The crate's error type: what went wrong, naming the consumer, host, class or version at fault.

use scheduling::{Explanation, ModelError, PlacementRequestError, PlacementStateError};
use std::sync::Arc;

/// Why an operation of the PostgreSQL store failed. Nothing was written unless it says so.
#[derive(Debug, thiserror::Error, Clone)]
pub enum PgStoreError {
    /// The connection string does not parse.
    #[error("invalid PostgreSQL connection string: {0}")]
    ConnectionString(#[source] Arc<postgres::Error>),
    /// No connection could be made (or kept) to the database.
    #[error("cannot reach PostgreSQL at {target}: {source}")]
    Unreachable {
        /// Where (the hosts or socket directories, and the database).
        target: String,
        /// The driver's error.
        #[source]
        source: Arc<postgres::Error>,
    },
    /// The database holds no Keel placement schema, or another version than this build's.
    #[error("{found}; this build of Keel uses schema version {expected}{hint}")]
    SchemaVersion {
        /// What was found (`schema version 7`, `no Keel placement schema`).
        found: String,
        /// The version this build uses.
        expected: i32,
        /// What to do.
        hint: &'static str,
    },
    /// No cluster has been loaded into the database.
    #[error("no cluster is loaded in the database: load one first (`keel-placement load FILE`)")]
    NoCluster,
    /// A cluster is loaded already and may not be replaced.
    #[error(
        "a cluster is loaded already ({consumers} VM(s) allocated on it): replacing it needs \
         `--replace` and no allocations"
    )]
    ClusterLoaded {
        /// Allocations held on it.
        consumers: i64,
    },
    /// The cluster given (or stored) is invalid (shown as the [`ModelError`] itself).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The request is invalid, e.g. names a resource class no host offers.
    #[error(transparent)]
    Request(#[from] PlacementRequestError),
    /// No host can take the request, with the reasons.
    #[error("{}", .0.summary)]
    Unschedulable(Box<Explanation>),
    /// The consumer already holds an allocation.
    #[error("consumer `{0}` already holds an allocation")]
    DuplicateConsumer(String),
    /// The consumer holds no allocation.
    #[error("unknown consumer `{0}`")]
    UnknownConsumer(String),
    /// No host of that name.
    #[error("unknown host `{0}`")]
    UnknownHost(String),
    /// A quota names a resource class the loaded cluster does not have.
    #[error("quota of {scope}: unknown resource class `{class}` (the loaded cluster has no such inventory)")]
    UnknownQuotaClass {
        /// The quota's scope (`project `web``, `user `ann` of project `web``).
        scope: String,
        /// The class.
        class: String,
    },
    /// A quota would be exceeded; the message names scope, class, limit, usage and request.
    #[error("{0}")]
    QuotaExceeded(String),
    /// A server group exists with another definition.
    #[error("{0}")]
    ServerGroup(String),
    /// Every attempt conflicted with another decider's commits.
    #[error("gave up after {attempts} conflicting commits; the last: {last}")]
    Conflicts {
        /// Attempts made.
        attempts: u32,
        /// The last conflict.
        last: String,
    },
    /// The database refused a statement.
    #[error("PostgreSQL refused {what}: {source}")]
    Database {
        /// What was being done.
        what: &'static str,
        /// The driver's error (with the SQLSTATE).
        #[source]
        source: Arc<postgres::Error>,
    },
    /// Stored data that does not decode (written by another version, or by hand).
    #[error("stored {what} does not decode: {source}")]
    Decode {
        /// What was read.
        what: String,
        /// The decoder's error.
        #[source]
        source: Arc<serde_json::Error>,
    },
    /// A bookkeeping operation on the replica was refused (an invalid quota, a server group).
    #[error(transparent)]
    State(#[from] PlacementStateError),
    /// The replica (or the database's own tables) do not add up; the replica is rebuilt from the
    /// database when this happens while deciding.
    #[error("the replica is out of step with the database: {0}")]
    OutOfStep(String),
    /// The store's committer thread has stopped.
    #[error("the placement store has stopped")]
    Stopped,
}

impl PgStoreError {
    pub(crate) fn db(what: &'static str) -> impl FnOnce(postgres::Error) -> PgStoreError {
        move |e| PgStoreError::Database {
            what,
            source: Arc::new(e),
        }
    }

    /// Whether this is a lost or refused connection (as opposed to a refused request).
    pub fn is_connection(&self) -> bool {
        match self {
            PgStoreError::Unreachable { .. } => true,
            PgStoreError::Database { source, .. } => is_connection_error(source),
            _ => false,
        }
    }
}

/// A driver error that means the connection is gone or the server is going away (or not yet
/// back), rather than a statement refused.
pub(crate) fn is_connection_error(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        // No SQLSTATE: an I/O or protocol error.
        None => e.as_db_error().is_none(),
        // Class 08 (connection exception), 57P01-57P05 (shutdown, crash, cannot connect now).
        Some(code) => {
            let c = code.code();
            c.starts_with("08") || c.starts_with("57P")
        }
    }
}
