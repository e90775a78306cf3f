//! Bad input gives clear errors naming the field and reason; a failed commit leaves the state unchanged.

use scheduling::model::{ClusterSpec, HostSpec, InventorySpec, ServerGroupPolicy, ServerGroupSpec};
use scheduling::request::RequestGroup;
use scheduling::{
    Cluster, CommitError, DecideOptions, HostId, ModelError, PlacementRequest, PlacementStateError,
    Placer, Profile,
};
use std::sync::Arc;

fn cluster_json(inventory: &str) -> String {
    format!(r#"{{"hosts": [{{"name": "h1", "inventories": {{{inventory}}}}}]}}"#)
}

/// The wraparound found by hand: a root and one NUMA child each with `i64::MAX` of memory at ratio 4,
/// plus a second child with `i64::MAX`, used to place six requests of `i64::MAX` where five fit (and
/// to panic in debug). Quantities past 2^53 are now refused at load, naming where; a host whose
/// inventories are each within the limit but sum past it is refused naming the host.
#[test]
fn quantities_past_the_limit_are_refused_naming_provider_field_and_limit() {
    let huge = i64::MAX;
    let json = format!(
        r#"{{"hosts": [{{"name": "h", "inventories": {{"MEMORY_MB": {{"total": {huge}, "allocation_ratio": 4.0}}}},
            "children": [{{"name": "h-n0", "inventories": {{"MEMORY_MB": {{"total": {huge}, "allocation_ratio": 4.0}}}}}},
                         {{"name": "h-n1", "inventories": {{"MEMORY_MB": {{"total": {huge}}}}}}}]}}]}}"#
    );
    let err = Cluster::from_json(&json).unwrap_err();
    assert_eq!(
        err,
        ModelError::QuantityTooLarge {
            provider: "h".into(),
            class: "MEMORY_MB".into(),
            field: "total",
            value: huge as u128,
            limit: scheduling::model::MAX_QUANTITY,
        }
    );
    let max = scheduling::model::MAX_QUANTITY;
    let json = format!(
        r#"{{"hosts": [{{"name": "h", "inventories": {{"MEMORY_MB": {{"total": {max}}}}},
            "children": [{{"name": "h-n0", "inventories": {{"MEMORY_MB": {{"total": 1}}}}}}]}}]}}"#
    );
    let err = Cluster::from_json(&json).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("provider `h`, inventory MEMORY_MB: capacity summed over the host's provider tree = {} exceeds the largest quantity the model accepts ({max}, scheduling::model::MAX_QUANTITY)", max + 1)
    );
    // At the limit, everything loads and places exactly.
    let json = format!(
        r#"{{"hosts": [{{"name": "h", "inventories": {{"MEMORY_MB": {{"total": {max}, "max_unit": {max}}}}}}}]}}"#
    );
    let mut p = Placer::new(
        Arc::new(Cluster::from_json(&json).unwrap()),
        Profile::default(),
        1,
    );
    let half = (max / 2) as i64;
    p.place(&PlacementRequest::new("a", &[("MEMORY_MB", half)]))
        .unwrap();
    p.place(&PlacementRequest::new("b", &[("MEMORY_MB", half)]))
        .unwrap();
    let e = p
        .place(&PlacementRequest::new("c", &[("MEMORY_MB", 1)]))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "0/1 hosts available: 1 insufficient MEMORY_MB"
    );
    assert!(p.state().check_consistency().is_empty());
}

