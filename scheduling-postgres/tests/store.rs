//! One or two deciders on a real PostgreSQL: placing, releasing, moving, quotas, groups.

mod common;

use scheduling::PlacementRequest;
use scheduling_postgres::{load_cluster, PgStore, PgStoreError, StoreConfig};

#[test]
fn places_releases_and_sees_the_other_deciders_claims() {
    let Some((_server, db)) = common::database("basic") else {
        return;
    };
    load_cluster(&db, &common::flat_cluster(3, 4, 4096), false).unwrap();
    let a = PgStore::connect(StoreConfig::new(&db)).unwrap();
    let b = PgStore::connect(StoreConfig {
        seed: 1,
        ..StoreConfig::new(&db)
    })
    .unwrap();
    let placed = a
        .place(&PlacementRequest::new("vm-1", &[("VCPU", 4)]))
        .unwrap();
    b.sync().unwrap();
    assert_eq!(
        b.read(|s| s
            .allocation("vm-1")
            .map(|x| s.cluster().host(x.host()).name.clone())),
        Some(placed.host.clone())
    );
    let err = b
        .place(&PlacementRequest::new("vm-1", &[("VCPU", 1)]))
        .unwrap_err();
    assert!(matches!(err, PgStoreError::DuplicateConsumer(_)), "{err}");
    let freed = b.release("vm-1").unwrap();
    assert_eq!(freed.host, placed.host);
    let err = a.release("vm-1").unwrap_err();
    assert_eq!(err.to_string(), "unknown consumer `vm-1`");
    a.sync().unwrap();
    assert!(a.read(|s| s.allocations().is_empty()));
    assert!(a.read(|s| s.check_consistency().is_empty()));
}

/// The host `consumer` is on, as the database holds it.
fn host_in_db(db: &str, consumer: &str) -> Option<String> {
    let mut c = postgres::Client::connect(db, postgres::NoTls).unwrap();
    c.query_opt(
        "SELECT host FROM keel_consumers WHERE id = $1",
        &[&consumer],
    )
    .unwrap()
    .map(|r| r.get(0))
}

#[test]
fn moves_and_evacuations_commit_and_the_other_decider_follows() {
    let Some((_server, db)) = common::database("moves") else {
        return;
    };
    load_cluster(&db, &common::flat_cluster(3, 8, 8192), false).unwrap();
    let a = PgStore::connect(StoreConfig::new(&db)).unwrap();
    let b = PgStore::connect(StoreConfig {
        seed: 1,
        ..StoreConfig::new(&db)
    })
    .unwrap();
    for i in 0..4 {
        a.place(&PlacementRequest::new(format!("vm-{i}"), &[("VCPU", 2)]))
            .unwrap();
    }
    // A move by the other decider: a new host, the consumer's generation checked.
    b.sync().unwrap();
    let from = host_in_db(&db, "vm-0").unwrap();
    let moved = b.migrate("vm-0").unwrap();
    assert_ne!(moved.host, from);
    assert_eq!(host_in_db(&db, "vm-0"), Some(moved.host.clone()));
    a.sync().unwrap();
    let on_a = a.read(|s| {
        s.allocation("vm-0")
            .map(|x| s.cluster().host(x.host()).name.clone())
    });
    assert_eq!(on_a, Some(moved.host.clone()));

    // Evacuating a host: disabled, its VMs elsewhere, all in one transaction.
    let target = host_in_db(&db, "vm-1").unwrap();
    let plan = a.evacuate(&target).unwrap();
    assert!(plan.stranded.is_empty(), "{:?}", plan.stranded);
    assert!(!plan.moved.is_empty());
    for (consumer, host) in &plan.moved {
        assert_ne!(host, &target);
        assert_eq!(host_in_db(&db, consumer).as_deref(), Some(host.as_str()));
    }
    b.sync().unwrap();
    assert!(b.read(|s| s.vm_count(s.cluster().host_id(&target).unwrap())) == 0);
    // The disabled host takes nothing new, from either decider.
    for i in 10..16 {
        let p = b
            .place(&PlacementRequest::new(format!("vm-{i}"), &[("VCPU", 1)]))
            .unwrap();
        assert_ne!(p.host, target);
    }
    for s in [&a, &b] {
        s.sync().unwrap();
        assert!(s.read(|s| s.check_consistency().is_empty()));
        assert_eq!(s.read(|s| s.allocations().len()), 10);
    }
}

#[test]
fn quotas_and_anti_affinity_hold_across_deciders() {
    use scheduling::model::{ServerGroupPolicy, ServerGroupSpec};
    use scheduling::state::{QuotaLimits, QuotaScope};
    let Some((_server, db)) = common::database("rules") else {
        return;
    };
    load_cluster(&db, &common::flat_cluster(4, 64, 65536), false).unwrap();
    let a = PgStore::connect(StoreConfig::new(&db)).unwrap();
    let b = PgStore::connect(StoreConfig {
        seed: 1,
        ..StoreConfig::new(&db)
    })
    .unwrap();
    a.set_quota(
        QuotaScope::Project("web".into()),
        QuotaLimits {
            instances: Some(5),
            resources: [("VCPU".to_string(), 8)].into(),
        },
    )
    .unwrap();
    let group = ServerGroupSpec {
        name: "db".into(),
        policy: ServerGroupPolicy::AntiAffinity,
        max_per_host: None,
    };
    a.ensure_server_group(&group).unwrap();
    b.ensure_server_group(&group).unwrap();
    let conflicting = ServerGroupSpec {
        policy: ServerGroupPolicy::Affinity,
        ..group.clone()
    };
    let e = b.ensure_server_group(&conflicting).unwrap_err();
    assert!(e.to_string().contains("server group `db`"), "{e}");

    // Both deciders at once: the quota (8 VCPU, 5 VMs) and the group (one member per host, 4
    // hosts) hold whatever the interleaving.
    let results: Vec<Result<scheduling::Placement, PgStoreError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..12)
            .map(|i| {
                let store = if i % 2 == 0 { &a } else { &b };
                s.spawn(move || {
                    let mut r = PlacementRequest::new(format!("w{i}"), &[("VCPU", 1)]);
                    r.project = Some("web".into());
                    if i < 6 {
                        r.server_group = Some("db".into());
                    }
                    store.place(&r)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let placed: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(placed.len(), 5, "the instance quota: {results:?}");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(
            matches!(
                r,
                PgStoreError::QuotaExceeded(_) | PgStoreError::Unschedulable(_)
            ),
            "{r}"
        );
    }
    let mut group_hosts: Vec<&str> = placed
        .iter()
        .filter(|p| p.server_group.is_some())
        .map(|p| p.host.as_str())
        .collect();
    let members = group_hosts.len();
    group_hosts.sort_unstable();
    group_hosts.dedup();
    assert_eq!(group_hosts.len(), members, "anti-affinity: {placed:?}");
    let mut c = postgres::Client::connect(&db, postgres::NoTls).unwrap();
    let used: i64 = c
        .query_one(
            "SELECT used FROM keel_quotas WHERE project = 'web' AND class = 'instances'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(used, 5);
    // Releasing frees quota: one more fits.
    a.release(&placed[0].consumer).unwrap();
    let mut r = PlacementRequest::new("late", &[("VCPU", 1)]);
    r.project = Some("web".into());
    b.place(&r).unwrap();
}
