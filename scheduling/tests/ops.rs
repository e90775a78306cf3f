//! Gang placement, preemption, evacuation, rebalancing and the HA check.

use scheduling::model::{ClusterSpec, HostSpec, InventorySpec, ServerGroupPolicy, ServerGroupSpec};
use scheduling::ops::{self, GangError, PreemptError, RebalanceGoal};
use scheduling::{Cluster, PlacementRequest, Placer, Policy, Profile};
use std::sync::Arc;

fn placer(hosts: usize, vcpus: i64, policy: Policy) -> Placer {
    let mut spec = ClusterSpec::default();
    for i in 0..hosts {
        let mut h = HostSpec {
            name: format!("h{i}"),
            zone: Some(format!("z{}", i % 2)),
            ..Default::default()
        };
        h.inventories
            .insert("VCPU".into(), InventorySpec::new(vcpus));
        h.inventories
            .insert("MEMORY_MB".into(), InventorySpec::new(vcpus * 1024));
        spec.hosts.push(h);
    }
    spec.server_groups.push(ServerGroupSpec {
        name: "g".into(),
        policy: ServerGroupPolicy::AntiAffinity,
        max_per_host: None,
    });
    Placer::new(
        Arc::new(Cluster::from_spec(&spec).unwrap()),
        Profile::for_policy(policy),
        9,
    )
}

fn vm(id: &str, vcpus: i64, priority: i32) -> PlacementRequest {
    let mut r = PlacementRequest::new(id, &[("VCPU", vcpus), ("MEMORY_MB", vcpus * 1024)]);
    r.priority = priority;
    r
}