#[test]
fn bad_inventories_from_json_name_field_and_value() {
    let cases = [
        (
            r#""VCPU": {"total": -8}"#,
            "field `total` must be > 0, got -8",
        ),
        (
            r#""VCPU": {"total": 0}"#,
            "field `total` must be > 0, got 0",
        ),
        (
            r#""VCPU": {"total": 8, "allocation_ratio": 0}"#,
            "field `allocation_ratio` must be a finite number within 0.000001..=1000000 (ratios are kept in millionths), got 0",
        ),
        (
            r#""VCPU": {"total": 8, "allocation_ratio": 1e-7}"#,
            "field `allocation_ratio` must be a finite number within 0.000001..=1000000 (ratios are kept in millionths), got 1e-7",
        ),
        (
            r#""VCPU": {"total": 8, "allocation_ratio": 1e300}"#,
            "within 0.000001..=1000000 (ratios are kept in millionths), got 1e300",
        ),
        (
            r#""VCPU": {"total": 9007199254740993}"#,
            "inventory VCPU: total = 9007199254740993 exceeds the largest quantity the model accepts (9007199254740992, scheduling::model::MAX_QUANTITY)",
        ),
        (
            r#""MEMORY_MB": {"total": 9007199254740992, "allocation_ratio": 1.5}"#,
            "inventory MEMORY_MB: capacity ((total - reserved) × allocation_ratio) = 13510798882111488 exceeds",
        ),
        (
            r#""VCPU": {"total": 8, "step_size": 9223372036854775807}"#,
            "step_size = 9223372036854775807 exceeds",
        ),
        (
            r#""VCPU": {"total": 8, "allocation_ratio": -2.5}"#,
            "got -2.5",
        ),
        (
            r#""VCPU": {"total": 8, "reserved": 9}"#,
            "field `reserved` must be within 0..=8, got 9",
        ),
        (
            r#""VCPU": {"total": 8, "min_unit": 4, "max_unit": 2}"#,
            "field `max_unit` must be >= min_unit (4), got 2",
        ),
        (
            r#""NOT_A_CLASS": {"total": 8}"#,
            "unknown resource class `NOT_A_CLASS`",
        ),
    ];
    for (inv, expected) in cases {
        let err = Cluster::from_json(&cluster_json(inv))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(expected),
            "{inv}: got `{err}`, expected `{expected}`"
        );
        assert!(err.contains("h1"), "names the provider: {err}");
    }
    let err = Cluster::from_json(r#"{"hosts": [{"name": "h1", "bogus": 1}]}"#).unwrap_err();
    assert!(matches!(err, ModelError::Parse { .. }), "{err:?}");
    assert!(err.to_string().contains("bogus"), "{err}");
    // The parser's error is kept as the source, not flattened into a string.
    let source = std::error::Error::source(&err).expect("parse errors keep their cause");
    assert!(source.to_string().contains("bogus"), "{source}");
}

fn small() -> Placer {
    hosts(3)
}

fn hosts(n: usize) -> Placer {
    let mut spec = ClusterSpec::default();
    for i in 0..n {
        let mut h = HostSpec {
            name: format!("h{i}"),
            zone: Some("z".into()),
            ..Default::default()
        };
        h.inventories
            .insert("VCPU".into(), InventorySpec::new(8).max_unit(4));
        h.inventories
            .insert("MEMORY_MB".into(), InventorySpec::new(8192).step_size(256));
        spec.hosts.push(h);
    }
    Placer::new(
        Arc::new(Cluster::from_spec(&spec).unwrap()),
        Profile::default(),
        1,
    )
}

