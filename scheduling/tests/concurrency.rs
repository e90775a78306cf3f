//! Several deciders on one shared state: optimistic commits never double-allocate.

mod common;

use common::Validator;
use scheduling::generator::SplitMix64;
use scheduling::generator::{self, ClusterShape};
use scheduling::model::{ServerGroupPolicy, ServerGroupSpec};
use scheduling::{
    Cluster, PlaceError, PlacementRequest, Policy, Profile, Scheduler, SharedState, State,
};
use std::sync::Arc;

fn run(deciders: usize, seed: u64) {
    let spec = generator::cluster(ClusterShape::new(40, seed));
    let cluster = Arc::new(Cluster::from_spec(&spec).unwrap());
    let mut state = State::new(cluster);
    let mut groups = Vec::new();
    for g in 0..20 {
        let spec = ServerGroupSpec {
            name: format!("g{g}"),
            policy: ServerGroupPolicy::AntiAffinity,
            max_per_host: None,
        };
        state.create_server_group(spec.clone()).unwrap();
        groups.push(spec);
    }
    let shared = Arc::new(SharedState::new(state));
    let profile = Arc::new(Profile::for_policy(Policy::Pack));
    let threads: Vec<_> = (0..deciders)
        .map(|t| {
            let shared = shared.clone();
            let profile = profile.clone();
            std::thread::spawn(move || {
                let mut sched = Scheduler::new(profile, seed ^ t as u64);
                let mut r = SplitMix64::new(seed + t as u64);
                let mut placed = Vec::new();
                for i in 0..1500 {
                    let mut req = generator::mixed_request(&mut r, format!("t{t}-{i}"));
                    if r.chance(20) {
                        req = PlacementRequest::new(
                            format!("t{t}-{i}"),
                            &[("VCPU", 1), ("MEMORY_MB", 1024)],
                        );
                        req.server_group = Some(format!("g{}", r.below(20)));
                    }
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
    let mut all = Vec::new();
    for t in threads {
        all.extend(t.join().unwrap());
    }
    let shared = Arc::try_unwrap(shared).unwrap();
    assert_eq!(shared.commits() as usize, all.len());
    let state = shared.into_inner();
    assert_eq!(state.check_consistency(), Vec::<String>::new());
    assert_eq!(state.allocations().len(), all.len());
    // Capacity and anti-affinity hold in the final state, hence in any replay order.
    let mut v = Validator::new(&spec);
    for g in &groups {
        v.add_group(g);
    }
    for (req, p) in &all {
        let errs = v.place(req, p);
        assert!(errs.is_empty(), "{errs:?}");
    }
    assert!(all.len() > 1000, "placed {}", all.len());
}

#[test]
fn one_decider() {
    run(1, 7);
}

#[test]
fn four_deciders_never_double_allocate() {
    for seed in [1, 2] {
        run(4, seed);
    }
}