#[test]
fn gang_is_all_or_nothing() {
    let mut p = placer(3, 8, Policy::Spread);
    let member = |i: usize| {
        let mut r = vm(&format!("m{i}"), 1, 0);
        r.server_group = Some("g".into());
        r
    };
    let four: Vec<_> = (0..4).map(member).collect();
    let (state, sched) = p.parts();
    match ops::place_gang(state, sched, &four) {
        Err(GangError::Unschedulable {
            index: 3,
            id,
            explanation,
        }) => {
            assert_eq!(id, "m3");
            assert_eq!(
                explanation.summary,
                "0/3 hosts available: 3 anti-affinity (group g)"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(p.state().allocations().is_empty());
    assert!(p.state().used_slots().iter().all(|u| *u == 0));
    assert!(p.state().check_consistency().is_empty());
    let (state, sched) = p.parts();
    let placed = ops::place_gang(state, sched, &four[..3]).unwrap();
    let mut hosts: Vec<_> = placed.iter().map(|p| p.host.clone()).collect();
    hosts.sort();
    assert_eq!(hosts, vec!["h0", "h1", "h2"]);
    // An invalid member places nothing.
    let bad = vec![vm("ok", 1, 0), PlacementRequest::new("bad", &[("NOPE", 1)])];
    let (state, sched) = p.parts();
    assert!(matches!(
        ops::place_gang(state, sched, &bad),
        Err(GangError::Request(_))
    ));
    assert_eq!(p.state().allocations().len(), 3);
}

#[test]
fn preemption_evicts_fewest_lowest_priority_victims() {
    let mut p = placer(1, 8, Policy::Spread);
    for (id, prio) in [("low-a", 0), ("low-b", 0), ("low-c", 1)] {
        p.place(&vm(id, 2, prio)).unwrap();
    }
    let (state, sched) = p.parts();
    assert!(matches!(
        ops::preempt(state, sched, &vm("tiny", 1, 9)),
        Err(PreemptError::NotNeeded(_))
    ));
    p.place(&vm("mid", 2, 5)).unwrap();
    let (state, sched) = p.parts();
    let pre = ops::preempt(state, sched, &vm("urgent", 4, 10)).unwrap();
    assert_eq!(pre.host, "h0");
    assert_eq!(pre.victims.len(), 2, "{:?}", pre.victims);
    assert!(
        pre.victims
            .iter()
            .all(|v| v.starts_with("low-a") || v.starts_with("low-b")),
        "{:?}",
        pre.victims
    );
    assert!(p.state().allocation("mid").is_some() && p.state().allocation("low-c").is_some());
    assert!(p.state().allocation("urgent").is_some());
    assert!(p.state().check_consistency().is_empty());
    // Nothing of lower priority can make room for 8 vCPUs.
    let (state, sched) = p.parts();
    match ops::preempt(state, sched, &vm("huge", 8, 3)) {
        Err(PreemptError::Impossible { explanation, .. }) => {
            assert!(explanation.summary == "0/1 hosts available: 1 insufficient MEMORY_MB")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn evacuation_moves_everything_it_can() {
    let mut p = placer(3, 8, Policy::Pack);
    for i in 0..6 {
        p.place(&vm(&format!("v{i}"), 2, i)).unwrap();
    }
    let failed = p.state().allocation("v0").unwrap().host();
    let name = p.state().cluster().host(failed).name.clone();
    let on_failed = p
        .state()
        .allocations()
        .values()
        .filter(|a| a.host() == failed)
        .count();
    let (state, sched) = p.parts();
    let ev = ops::evacuate(state, sched, &name).unwrap();
    assert_eq!(ev.moved.len(), on_failed);
    assert!(ev.stranded.is_empty());
    assert!(p.state().is_disabled(failed));
    assert!(p.state().allocations().values().all(|a| a.host() != failed));
    assert_eq!(p.state().allocations().len(), 6);
    assert!(p.state().check_consistency().is_empty());
    let (state, sched) = p.parts();
    assert!(ops::evacuate(state, sched, "nope").is_err());
}

#[test]
fn evacuation_reports_vms_that_cannot_move() {
    let mut p = placer(2, 8, Policy::Spread);
    p.place(&vm("a", 6, 0)).unwrap();
    p.place(&vm("b", 6, 0)).unwrap();
    let host = p
        .state()
        .cluster()
        .host(p.state().allocation("a").unwrap().host())
        .name
        .clone();
    let (state, sched) = p.parts();
    let ev = ops::evacuate(state, sched, &host).unwrap();
    assert!(ev.moved.is_empty());
    assert_eq!(ev.stranded.len(), 1);
    assert!(
        ev.stranded[0].1.contains("1 host disabled, 1 insufficient"),
        "{:?}",
        ev.stranded
    );
}

#[test]
fn rebalancing_plans_without_changing_state() {
    // Pack puts everything on one host; leveling proposes moves off it.
    let mut p = placer(3, 16, Policy::Pack);
    for i in 0..8 {
        p.place(&vm(&format!("v{i}"), 2, 0)).unwrap();
    }
    let before: Vec<u64> = p.state().used_slots().to_vec();
    let mut spread = scheduling::Scheduler::new(Arc::new(Profile::for_policy(Policy::Spread)), 1);
    let moves = ops::plan_rebalance(p.state(), &mut spread, RebalanceGoal::LevelLoad, 10);
    assert!(moves.len() >= 4, "{moves:?}");
    let from = &moves[0].from;
    assert!(moves.iter().all(|m| m.to != *from));
    assert_eq!(before, p.state().used_slots());

    // Spread over 3 hosts, then drain to free whole hosts.
    let mut p = placer(3, 16, Policy::Spread);
    for i in 0..3 {
        p.place(&vm(&format!("v{i}"), 2, 0)).unwrap();
    }
    let mut pack = scheduling::Scheduler::new(Arc::new(Profile::for_policy(Policy::Pack)), 1);
    let moves = ops::plan_rebalance(p.state(), &mut pack, RebalanceGoal::DrainHosts, 10);
    assert_eq!(moves.len(), 2, "{moves:?}");
    let targets: std::collections::HashSet<_> = moves.iter().map(|m| &m.to).collect();
    assert_eq!(
        targets.len(),
        1,
        "both drained VMs land on the one remaining host: {moves:?}"
    );
}

#[test]
fn ha_check_finds_hosts_whose_failure_loses_vms() {
    let mut p = placer(3, 8, Policy::Spread);
    for i in 0..3 {
        p.place(&vm(&format!("big{i}"), 6, 0)).unwrap();
    }
    let before = p.state().used_slots().to_vec();
    let mut s = scheduling::Scheduler::new(Arc::new(Profile::default()), 1);
    let report = ops::ha_check(p.state(), &mut s, |_, _| true);
    assert!(!report.ok());
    assert_eq!(report.failures.len(), 3);
    assert_eq!(before, p.state().used_slots());

    let mut p = placer(3, 8, Policy::Spread);
    for i in 0..3 {
        p.place(&vm(&format!("ha{i}"), 4, 0)).unwrap();
        p.place(&vm(&format!("other{i}"), 1, 0)).unwrap();
    }
    // Only the ha* VMs must restart; each host keeps 3 vCPUs free, too few for a 4-vCPU VM.
    let report = ops::ha_check(p.state(), &mut s, |id, _| id.starts_with("ha"));
    assert_eq!(report.hosts_checked, 3);
    assert!(!report.ok());
    p.state_mut().release("other0").unwrap();
    p.state_mut().release("other1").unwrap();
    p.state_mut().release("other2").unwrap();
    let report = ops::ha_check(p.state(), &mut s, |id, _| id.starts_with("ha"));
    assert!(report.ok(), "{report:?}");
    assert!(p.state().check_consistency().is_empty());
}
