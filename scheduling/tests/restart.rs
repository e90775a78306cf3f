//! A manager restarts: it rebuilds the scheduler's state from the cluster description and the
//! placements it persisted, and nothing is lost, doubled or half-applied.

mod common;

use common::Validator;
use scheduling::generator::{self, ClusterShape};
use scheduling::{
    Cluster, ClusterSpec, PlaceError, PlacedResource, Placement, PlacementRequest, Placer, Policy,
    Profile, RestoreError, State,
};
use std::collections::HashMap;
use std::sync::Arc;

const HOSTS: usize = 120;

/// A generated cluster whose anti-affinity groups are declared in the description (so a restore
/// recreates them), and the requests to place on it: anti-affinity members and mixed VMs, interleaved.
fn setup() -> (ClusterSpec, Vec<PlacementRequest>) {
    let mut spec = generator::cluster(ClusterShape::new(HOSTS, 21));
    let groups = generator::anti_affinity(300, 5, "aa-");
    spec.server_groups = groups.server_groups.clone();
    let mixed = generator::mixed(3000, 6, "mx-").requests;
    let mut requests = Vec::new();
    let mut aa = groups.requests.into_iter();
    for (i, m) in mixed.into_iter().enumerate() {
        requests.push(m);
        if i % 10 == 0 {
            requests.extend(aa.next());
        }
    }
    requests.extend(aa);
    (spec, requests)
}

/// Usage by (provider, class), as the state sees it.
fn usage(state: &State) -> HashMap<(String, String), u128> {
    let c = state.cluster();
    c.slot_ids()
        .zip(c.slots())
        .filter(|(id, _)| state.used(*id) > 0)
        .map(|(id, s)| {
            (
                (
                    c.provider(s.provider).name.clone(),
                    c.class_name(s.class).to_string(),
                ),
                u128::from(state.used(id)),
            )
        })
        .collect()
}

/// Everything a failed import must leave as it was.
fn fingerprint(state: &State) -> (Vec<u64>, Vec<u64>, Vec<Placement>) {
    let c = state.cluster();
    (
        state.used_slots().to_vec(),
        c.owner_ids().map(|o| state.generation(o)).collect(),
        state.placements(),
    )
}

/// Places the first half of the requests, releasing every seventh placed VM, and returns the
/// persisted placements (JSON) and how many VMs are live.
fn run_before_restart(spec: &ClusterSpec, requests: &[PlacementRequest]) -> (String, usize) {
    let cluster = Arc::new(Cluster::from_spec(spec).unwrap());
    let mut placer = Placer::new(cluster, Profile::for_policy(Policy::Pack), 3);
    let mut validator = Validator::new(spec);
    let mut persisted: Vec<Placement> = Vec::new();
    for (i, req) in requests.iter().enumerate() {
        match placer.place(req) {
            Ok(p) => {
                let v = validator.place(req, &p);
                assert!(v.is_empty(), "validator: {v:#?}");
                persisted.push(p);
            }
            Err(PlaceError::Unschedulable(_)) => {}
            Err(e) => panic!("{}: {e}", req.id),
        }
        if i % 7 == 6 {
            if let Some(p) = persisted.pop() {
                placer.state_mut().release(&p.consumer).unwrap();
                assert!(validator.release(&p.consumer).is_empty());
            }
        }
    }
    assert!(placer.state().check_consistency().is_empty());
    // What the manager persisted is exactly what the state holds.
    persisted.sort_by(|a, b| a.consumer.cmp(&b.consumer));
    assert_eq!(persisted, placer.state().placements());
    let live = persisted.len();
    (serde_json::to_string_pretty(&persisted).unwrap(), live)
}