#[test]
fn bad_requests_are_rejected_before_scheduling() {
    let mut p = small();
    let err = |p: &mut Placer, r: PlacementRequest| p.place(&r).unwrap_err().to_string();
    assert_eq!(
        err(&mut p, PlacementRequest::new("a", &[("VCPU", 5)])),
        "request `a`: 5 VCPU exceeds the largest max_unit in the cluster (4)"
    );
    assert_eq!(
        err(&mut p, PlacementRequest::new("a", &[("GPU", 1)])),
        "request `a`: unknown resource class `GPU`"
    );
    assert_eq!(
        err(&mut p, PlacementRequest::new("a", &[("PGPU", 1)])),
        "request `a`: no host offers PGPU (no provider has an inventory of it)"
    );
    assert_eq!(
        err(&mut p, PlacementRequest::new("a", &[("VCPU", 0)])),
        "request `a`: VCPU amount must be > 0, got 0"
    );
    assert_eq!(
        err(&mut p, PlacementRequest::new("a", &[])),
        "request `a`: field `resources` the request asks for no resources"
    );
    let mut r = PlacementRequest::new("a", &[("VCPU", 1)]);
    r.server_group = Some("nope".into());
    assert_eq!(err(&mut p, r), "request `a`: unknown server group `nope` (create it first: State::create_server_group, State::ensure_server_group, or a stream's `server_groups`)");
    let mut r = PlacementRequest::new("a", &[("VCPU", 1)]);
    r.groups.push(RequestGroup {
        name: "g1".into(),
        ..Default::default()
    });
    r.groups[0].resources.insert("MEMORY_MB".into(), 256);
    r.same_subtree.push(vec!["g1".into(), "g2".into()]);
    assert_eq!(
        err(&mut p, r),
        "request `a`: same_subtree refers to unknown group `g2`"
    );
    let mut r = PlacementRequest::new("a", &[("VCPU", 1)]);
    r.zone = Some("mars".into());
    assert_eq!(
        err(&mut p, r),
        "request `a`: field `zone` unknown zone `mars`"
    );
    // Step size is per inventory: a host-level reason, not a request error.
    assert_eq!(
        err(&mut p, PlacementRequest::new("a", &[("MEMORY_MB", 100)])),
        "0/3 hosts available: 3 MEMORY_MB outside min_unit/max_unit/step_size"
    );
    assert!(p.state().allocations().is_empty());
}

