//! Hosts added and retired at run time: new capacity is used, ids stay valid, claims decided before a
//! change are refused, and every placement still passes the independent validator.

mod common;

use common::Validator;
use scheduling::model::{ClusterSpec, HostSpec, InventorySpec, ServerGroupPolicy, ServerGroupSpec};
use scheduling::request::{SpreadConstraint, TopologyKey, WhenUnsatisfiable};
use scheduling::{
    Cluster, CommitError, DecideOptions, PlaceError, PlacementRequest, PlacementStateError, Placer,
    Policy, Profile,
};
use std::sync::Arc;

const CLUSTER: &str = r#"{
  "custom_resource_classes": ["CUSTOM_SAN_GB"],
  "hosts": [
    {"name": "a", "zone": "z1", "aggregates": ["agg"],
     "inventories": {"VCPU": {"total": 4}, "MEMORY_MB": {"total": 4096}}},
    {"name": "b", "zone": "z1", "aggregates": ["agg"],
     "inventories": {"VCPU": {"total": 4}, "MEMORY_MB": {"total": 4096}}}
  ],
  "shared_providers": [
    {"name": "pool", "aggregates": ["agg"], "inventories": {"CUSTOM_SAN_GB": {"total": 1000}}}
  ]
}"#;

fn host(name: &str, zone: &str, vcpu: i64) -> HostSpec {
    HostSpec {
        name: name.into(),
        zone: Some(zone.into()),
        aggregates: vec!["agg".into()],
        inventories: [
            ("VCPU".to_string(), InventorySpec::new(vcpu)),
            ("MEMORY_MB".to_string(), InventorySpec::new(8192)),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    }
}

fn setup() -> (ClusterSpec, Placer) {
    let spec: ClusterSpec = serde_json::from_str(CLUSTER).unwrap();
    let cluster = Arc::new(Cluster::from_spec(&spec).unwrap());
    (
        spec,
        Placer::new(cluster, Profile::for_policy(Policy::Pack), 3),
    )
}

#[test]
fn added_host_takes_new_vms_and_stale_claims_are_refused() {
    let (mut spec, mut p) = setup();
    let mut placed = Vec::new();
    for i in 0..2 {
        let r = PlacementRequest::new(format!("full{i}"), &[("VCPU", 4), ("MEMORY_MB", 2048)]);
        placed.push((r.clone(), p.place(&r).unwrap()));
    }
    let big = PlacementRequest::new("big", &[("VCPU", 4), ("CUSTOM_SAN_GB", 100)]);
    assert!(matches!(p.place(&big), Err(PlaceError::Unschedulable(_))));

    // A claim decided before the topology changes, committed after.
    let early = p
        .state()
        .compile(&PlacementRequest::new("early", &[("MEMORY_MB", 1024)]))
        .unwrap();
    let stale = p
        .decide_compiled(&early, &DecideOptions::default())
        .unwrap();
    let c = host("c", "z2", 8);
    let id = p.state_mut().add_host(&c).unwrap();
    assert_eq!(id.index(), 2);
    spec.hosts.push(c);
    let (st, sch) = p.parts();
    let err = sch.commit(st, stale.claim);
    assert!(
        matches!(err, Err(CommitError::GenerationConflict { .. })),
        "{err:?}"
    );
    // The new host serves the request, with storage from the shared pool of its aggregate.
    let got = p.place(&big).unwrap();
    assert_eq!(got.host, "c");
    assert!(got.resources.iter().any(|r| r.provider == "pool"));
    placed.push((big, got));
    // A request compiled before the change still works (ids kept their meaning).
    let r = p.place_compiled(&early, &DecideOptions::default()).unwrap();
    placed.push((PlacementRequest::new("early", &[("MEMORY_MB", 1024)]), r));
    assert!(p.state().check_consistency().is_empty());

    // Spread over zones sees the new zone.
    p.state_mut()
        .create_server_group(ServerGroupSpec {
            name: "g".into(),
            policy: ServerGroupPolicy::AntiAffinity,
            max_per_host: None,
        })
        .unwrap();
    let d = host("d", "z2", 8);
    p.state_mut().add_host(&d).unwrap();
    spec.hosts.push(d);
    // Room in z1 again, so members can alternate zones.
    p.state_mut().release("full0").unwrap();
    placed.remove(0);
    let mut v = Validator::new(&spec);
    v.add_group(&ServerGroupSpec {
        name: "g".into(),
        policy: ServerGroupPolicy::AntiAffinity,
        max_per_host: None,
    });
    for (r, pl) in &placed {
        assert!(v.place(r, pl).is_empty());
    }
    let mut zones = Vec::new();
    for i in 0..2 {
        let mut r = PlacementRequest::new(format!("m{i}"), &[("VCPU", 1)]);
        r.server_group = Some("g".into());
        r.topology_spread.push(SpreadConstraint {
            key: TopologyKey::Zone,
            max_skew: 1,
            when_unsatisfiable: WhenUnsatisfiable::DoNotSchedule,
        });
        let pl = p.place(&r).unwrap();
        let errs = v.place(&r, &pl);
        assert!(errs.is_empty(), "{errs:?}");
        let h = p.state().cluster().host_id(&pl.host).unwrap();
        zones.push(p.state().cluster().host(h).zone);
    }
    assert_ne!(zones[0], zones[1]);
    assert!(p.state().check_consistency().is_empty());
}

#[test]
fn bad_or_duplicate_hosts_are_refused_and_change_nothing() {
    let (_, mut p) = setup();
    let mut bad = host("x", "z1", 4);
    bad.inventories.insert("VCPU".into(), InventorySpec::new(0));
    let err = p.state_mut().add_host(&bad).unwrap_err();
    assert!(err.to_string().contains("total"), "{err}");
    let err = p.state_mut().add_host(&host("a", "z1", 4)).unwrap_err();
    assert!(matches!(err, PlacementStateError::Model(_)), "{err:?}");
    let mut unknown = host("y", "z1", 4);
    unknown
        .inventories
        .insert("CUSTOM_UNDECLARED".into(), InventorySpec::new(1));
    assert!(p.state_mut().add_host(&unknown).is_err());
    assert_eq!(p.state().cluster().host_count(), 2);
    assert!(p.state().check_consistency().is_empty());
    p.place(&PlacementRequest::new("ok", &[("VCPU", 1)]))
        .unwrap();
}

#[test]
fn retired_hosts_take_nothing_and_their_claims_are_refused() {
    let (_, mut p) = setup();
    let only_a = |p: &mut Placer, id: &str| {
        let b = p.state().cluster().host_id("b").unwrap();
        let req = p
            .state()
            .compile(&PlacementRequest::new(id, &[("VCPU", 1)]))
            .unwrap();
        p.place_compiled(
            &req,
            &DecideOptions {
                exclude: &[b],
                ..Default::default()
            },
        )
    };
    only_a(&mut p, "v1").unwrap();
    let err = p.state_mut().retire_host("a").unwrap_err();
    assert_eq!(
        err.to_string(),
        "host `a` still holds 1 VM(s): release or evacuate them first"
    );
    assert!(matches!(
        p.state_mut().retire_host("nope"),
        Err(PlacementStateError::UnknownHost(_))
    ));
    p.state_mut().release("v1").unwrap();
    // Decided on a, committed after a is retired.
    let b = p.state().cluster().host_id("b").unwrap();
    let req = p
        .state()
        .compile(&PlacementRequest::new("late", &[("VCPU", 1)]))
        .unwrap();
    let d = p
        .decide_compiled(
            &req,
            &DecideOptions {
                exclude: &[b],
                ..Default::default()
            },
        )
        .unwrap();
    let a = p.state_mut().retire_host("a").unwrap();
    let (st, sch) = p.parts();
    assert!(sch.commit(st, d.claim).is_err());
    p.state_mut().set_host_enabled(a, true);
    assert!(p.state().is_disabled(a) && p.state().is_retired(a));
    for i in 0..4 {
        let pl = p
            .place(&PlacementRequest::new(format!("w{i}"), &[("VCPU", 1)]))
            .unwrap();
        assert_eq!(pl.host, "b");
    }
    assert!(only_a(&mut p, "never").is_err());
    assert!(p.state().check_consistency().is_empty());
}

#[test]
fn hosts_added_while_deciders_run_are_used_and_nothing_is_double_allocated() {
    use scheduling::generator::SplitMix64;
    use scheduling::generator::{self, ClusterShape};
    use scheduling::{Scheduler, SharedState, State};

    // The first 20 hosts of a 30-host generated cluster; the other 10 arrive during the run.
    let full = generator::cluster(ClusterShape::new(30, 3));
    let mut start = full.clone();
    start.hosts.truncate(20);
    let cluster = Arc::new(Cluster::from_spec(&start).unwrap());
    let shared = Arc::new(SharedState::new(State::new(cluster)));
    let profile = Arc::new(Profile::for_policy(Policy::Spread));
    let threads: Vec<_> = (0..2u64)
        .map(|t| {
            let shared = shared.clone();
            let profile = profile.clone();
            std::thread::spawn(move || {
                let mut sched = Scheduler::new(profile, 40 + t);
                let mut r = SplitMix64::new(t);
                let mut placed = Vec::new();
                for i in 0..1000 {
                    let req = generator::mixed_request(&mut r, format!("t{t}-{i}"));
                    match shared.place(&mut sched, &req) {
                        Ok(p) => placed.push((req, p)),
                        Err(PlaceError::Unschedulable(_)) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                placed
            })
        })
        .collect();
    for h in &full.hosts[20..] {
        std::thread::sleep(std::time::Duration::from_millis(2));
        shared.write().add_host(h).unwrap();
    }
    let mut all = Vec::new();
    for t in threads {
        all.extend(t.join().unwrap());
    }
    let shared = Arc::try_unwrap(shared).ok().unwrap();
    let state = shared.into_inner();
    assert_eq!(state.cluster().host_count(), 30);
    assert_eq!(state.check_consistency(), Vec::<String>::new());
    assert_eq!(state.allocations().len(), all.len());
    let mut v = Validator::new(&full);
    for (req, p) in &all {
        let errs = v.place(req, p);
        assert!(errs.is_empty(), "{errs:?}");
    }
    let late: Vec<&str> = full.hosts[20..].iter().map(|h| h.name.as_str()).collect();
    assert!(all.iter().any(|(_, p)| late.contains(&p.host.as_str())));
}