#[test]
fn restart_rebuilds_the_same_state_and_never_double_allocates() {
    let (spec, requests) = setup();
    let (first, second) = requests.split_at(requests.len() / 2);
    let (json, live) = run_before_restart(&spec, first);
    assert!(live > 500, "only {live} VMs placed before the restart");

    // Restart: nothing survives but the description and the persisted placements.
    let cluster = Arc::new(Cluster::from_spec(&spec).unwrap());
    let placements: Vec<Placement> = serde_json::from_str(&json).unwrap();
    let state = State::restore(cluster.clone(), &placements).unwrap();
    assert_eq!(state.allocations().len(), live);
    assert!(
        state.check_consistency().is_empty(),
        "{:?}",
        state.check_consistency()
    );
    assert_eq!(state.placements(), placements);

    // The independent validator accepts every restored placement and agrees on usage.
    let mut validator = Validator::new(&spec);
    for p in &placements {
        let v = validator.place(&p.request, p);
        assert!(v.is_empty(), "validator: {v:#?}");
    }
    assert_eq!(&usage(&state), validator.usage());

    // Server group membership came back: anti-affinity still holds for the new members.
    let members: usize = spec
        .server_groups
        .iter()
        .map(|g| {
            let id = state.group_id(&g.name).unwrap();
            state.group(id).unwrap().members() as usize
        })
        .sum();
    assert_eq!(
        members,
        placements
            .iter()
            .filter(|p| p.request.server_group.is_some())
            .count()
    );

    // Re-importing the same placements would allocate them twice: refused, nothing changes.
    let mut state = state;
    let before = fingerprint(&state);
    let err = state.import(&placements).unwrap_err();
    assert!(
        matches!(&err, RestoreError::DuplicateConsumer(c) if *c == placements[0].consumer),
        "{err}"
    );
    assert_eq!(fingerprint(&state), before);
    assert!(State::restore(
        cluster.clone(),
        &[placements.clone(), placements.clone()].concat()
    )
    .is_err());

    // Keep placing on the rebuilt state until the cluster is full: the validator, which replayed
    // the restored placements, checks that no capacity is ever exceeded.
    let mut placer = Placer::from_state(state, Profile::for_policy(Policy::Pack), 9);
    let mut placed_after = 0;
    let mut extra = second.to_vec();
    extra.extend(generator::mixed(4000, 8, "more-").requests);
    for req in &extra {
        match placer.place(req) {
            Ok(p) => {
                let v = validator.place(req, &p);
                assert!(v.is_empty(), "validator after restart: {v:#?}");
                placed_after += 1;
            }
            Err(PlaceError::Unschedulable(_)) => {}
            Err(e) => panic!("{}: {e}", req.id),
        }
    }
    assert!(
        placed_after > 100,
        "only {placed_after} placed after restart"
    );
    assert!(extra.len() > placed_after, "the cluster never filled up");
    assert!(placer.state().check_consistency().is_empty());
    assert_eq!(&usage(placer.state()), validator.usage());
}

#[test]
fn corrupted_placements_are_refused_by_name_and_change_nothing() {
    let (spec, requests) = setup();
    let (json, _) = run_before_restart(&spec, &requests[..1500]);
    let placements: Vec<Placement> = serde_json::from_str(&json).unwrap();
    let cluster = Arc::new(Cluster::from_spec(&spec).unwrap());
    let (kept, rest) = placements.split_at(placements.len() / 2);
    let mut state = State::restore(cluster.clone(), kept).unwrap();
    let before = fingerprint(&state);

    // A list of good placements with one bad one at the end: the good ones must not stay applied.
    let refuse = |state: &mut State, bad: Placement| -> RestoreError {
        let mut list = rest.to_vec();
        list.push(bad);
        state.import(&list).unwrap_err()
    };

    // Unknown host.
    let mut bad = rest[0].clone();
    bad.consumer = "ghost-host".into();
    Arc::make_mut(&mut bad.request).id = "ghost-host".into();
    bad.host = "h99999".into();
    let err = refuse(&mut state, bad);
    assert_eq!(
        err,
        RestoreError::UnknownHost {
            consumer: "ghost-host".into(),
            host: "h99999".into()
        }
    );
    assert!(err.to_string().contains("ghost-host") && err.to_string().contains("h99999"));
    assert_eq!(fingerprint(&state), before);

    // An amount beyond what is left: a whole NUMA node's vCPUs on a node that already runs VMs.
    let (host, numa) = kept
        .iter()
        .find_map(|p| {
            let r = p.resources.iter().find(|r| r.class == "VCPU")?;
            Some((p.host.clone(), r.provider.clone()))
        })
        .unwrap();
    let ghost = Placement {
        consumer: "ghost-cpu".into(),
        host: host.clone(),
        resources: vec![PlacedResource {
            provider: numa.clone(),
            class: "VCPU".into(),
            amount: 128,
            numa_node: None,
        }],
        request: Arc::new(PlacementRequest::new("ghost-cpu", &[("VCPU", 128)])),
        server_group: None,
    };
    let err = refuse(&mut state, ghost.clone());
    match &err {
        RestoreError::OverCapacity {
            consumer,
            provider,
            class,
            amount,
            free,
            capacity,
        } => {
            assert_eq!(
                (consumer.as_str(), provider.as_str()),
                ("ghost-cpu", numa.as_str())
            );
            assert_eq!((class.as_str(), *amount, *capacity), ("VCPU", 128, 128));
            assert!(*free < 128);
        }
        other => panic!("expected OverCapacity, got {other}"),
    }
    assert!(err.to_string().contains("ghost-cpu") && err.to_string().contains(&numa));
    assert_eq!(fingerprint(&state), before);

    // Beyond any capacity: more than the inventory could ever hold.
    let mut huge = ghost.clone();
    huge.resources[0].amount = 1_000_000;
    huge.request = Arc::new(PlacementRequest::new("ghost-cpu", &[("VCPU", 1_000_000)]));
    let err = refuse(&mut state, huge);
    assert!(
        matches!(&err, RestoreError::Request { consumer, .. } if consumer == "ghost-cpu"),
        "{err}"
    );
    assert!(
        std::error::Error::source(&err).is_some(),
        "keeps the request error as source"
    );
    assert_eq!(fingerprint(&state), before);

    // Unknown provider, a provider of another host, resources that differ from the request.
    let mut bad = ghost.clone();
    bad.resources[0].provider = "nowhere".into();
    assert_eq!(
        refuse(&mut state, bad),
        RestoreError::UnknownProvider {
            consumer: "ghost-cpu".into(),
            provider: "nowhere".into()
        }
    );
    let mut bad = ghost.clone();
    let other_host = cluster
        .hosts()
        .iter()
        .find(|h| h.name != host)
        .unwrap()
        .name
        .clone();
    bad.host = other_host.clone();
    assert_eq!(
        refuse(&mut state, bad),
        RestoreError::ProviderNotOnHost {
            consumer: "ghost-cpu".into(),
            provider: numa.clone(),
            host: other_host
        }
    );
    let mut bad = ghost.clone();
    bad.resources.clear();
    assert!(matches!(
        refuse(&mut state, bad),
        RestoreError::ResourcesMismatch {
            placed: 0,
            requested: 128,
            ..
        }
    ));
    assert_eq!(fingerprint(&state), before);

    // And the good ones alone go in.
    state.import(rest).unwrap();
    assert_eq!(state.placements(), placements);
    assert!(state.check_consistency().is_empty());
}

