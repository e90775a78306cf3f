//! Bad input, through the library and through `keel-placement`: a malformed or invalid cluster
//! file, a request for a resource class no host has, a release of an unknown consumer, a quota on
//! an unknown class, an unreachable database, a database without the schema or at another schema
//! version. Each is refused with an error naming what is wrong, and the database's tables are
//! exactly as before (no partial write).

mod common;

use scheduling::PlacementRequest;
use scheduling_postgres::{load_cluster, PgStore, PgStoreError, StoreConfig};

/// Row counts of every table: equal before and after a refused operation means nothing was written.
fn tables(db: &str) -> Vec<(&'static str, i64, i64)> {
    let mut c = postgres::Client::connect(db, postgres::NoTls).expect("connect");
    [
        "keel_cluster",
        "keel_owners",
        "keel_providers",
        "keel_inventories",
        "keel_server_groups",
        "keel_consumers",
        "keel_allocations",
        "keel_quotas",
        "keel_changes",
    ]
    .into_iter()
    .map(|t| {
        let row = c
            .query_one(
                &format!("SELECT count(*), coalesce(sum(hashtext(x::text)), 0)::bigint FROM {t} x"),
                &[],
            )
            .expect("count");
        (t, row.get(0), row.get(1))
    })
    .collect()
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = common::program()
        .args(args)
        .output()
        .expect("run keel-placement");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_malformed_or_invalid_cluster_file_is_refused_and_nothing_is_loaded() {
    let Some((_server, db)) = common::database("badcluster") else {
        return;
    };
    let dir = common::scratch("badcluster");
    let empty = tables(&db);

    let syntax = dir.join("syntax.json");
    std::fs::write(
        &syntax,
        r#"{"hosts": [{"name": "a", "inventories": {"VCPU": {"total": 4}}]}"#,
    )
    .unwrap();
    let (status, _, err) = run(&["--db", &db, "load", syntax.to_str().unwrap()]);
    assert_eq!(status, 2, "{err}");
    assert!(err.contains("syntax.json"), "the file is named: {err}");

    // Valid hosts first, then one with an unknown class: nothing of the file is written.
    let invalid = dir.join("invalid.yaml");
    std::fs::write(
        &invalid,
        "hosts:\n  - name: a\n    inventories: {VCPU: {total: 4}}\n  - name: b\n    inventories: {VCPUS: {total: 4}}\n",
    )
    .unwrap();
    let (status, _, err) = run(&["--db", &db, "load", invalid.to_str().unwrap()]);
    assert_eq!(status, 2, "{err}");
    assert!(
        err.contains("unknown resource class `VCPUS`") && err.contains("`b`"),
        "{err}"
    );

    let twice = common::flat_cluster(2, 4, 1024);
    let mut dup = twice.clone();
    dup.hosts[1].name = dup.hosts[0].name.clone();
    let e = load_cluster(&db, &dup, false).unwrap_err();
    assert_eq!(e.to_string(), "duplicate provider name `h0`");
    assert_eq!(tables(&db), empty, "a refused cluster writes nothing");

    // A cluster loaded, then another load without --replace: refused, the first one intact.
    load_cluster(&db, &twice, false).unwrap();
    let loaded = tables(&db);
    let e = load_cluster(&db, &common::flat_cluster(3, 4, 1024), false).unwrap_err();
    assert!(
        matches!(e, PgStoreError::ClusterLoaded { consumers: 0 }),
        "{e}"
    );
    assert_eq!(tables(&db), loaded);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn unknown_classes_and_consumers_are_refused_and_nothing_is_written() {
    let Some((_server, db)) = common::database("badrequests") else {
        return;
    };
    load_cluster(&db, &common::flat_cluster(2, 4, 1024), false).unwrap();
    let store = PgStore::connect(StoreConfig::new(&db)).unwrap();
    store
        .place(&PlacementRequest::new("kept", &[("VCPU", 1)]))
        .unwrap();
    let before = tables(&db);

    let e = store
        .place(&PlacementRequest::new(
            "vm-x",
            &[("VCPU", 1), ("CUSTOM_FPGA", 1)],
        ))
        .unwrap_err();
    assert!(matches!(e, PgStoreError::Request(_)), "{e}");
    assert!(
        e.to_string()
            .contains("unknown resource class `CUSTOM_FPGA`"),
        "{e}"
    );

    let e = store.release("nobody-has-this").unwrap_err();
    assert_eq!(e.to_string(), "unknown consumer `nobody-has-this`");
    let e = store.migrate("nobody-has-this").unwrap_err();
    assert_eq!(e.to_string(), "unknown consumer `nobody-has-this`");
    let e = store.evacuate("no-such-host").unwrap_err();
    assert!(e.to_string().contains("no-such-host"), "{e}");

    let e = store
        .set_quota(
            scheduling::state::QuotaScope::Project("web".into()),
            scheduling::state::QuotaLimits {
                instances: Some(3),
                resources: [("GPU".to_string(), 1)].into(),
            },
        )
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "quota of project `web`: unknown resource class `GPU` (the loaded cluster has no such inventory)"
    );

    // A request larger than any host: refused before deciding, with the reason.
    let e = store
        .place(&PlacementRequest::new("huge", &[("VCPU", 64)]))
        .unwrap_err();
    assert!(matches!(e, PgStoreError::Request(_)), "{e}");
    assert!(e.to_string().contains("64 VCPU exceeds"), "{e}");
    assert_eq!(tables(&db), before, "refused operations wrote nothing");

    // The same through the command: status 1, the reason printed, nothing written.
    let (status, out, err) = run(&["--db", &db, "release", "ghost"]);
    assert_eq!(status, 1, "{out}{err}");
    assert!(out.contains("ghost: unknown consumer `ghost`"), "{out}");
    assert_eq!(tables(&db), before);
}

#[test]
fn an_unreachable_database_is_named() {
    let e = PgStore::connect(StoreConfig::new(
        "host=/nonexistent/keel-socket-dir dbname=keel connect_timeout=2",
    ))
    .unwrap_err();
    assert!(matches!(e, PgStoreError::Unreachable { .. }), "{e}");
    assert!(
        e.to_string().starts_with(
            "cannot reach PostgreSQL at /nonexistent/keel-socket-dir (database `keel`)"
        ),
        "{e}"
    );
    let e = PgStore::connect(StoreConfig::new("host=/tmp port=notaport")).unwrap_err();
    assert!(matches!(e, PgStoreError::ConnectionString(_)), "{e}");
    assert!(
        e.to_string()
            .starts_with("invalid PostgreSQL connection string"),
        "{e}"
    );

    let (status, _, err) = run(&[
        "--db",
        "host=/nonexistent/keel-socket-dir dbname=keel",
        "usage",
    ]);
    assert_eq!(status, 2);
    assert!(
        err.contains("cannot reach PostgreSQL at /nonexistent/keel-socket-dir"),
        "{err}"
    );
    let (status, _, err) = common::program()
        .env_remove("KEEL_PLACEMENT_DB")
        .arg("usage")
        .output()
        .map(|o| {
            (
                o.status.code().unwrap_or(-1),
                (),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
        .unwrap();
    assert_eq!(status, 2);
    assert!(
        err.contains("no database given: pass --db or set KEEL_PLACEMENT_DB"),
        "{err}"
    );
}

#[test]
fn a_database_without_the_schema_or_at_another_version_is_refused() {
    let Some(server) = common::server() else {
        return;
    };
    let db = server.create_database("badschema").expect("createdb");

    let e = PgStore::connect(StoreConfig::new(&db)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "the database has no Keel placement schema; this build of Keel uses schema version 1: create it with `keel-placement init`"
    );
    let e = load_cluster(&db, &common::flat_cluster(1, 4, 1024), false).unwrap_err();
    assert!(matches!(e, PgStoreError::SchemaVersion { .. }), "{e}");

    scheduling_postgres::init(&db).unwrap();
    scheduling_postgres::init(&db).unwrap(); // idempotent
    let e = PgStore::connect(StoreConfig::new(&db)).unwrap_err();
    assert!(matches!(e, PgStoreError::NoCluster), "{e}");

    let mut c = postgres::Client::connect(&db, postgres::NoTls).unwrap();
    c.execute("UPDATE keel_schema SET version = 7", &[])
        .unwrap();
    let before = tables(&db);
    let e = PgStore::connect(StoreConfig::new(&db)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "the database has Keel placement schema version 7; this build of Keel uses schema version 1: it was written by a newer Keel; use that one"
    );
    let e = load_cluster(&db, &common::flat_cluster(1, 4, 1024), false).unwrap_err();
    assert!(e.to_string().contains("schema version 7"), "{e}");
    let e = scheduling_postgres::init(&db).unwrap_err();
    assert!(e.to_string().contains("schema version 7"), "{e}");
    let (status, _, err) = run(&["--db", &db, "usage"]);
    assert_eq!(status, 2);
    assert!(err.contains("schema version 7"), "{err}");
    assert_eq!(
        tables(&db),
        before,
        "nothing written to a database of another version"
    );
}
