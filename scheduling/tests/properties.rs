//! Property tests: random clusters, requests and releases; the independent validator must accept every
//! placement, every rejection of a simple request must be justified, and bookkeeping must stay consistent.

mod common;

use common::Validator;
use proptest::prelude::*;
use scheduling::model::{
    ClusterSpec, HostSpec, InventorySpec, ProviderSpec, ServerGroupPolicy, ServerGroupSpec,
    SharedProviderSpec, Taint, TaintEffect,
};
use scheduling::request::{
    GroupPolicy, RequestGroup, SpreadConstraint, TopologyKey, WhenUnsatisfiable,
};
use scheduling::{Cluster, PlaceError, PlacementRequest, Placer, Policy, Profile, Sampling};
use std::collections::BTreeMap;
use std::sync::Arc;

const RATIOS: [f64; 6] = [0.5, 1.0, 1.5, 2.0, 4.0, 16.0];
const TRAITS: [&str; 3] = ["T_A", "T_B", "T_C"];

fn inventory() -> impl Strategy<Value = InventorySpec> {
    (
        1i64..64,
        0usize..6,
        0i64..4,
        prop::option::of(1i64..32),
        prop::sample::select(vec![1i64, 1, 2]),
    )
        .prop_map(|(total, r, res, max_unit, step)| InventorySpec {
            total,
            reserved: res.min(total),
            min_unit: None,
            max_unit: max_unit.map(|m| m.max(step)),
            step_size: Some(step),
            allocation_ratio: Some(RATIOS[r]),
        })
}

fn inventories() -> impl Strategy<Value = BTreeMap<String, InventorySpec>> {
    prop::collection::btree_map(
        prop::sample::select(vec!["VCPU", "MEMORY_MB", "HUGEPAGES_1G"]),
        inventory(),
        0..3,
    )
    .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

fn traits() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(prop::sample::select(TRAITS.to_vec()), 0..3).prop_map(|v| {
        let mut v: Vec<String> = v.into_iter().map(String::from).collect();
        v.sort();
        v.dedup();
        v
    })
}

