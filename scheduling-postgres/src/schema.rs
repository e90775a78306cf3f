//! Versioned schema migrations: each version is one SQL file under `sql/`, applied in order in a
//! transaction of its own, with the version recorded in `keel_schema`.
//!
//! [`migrate`] brings a database up to this build's [`SCHEMA_VERSION`] (several processes may run
//! it at once: an advisory lock serialises them) and refuses a database at a newer version.
//! Everything else checks the version with [`check_version`] and refuses any other, naming both.

use crate::error::PgStoreError;
use postgres::Client;

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: i32 = 1;

/// The migrations, by the version they bring the schema to.
const MIGRATIONS: &[(i32, &str)] = &[(1, include_str!("../sql/001_schema.sql"))];

/// Key of the advisory lock held while migrating.
const MIGRATION_LOCK: i64 = 0x6b65_656c_7067; // "keelpg"

/// The schema version recorded in the database, `None` when it has no Keel schema.
pub fn version(client: &mut Client) -> Result<Option<i32>, PgStoreError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('keel_schema') IS NOT NULL", &[])
        .map_err(PgStoreError::db("reading the schema version"))?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let row = client
        .query_opt("SELECT version FROM keel_schema", &[])
        .map_err(PgStoreError::db("reading the schema version"))?;
    Ok(row.map(|r| r.get(0)))
}

/// Refuses a database whose schema is not this build's.
pub fn check_version(client: &mut Client) -> Result<(), PgStoreError> {
    match version(client)? {
        Some(SCHEMA_VERSION) => Ok(()),
        Some(v) if v > SCHEMA_VERSION => Err(PgStoreError::SchemaVersion {
            found: format!("the database has Keel placement schema version {v}"),
            expected: SCHEMA_VERSION,
            hint: ": it was written by a newer Keel; use that one",
        }),
        Some(v) => Err(PgStoreError::SchemaVersion {
            found: format!("the database has Keel placement schema version {v}"),
            expected: SCHEMA_VERSION,
            hint: ": upgrade it with `keel-placement init`",
        }),
        None => Err(PgStoreError::SchemaVersion {
            found: "the database has no Keel placement schema".into(),
            expected: SCHEMA_VERSION,
            hint: ": create it with `keel-placement init`",
        }),
    }
}

/// Applies the migrations the database lacks; returns the version it had before (0 for none).
pub fn migrate(client: &mut Client) -> Result<i32, PgStoreError> {
    let mut tx = client
        .transaction()
        .map_err(PgStoreError::db("starting the migration"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(PgStoreError::db("locking for the migration"))?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS keel_schema (version integer NOT NULL)")
        .map_err(PgStoreError::db("creating keel_schema"))?;
    let before: i32 = match tx
        .query_opt("SELECT version FROM keel_schema", &[])
        .map_err(PgStoreError::db("reading the schema version"))?
    {
        Some(row) => row.get(0),
        None => {
            tx.execute("INSERT INTO keel_schema VALUES (0)", &[])
                .map_err(PgStoreError::db("recording the schema version"))?;
            0
        }
    };
    if before > SCHEMA_VERSION {
        return Err(PgStoreError::SchemaVersion {
            found: format!("the database has Keel placement schema version {before}"),
            expected: SCHEMA_VERSION,
            hint: ": it was written by a newer Keel; use that one",
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > before) {
        log::info!("applying Keel placement schema migration {version}");
        tx.batch_execute(sql)
            .map_err(PgStoreError::db("applying a schema migration"))?;
        tx.execute("UPDATE keel_schema SET version = $1", &[version])
            .map_err(PgStoreError::db("recording the schema version"))?;
    }
    tx.commit()
        .map_err(PgStoreError::db("committing the migration"))?;
    Ok(before)
}