/// A server group made at run time (not in the cluster description) is recorded in the placements
/// of its members, so a restart recreates it on first use, membership counted; a placement whose
/// group conflicts with one of the same name already there is refused, naming both policies.
#[test]
fn server_groups_made_at_run_time_are_recreated_on_restore() {
    use scheduling::model::{ServerGroupPolicy, ServerGroupSpec};
    let cluster = Arc::new(
        Cluster::from_json(
            r#"{"hosts": [{"name": "a", "inventories": {"VCPU": {"total": 8}}},
                          {"name": "b", "inventories": {"VCPU": {"total": 8}}}]}"#,
        )
        .unwrap(),
    );
    let mut p = Placer::new(cluster.clone(), Profile::default(), 1);
    let web = ServerGroupSpec {
        name: "web".into(),
        policy: ServerGroupPolicy::AntiAffinity,
        max_per_host: None,
    };
    p.state_mut().ensure_server_group(web.clone()).unwrap();
    for i in 0..2 {
        let mut r = PlacementRequest::new(format!("web-{i}"), &[("VCPU", 1)]);
        r.server_group = Some("web".into());
        p.place(&r).unwrap();
    }
    let stored = serde_json::to_string(&p.state().placements()).unwrap();
    let placements: Vec<Placement> = serde_json::from_str(&stored).unwrap();
    assert_eq!(placements[0].server_group.as_ref(), Some(&web));
    let restored = State::restore(cluster.clone(), &placements).unwrap();
    let id = restored.group_id("web").expect("recreated");
    assert_eq!(restored.group(id).unwrap().members(), 2);
    assert_eq!(restored.placements(), p.state().placements());
    // A third member has nowhere to go: anti-affinity holds after the restart.
    let mut p2 = Placer::from_state(restored, Profile::default(), 1);
    let mut r = PlacementRequest::new("web-2", &[("VCPU", 1)]);
    r.server_group = Some("web".into());
    assert!(p2.place(&r).is_err());

    let mut other = State::new(cluster);
    other
        .create_server_group(ServerGroupSpec {
            policy: ServerGroupPolicy::Affinity,
            ..web
        })
        .unwrap();
    let err = other.import(&placements).unwrap_err();
    assert!(
        err.to_string().contains("server group `web`: it exists with policy affinity (max_per_host 1), the placement records anti-affinity (max_per_host 1)"),
        "{err}"
    );
    assert!(other.allocations().is_empty());
}
