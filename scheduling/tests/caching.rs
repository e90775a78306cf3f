//! Seeded determinism, and the caches (equivalence-class pre-filter cache, negative cache, fit memo)
//! never serve a stale answer.

use scheduling::generator::{self, ClusterShape};
use scheduling::model::{ServerGroupPolicy, ServerGroupSpec};
use scheduling::{Cluster, PlacementRequest, Placer, Policy, Profile};
use std::sync::Arc;

fn placer(seed: u64, policy: Policy) -> Placer {
    let spec = generator::cluster(ClusterShape::new(150, 3));
    Placer::new(
        Arc::new(Cluster::from_spec(&spec).unwrap()),
        Profile::for_policy(policy),
        seed,
    )
}

fn hosts_of(p: &mut Placer, n: usize) -> Vec<String> {
    generator::mixed(n, 4, "d")
        .requests
        .iter()
        .map(|r| p.place(r).map(|x| x.host).unwrap_or_default())
        .collect()
}

#[test]
fn same_seed_same_placements_other_seed_differs() {
    for policy in [Policy::Spread, Policy::Pack] {
        let a = hosts_of(&mut placer(5, policy), 300);
        let b = hosts_of(&mut placer(5, policy), 300);
        let c = hosts_of(&mut placer(6, policy), 300);
        assert_eq!(a, b, "{policy:?}");
        assert_ne!(a, c, "{policy:?}");
    }
}

#[test]
fn identical_requests_reuse_the_prefilter_cache() {
    let mut p = placer(1, Policy::Spread);
    for r in generator::homogeneous(50, "h").requests {
        p.place(&r).unwrap();
    }
    let s = p.scheduler().stats();
    assert_eq!(s.decisions, 50);
    assert_eq!(s.prefilter_cache_hits, 49);
}

#[test]
fn negative_cache_is_dropped_when_capacity_is_freed() {
    let json = r#"{"hosts": [{"name": "a", "inventories": {"VCPU": {"total": 4}}}]}"#;
    let mut p = Placer::new(
        Arc::new(Cluster::from_json(json).unwrap()),
        Profile::default(),
        1,
    );
    p.place(&PlacementRequest::new("x", &[("VCPU", 3)]))
        .unwrap();
    let want = |id: &str| PlacementRequest::new(id, &[("VCPU", 2)]);
    assert!(p.place(&want("y1")).is_err());
    assert!(p.place(&want("y2")).is_err());
    assert_eq!(p.scheduler().stats().negative_cache_hits, 1);
    p.state_mut().release("x").unwrap();
    assert_eq!(p.place(&want("y3")).unwrap().host, "a");
    // The fit memo of the 2-vCPU shape was reset as well: a second one fits too.
    assert_eq!(p.place(&want("y4")).unwrap().host, "a");
    assert!(p.place(&want("y5")).is_err());
}

#[test]
fn negative_cache_respects_server_group_changes() {
    let json = r#"{"hosts": [
        {"name": "a", "inventories": {"VCPU": {"total": 4}}},
        {"name": "b", "inventories": {"VCPU": {"total": 4}}}]}"#;
    let mut p = Placer::new(
        Arc::new(Cluster::from_json(json).unwrap()),
        Profile::default(),
        1,
    );
    let g = ServerGroupSpec {
        name: "g".into(),
        policy: ServerGroupPolicy::Affinity,
        max_per_host: None,
    };
    p.state_mut().create_server_group(g).unwrap();
    p.place(&PlacementRequest::new("fill-a", &[("VCPU", 3)]))
        .unwrap();
    let member = |id: &str, v: i64| {
        let mut r = PlacementRequest::new(id, &[("VCPU", v)]);
        r.server_group = Some("g".into());
        r
    };
    // First member lands on the free host; a second 2-vCPU member must follow it and does not fit.
    let first = p.place(&member("m1", 2)).unwrap().host;
    assert_ne!(
        first,
        p.state()
            .cluster()
            .host(p.state().allocation("fill-a").unwrap().host())
            .name
    );
    assert!(p.place(&member("m2", 3)).is_err());
    // Removing the member changes the group: now any host with room qualifies.
    p.state_mut().release("m1").unwrap();
    assert!(p.place(&member("m3", 3)).is_ok());
}
