//! Following the database's changes: reading the change rows committed since the last look.
//!
//! Why a change table rather than LISTEN/NOTIFY: a notification sent while a decider is
//! disconnected is lost, while a row stays; and PostgreSQL serialises committing transactions
//! that NOTIFY on one lock held through the WAL flush, which would undo group commit, the thing
//! that makes durable commits cheap. A decider instead reads the table every few milliseconds
//! when idle, and before every batch it decides, with one indexed query.
//!
//! Which rows to read: sequence numbers are taken before commit, so a row with a smaller number
//! can become visible after one with a larger number; reading "above the largest number seen"
//! would miss it. Each row carries its transaction id instead, and each read records its
//! snapshot's `xmin` (every transaction below it had ended). The next read takes every row whose
//! xid is at least that `xmin`, less the rows it has already seen: a transaction that had ended
//! before the previous read was visible to it, so nothing is missed, and the window is only the
//! transactions in flight at the previous read.

use crate::error::PgStoreError;
use crate::replica::{ChangeItem, Replica};
use postgres::types::Json;
use postgres::Client;
use std::sync::RwLock;

/// The read (prepared once per connection with the commit's statements).
pub(crate) const READ: &str = "WITH s AS (SELECT pg_current_snapshot() AS snap)
             SELECT pg_snapshot_xmin(s.snap)::text::bigint, c.seq, c.xid::text::bigint, c.items
               FROM s LEFT JOIN keel_changes c
                 ON c.xid >= $1::bigint::text::xid8 AND c.seq <> ALL($2::bigint[])
              ORDER BY c.seq";

/// How long a change may wait for an earlier one before the replica is rebuilt.
const STALL_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads the changes committed since the last read and applies them to `replica`. Returns how
/// many change rows were new.
pub(crate) fn poll(
    client: &mut Client,
    stmt: &postgres::Statement,
    replica: &RwLock<Replica>,
) -> Result<usize, PgStoreError> {
    let (floor, seen): (i64, Vec<i64>) = {
        let r = replica.read().unwrap_or_else(|e| e.into_inner());
        (r.floor, r.seen.iter().map(|s| s.0).collect())
    };
    let rows = client
        .query(stmt, &[&floor, &seen])
        .map_err(PgStoreError::db("reading the change feed"))?;
    let mut xmin = floor;
    let mut new = Vec::with_capacity(rows.len());
    for row in &rows {
        xmin = row.get(0);
        let seq: Option<i64> = row.get(1);
        let Some(seq) = seq else {
            continue;
        };
        let xid: i64 = row.get(2);
        let Json(items): Json<Vec<ChangeItem>> = row
            .try_get(3)
            .map_err(|e| PgStoreError::OutOfStep(format!("change {seq} does not decode: {e}")))?;
        new.push((seq, xid, items));
    }
    let mut r = replica.write().unwrap_or_else(|e| e.into_inner());
    let count = new.len();
    for (seq, xid, items) in new {
        for item in items {
            r.offer(item)?;
        }
        r.seen.push((seq, xid));
    }
    r.flush()?;
    r.floor = xmin;
    r.seen.retain(|&(_, xid)| xid >= xmin);
    r.check_stalled(STALL_LIMIT)?;
    Ok(count)
}
