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