fn host(i: usize) -> impl Strategy<Value = HostSpec> {
    (
        inventories(),
        prop::collection::vec((inventories(), traits()), 0..3),
        traits(),
        0u8..3,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(move |(inv, numa, traits, zone, tainted, in_agg)| HostSpec {
            name: format!("h{i}"),
            zone: Some(format!("z{}", zone % 2)),
            rack: Some(format!("r{zone}")),
            aggregates: if in_agg { vec!["a0".into()] } else { vec![] },
            labels: [("tier".to_string(), format!("t{zone}"))]
                .into_iter()
                .collect(),
            taints: if tainted {
                vec![Taint {
                    key: "k".into(),
                    value: "v".into(),
                    effect: TaintEffect::NoSchedule,
                }]
            } else {
                vec![]
            },
            traits,
            inventories: inv,
            children: numa
                .into_iter()
                .enumerate()
                .map(|(n, (inventories, traits))| ProviderSpec {
                    name: format!("h{i}-n{n}"),
                    numa_node: None,
                    traits,
                    inventories,
                    children: vec![],
                })
                .collect(),
        })
}

fn cluster() -> impl Strategy<Value = ClusterSpec> {
    (1usize..10).prop_flat_map(|n| {
        let hosts: Vec<_> = (0..n).map(host).collect();
        (hosts, any::<bool>()).prop_map(|(hosts, shared)| ClusterSpec {
            custom_resource_classes: vec!["CUSTOM_SAN".into()],
            hosts,
            shared_providers: if shared {
                vec![SharedProviderSpec {
                    name: "san".into(),
                    aggregates: vec!["a0".into()],
                    traits: vec![],
                    inventories: [("CUSTOM_SAN".to_string(), InventorySpec::new(40))]
                        .into_iter()
                        .collect(),
                }]
            } else {
                vec![]
            },
            server_groups: vec![
                ServerGroupSpec {
                    name: "anti".into(),
                    policy: ServerGroupPolicy::AntiAffinity,
                    max_per_host: None,
                },
                ServerGroupSpec {
                    name: "anti2".into(),
                    policy: ServerGroupPolicy::AntiAffinity,
                    max_per_host: Some(2),
                },
                ServerGroupSpec {
                    name: "aff".into(),
                    policy: ServerGroupPolicy::Affinity,
                    max_per_host: None,
                },
                ServerGroupSpec {
                    name: "soft".into(),
                    policy: ServerGroupPolicy::SoftAntiAffinity,
                    max_per_host: None,
                },
            ],
        })
    })
}

#[derive(Clone, Debug)]
enum Op {
    Place(Box<PlacementRequest>),
    Release(usize),
}

fn resources() -> impl Strategy<Value = BTreeMap<String, i64>> {
    prop::collection::btree_map(
        prop::sample::select(vec!["VCPU", "MEMORY_MB", "HUGEPAGES_1G", "CUSTOM_SAN"]),
        1i64..12,
        0..3,
    )
    .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

fn request() -> impl Strategy<Value = PlacementRequest> {
    (
        resources(),
        prop::collection::vec((resources(), traits()), 0..3),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(prop::sample::select(TRAITS.to_vec())),
        prop::option::of(prop::sample::select(TRAITS.to_vec())),
        prop::option::of(prop::sample::select(vec!["anti", "anti2", "aff", "soft"])),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(res, groups, isolate, subtree, req_t, forb_t, sg, spread, tolerate)| {
                let groups: Vec<RequestGroup> = groups
                    .into_iter()
                    .filter(|(r, _)| !r.is_empty())
                    .enumerate()
                    .map(|(i, (resources, required_traits))| RequestGroup {
                        name: format!("g{i}"),
                        resources,
                        required_traits,
                        forbidden_traits: vec![],
                    })
                    .collect();
                let same_subtree = if subtree && groups.len() == 2 {
                    vec![vec!["g0".to_string(), "g1".to_string()]]
                } else {
                    vec![]
                };
                let mut r = PlacementRequest {
                    id: String::new(),
                    resources: if res.is_empty() && groups.is_empty() {
                        [("VCPU".to_string(), 1)].into_iter().collect()
                    } else {
                        res
                    },
                    groups,
                    group_policy: if isolate {
                        GroupPolicy::Isolate
                    } else {
                        GroupPolicy::None
                    },
                    same_subtree,
                    required_traits: req_t.into_iter().map(String::from).collect(),
                    forbidden_traits: forb_t.into_iter().map(String::from).collect(),
                    server_group: sg.map(String::from),
                    ..Default::default()
                };
                if spread && r.server_group.is_some() {
                    r.topology_spread.push(SpreadConstraint {
                        key: TopologyKey::Zone,
                        max_skew: 1,
                        when_unsatisfiable: WhenUnsatisfiable::DoNotSchedule,
                    });
                }
                if tolerate {
                    r.tolerations.push(scheduling::request::Toleration {
                        key: "k".into(),
                        value: "v".into(),
                        ..Default::default()
                    });
                }
                r
            },
        )
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![4 => request().prop_map(|r| Op::Place(Box::new(r))), 1 => (0usize..100).prop_map(Op::Release)],
        1..60,
    )
}

fn run(
    spec: &ClusterSpec,
    ops: &[Op],
    policy: Policy,
    sampling: Sampling,
    seed: u64,
) -> Result<(), TestCaseError> {
    let cluster = Arc::new(Cluster::from_spec(spec).expect("generated clusters are valid"));
    let mut placer = Placer::new(
        cluster,
        Profile::for_policy(policy).with_sampling(sampling),
        seed,
    );
    let mut v = Validator::new(spec);
    let mut live: Vec<String> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Place(r) => {
                let mut r = PlacementRequest::clone(r);
                r.id = format!("vm{i}");
                match placer.place(&r) {
                    Ok(p) => {
                        let errs = v.place(&r, &p);
                        prop_assert!(errs.is_empty(), "{errs:?}");
                        live.push(r.id.clone());
                    }
                    Err(PlaceError::Unschedulable(e)) => {
                        if r.groups.is_empty() {
                            prop_assert_eq!(
                                v.some_host_fits(&r),
                                None,
                                "wrongly rejected: {}",
                                e.summary
                            );
                        }
                    }
                    // Random amounts may exceed every max_unit: a request error is fine, never a panic.
                    Err(PlaceError::Request(_)) => {}
                    Err(e) => prop_assert!(false, "unexpected {e}"),
                }
            }
            Op::Release(k) if !live.is_empty() => {
                let id = live.swap_remove(k % live.len());
                placer.state_mut().release(&id).expect("live consumer");
                prop_assert!(v.release(&id).is_empty());
            }
            Op::Release(_) => {}
        }
        let problems = placer.state().check_consistency();
        prop_assert!(problems.is_empty(), "{problems:?}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_clusters_and_requests_are_placed_validly(spec in cluster(), ops in ops(), p in 0usize..6, seed in any::<u64>()) {
        run(&spec, &ops, Policy::ALL[p], Sampling::default(), seed)?;
    }

    #[test]
    fn sampling_one_host_is_still_valid(spec in cluster(), ops in ops(), seed in any::<u64>()) {
        run(&spec, &ops, Policy::Spread, Sampling { min_feasible: 1, percentage: 1, max_feasible: 1 }, seed)?;
    }

    #[test]
    fn json_round_trip_of_cluster_and_request(spec in cluster(), r in request()) {
        let json = serde_json::to_string(&spec).unwrap();
        let back: ClusterSpec = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(&back, &spec);
        let json = serde_json::to_string(&r).unwrap();
        let back: PlacementRequest = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(back, r);
    }
}