#[test]
fn failed_commit_leaves_state_unchanged() {
    let mut p = small();
    p.place(&PlacementRequest::new("first", &[("VCPU", 2)]))
        .unwrap();
    let req = p
        .state()
        .compile(&PlacementRequest::new("second", &[("VCPU", 4)]))
        .unwrap();
    let decision = p.decide_compiled(&req, &DecideOptions::default()).unwrap();
    // Someone else commits to the same host in between.
    let other = p
        .state()
        .compile(&PlacementRequest::new("other", &[("VCPU", 4)]))
        .unwrap();
    let elsewhere: Vec<HostId> = p
        .state()
        .cluster()
        .host_ids()
        .filter(|h| *h != decision.claim.host())
        .collect();
    let other_decision = p
        .decide_compiled(
            &other,
            &DecideOptions {
                exclude: &elsewhere,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(other_decision.claim.host(), decision.claim.host());
    p.state_mut().commit(other_decision.claim).unwrap();

    let before = p.state().clone();
    let err = p.state_mut().commit(decision.claim.clone()).unwrap_err();
    assert!(
        matches!(err, CommitError::GenerationConflict { .. }),
        "{err}"
    );
    let after = p.state();
    assert_eq!(before.used_slots(), after.used_slots());
    assert_eq!(before.allocations().len(), after.allocations().len());
    for o in after.cluster().owner_ids() {
        assert_eq!(before.generation(o), after.generation(o));
    }
    // Hand-made claims (duplicate consumer, over capacity) cannot be built outside the crate; the
    // state's own unit tests check that they are refused the same way.
    assert!(p.state().check_consistency().is_empty());
}

#[test]
fn release_resize_and_migrate_bookkeeping() {
    let mut p = hosts(1);
    p.place(&PlacementRequest::new(
        "a",
        &[("VCPU", 2), ("MEMORY_MB", 1024)],
    ))
    .unwrap();
    p.place(&PlacementRequest::new(
        "b",
        &[("VCPU", 2), ("MEMORY_MB", 4096)],
    ))
    .unwrap();
    assert!(matches!(
        p.state_mut().release("zzz"),
        Err(PlacementStateError::UnknownConsumer(_))
    ));
    // Resize up in place (a's own usage is credited); a resize that does not fit changes nothing.
    p.state_mut()
        .resize(
            "a",
            &PlacementRequest::new("a", &[("VCPU", 4), ("MEMORY_MB", 4096)]),
        )
        .unwrap();
    let before = p.state().used_slots().to_vec();
    assert_eq!(before, vec![8192, 6]); // MEMORY_MB, VCPU slots
    let err = p
        .state_mut()
        .resize(
            "a",
            &PlacementRequest::new("a", &[("MEMORY_MB", 4096 + 256)]),
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "new size does not fit on the current host: insufficient MEMORY_MB"
    );
    assert_eq!(before, p.state().used_slots());
    assert!(p.state().check_consistency().is_empty());

    let mut p = small();
    p.place(&PlacementRequest::new(
        "a",
        &[("VCPU", 2), ("MEMORY_MB", 1024)],
    ))
    .unwrap();
    let host = p.state().allocation("a").unwrap().host();
    // Migrate elsewhere.
    let req = p.state().allocation("a").unwrap().request().clone();
    let d = p
        .decide_compiled(
            &req,
            &DecideOptions {
                exclude: &[host],
                ..Default::default()
            },
        )
        .unwrap();
    assert_ne!(d.claim.host(), host);
    p.state_mut().migrate("a", d.claim).unwrap();
    assert_ne!(p.state().allocation("a").unwrap().host(), host);
    assert_eq!(p.state().allocations().len(), 1);
    assert!(p.state().check_consistency().is_empty());
    p.state_mut().release("a").unwrap();
    assert!(p.state().used_slots().iter().all(|u| *u == 0));
}

#[test]
fn server_group_definitions_are_validated() {
    let mut p = small();
    let g = ServerGroupSpec {
        name: "g".into(),
        policy: ServerGroupPolicy::Affinity,
        max_per_host: Some(2),
    };
    let err = p
        .state_mut()
        .create_server_group(g)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "server group `g`: max_per_host only applies to anti-affinity"
    );
    let g = ServerGroupSpec {
        name: "g".into(),
        policy: ServerGroupPolicy::AntiAffinity,
        max_per_host: Some(0),
    };
    assert!(p
        .state_mut()
        .create_server_group(g)
        .unwrap_err()
        .to_string()
        .contains("max_per_host must be >= 1"));
    let g = ServerGroupSpec {
        name: "g".into(),
        policy: ServerGroupPolicy::AntiAffinity,
        max_per_host: Some(2),
    };
    p.state_mut().create_server_group(g.clone()).unwrap();
    assert_eq!(
        p.state_mut()
            .create_server_group(g)
            .unwrap_err()
            .to_string(),
        "server group `g` already exists"
    );
}

#[test]
fn explanations_count_reasons_and_list_hosts_on_request() {
    let json = r#"{"hosts": [
        {"name": "gpu", "traits": ["HW_GPU"], "inventories": {"VCPU": {"total": 4}, "MEMORY_MB": {"total": 1024}}},
        {"name": "small", "inventories": {"VCPU": {"total": 4}, "MEMORY_MB": {"total": 1024}}},
        {"name": "tainted", "taints": [{"key": "maint", "effect": "NoSchedule"}],
         "inventories": {"VCPU": {"total": 64}, "MEMORY_MB": {"total": 65536}}},
        {"name": "big", "inventories": {"VCPU": {"total": 64}, "MEMORY_MB": {"total": 65536}}}
    ]}"#;
    let mut p = Placer::new(
        Arc::new(Cluster::from_json(json).unwrap()),
        Profile::default(),
        3,
    );
    let mut r = PlacementRequest::new("vm", &[("VCPU", 2), ("MEMORY_MB", 2048)]);
    r.required_traits.push("HW_GPU".into());
    let e = p.place(&r).unwrap_err().to_string();
    assert_eq!(
        e,
        "0/4 hosts available: 3 missing trait HW_GPU, 1 insufficient MEMORY_MB"
    );
    let r = PlacementRequest::new("vm", &[("VCPU", 8), ("MEMORY_MB", 512)]);
    let d = p
        .decide(
            &r,
            &DecideOptions {
                per_host_reasons: true,
                score_breakdown: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(p.state().cluster().host(d.claim.host()).name, "big");
    let b = d.breakdown.unwrap();
    assert_eq!(b.len(), 1);
    assert!(b[0]
        .parts
        .iter()
        .any(|(name, _, _)| *name == "LeastAllocated"));
    p.place(&PlacementRequest::new("fill", &[("VCPU", 30)]))
        .unwrap();
    let r = PlacementRequest::new("vm", &[("VCPU", 40)]);
    let e = p.decide(
        &r,
        &DecideOptions {
            per_host_reasons: true,
            ..Default::default()
        },
    );
    let Err(scheduling::PlaceError::Unschedulable(x)) = e else {
        panic!("{e:?}")
    };
    let mut per_host = x.per_host.unwrap();
    per_host.sort();
    assert_eq!(
        per_host,
        vec![
            ("big".to_string(), "insufficient VCPU".to_string()),
            ("gpu".into(), "insufficient VCPU".into()),
            ("small".into(), "insufficient VCPU".into()),
            (
                "tainted".into(),
                "untolerated taint maint:NoSchedule".into()
            ),
        ]
    );
    // The same reasons, structured: what an embedder matches on or serialises.
    let structured = x.host_reasons.unwrap();
    let tainted = structured.iter().find(|(h, _)| h == "tainted").unwrap();
    assert_eq!(
        serde_json::to_value(&tainted.1).unwrap(),
        serde_json::json!({"reason": "untolerated_taint",
            "taint": {"key": "maint", "value": "", "effect": "NoSchedule"}})
    );
    assert_eq!(
        x.details[0],
        (
            scheduling::RejectionReason::Insufficient {
                class: "VCPU".into()
            },
            3
        )
    );
    assert_eq!(
        serde_json::to_string(&x.details[0].0).unwrap(),
        r#"{"reason":"insufficient","class":"VCPU"}"#
    );
}

mod plugins {
    use scheduling::framework::{PermitPlugin, ReservePlugin};
    use scheduling::state::{Claim, State};
    use scheduling::{Cluster, CommitError, PlacementRequest, Placer, Profile};
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::Arc;

    /// Allows at most `limit` VMs per host (a permit plugin a manager might add).
    struct MaxVmsPerHost(u32);

    impl PermitPlugin for MaxVmsPerHost {
        fn name(&self) -> &'static str {
            "MaxVmsPerHost"
        }
        fn permit(&self, state: &State, claim: &Claim) -> Result<(), String> {
            if state.vm_count(claim.host()) >= self.0 {
                return Err(format!("host already runs {} VMs", self.0));
            }
            Ok(())
        }
    }

    /// Counts reservations; unreserve must undo them.
    struct Counter(Arc<AtomicI64>);

    impl ReservePlugin for Counter {
        fn name(&self) -> &'static str {
            "Counter"
        }
        fn reserve(&self, _: &State, _: &Claim) -> Result<(), String> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn unreserve(&self, _: &State, _: &Claim) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn permit_denial_unreserves_and_leaves_state_unchanged() {
        let json = r#"{"hosts": [{"name": "a", "inventories": {"VCPU": {"total": 8}}}]}"#;
        let reserved = Arc::new(AtomicI64::new(0));
        let profile = Profile::default()
            .with_reserve(Box::new(Counter(reserved.clone())))
            .with_permit(Box::new(MaxVmsPerHost(2)));
        let mut p = Placer::new(Arc::new(Cluster::from_json(json).unwrap()), profile, 1);
        p.place(&PlacementRequest::new("v1", &[("VCPU", 1)]))
            .unwrap();
        p.place(&PlacementRequest::new("v2", &[("VCPU", 1)]))
            .unwrap();
        let before = p.state().used_slots().to_vec();
        let err = p
            .place(&PlacementRequest::new("v3", &[("VCPU", 1)]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "permit plugin `MaxVmsPerHost` rejected: host already runs 2 VMs"
        );
        assert!(matches!(
            err,
            scheduling::PlaceError::Commit(CommitError::Denied { .. })
        ));
        assert_eq!(reserved.load(Ordering::SeqCst), 2);
        assert_eq!(before, p.state().used_slots());
        assert_eq!(p.state().allocations().len(), 2);
    }
}
