//! The fit search is complete: it never rejects what brute force fits (and never accepts what it
//! does not), and isolated groups that used to exhaust a backtracking budget are placed.

use proptest::prelude::*;
use scheduling::model::{ClusterSpec, HostSpec, InventorySpec, ProviderSpec};
use scheduling::request::{GroupPolicy, RequestGroup};
use scheduling::{Cluster, DecideOptions, PlaceError, PlacementRequest, Placer, Profile, Sampling};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

const CLASSES: [&str; 2] = ["VCPU", "MEMORY_MB"];

/// The case: 16 NUMA nodes of 8 GiB, only the first with a trait; 8 isolated groups of
/// 1 GiB, the last needing the trait. It fits (the last group on node 0, the others elsewhere).
#[test]
fn isolated_groups_needing_the_one_special_node_are_placed() {
    let children = (0..16)
        .map(|n| ProviderSpec {
            name: format!("numa{n}"),
            numa_node: None,
            traits: if n == 0 {
                vec!["CUSTOM_FAST".into()]
            } else {
                vec![]
            },
            inventories: [("MEMORY_MB".to_string(), InventorySpec::new(8192))].into(),
            children: vec![],
        })
        .collect();
    let spec = ClusterSpec {
        hosts: vec![HostSpec {
            name: "big".into(),
            children,
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut p = Placer::new(
        Arc::new(Cluster::from_spec(&spec).unwrap()),
        Profile::default(),
        1,
    );
    let groups = (0..8)
        .map(|g| RequestGroup {
            name: format!("g{g}"),
            resources: [("MEMORY_MB".to_string(), 1024)].into(),
            required_traits: if g == 7 {
                vec!["CUSTOM_FAST".into()]
            } else {
                vec![]
            },
            forbidden_traits: vec![],
        })
        .collect();
    let req = PlacementRequest {
        id: "vm".into(),
        groups,
        group_policy: GroupPolicy::Isolate,
        ..Default::default()
    };
    let t = std::time::Instant::now();
    let placed = p.place(&req).unwrap();
    assert!(t.elapsed().as_secs() < 2, "{:?}", t.elapsed());
    let providers: Vec<&str> = placed
        .resources
        .iter()
        .map(|r| r.provider.as_str())
        .collect();
    assert_eq!(providers[7], "numa0", "{providers:?}");
    let mut distinct = providers.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 8, "{providers:?}");
    // Nine groups on a host whose trait-bearing node is needed twice cannot fit: an honest reason.
    let mut two = req.clone();
    two.id = "vm2".into();
    two.groups[0].required_traits.push("CUSTOM_FAST".into());
    let err = p.place(&two).unwrap_err().to_string();
    assert_eq!(
        err,
        "0/1 hosts available: 1 named groups cannot be placed together (isolation, same_subtree or shared capacity)"
    );
}

/// A provider of the brute force's own model (from the description): parent, traits, capacity.
#[derive(Clone, Debug)]
struct Prov {
    parent: Option<usize>,
    traits: Vec<String>,
    cap: HashMap<String, u64>,
}

fn flatten(spec: &HostSpec) -> Vec<Prov> {
    fn add(out: &mut Vec<Prov>, p: &ProviderSpec, parent: usize) {
        let me = out.len();
        out.push(Prov {
            parent: Some(parent),
            traits: p.traits.clone(),
            cap: p
                .inventories
                .iter()
                .map(|(k, i)| (k.clone(), i.total as u64))
                .collect(),
        });
        for c in &p.children {
            add(out, c, me);
        }
    }
    let mut out = vec![Prov {
        parent: None,
        traits: spec.traits.clone(),
        cap: spec
            .inventories
            .iter()
            .map(|(k, i)| (k.clone(), i.total as u64))
            .collect(),
    }];
    for c in &spec.children {
        add(&mut out, c, 0);
    }
    out
}

fn ancestor_or_self(provs: &[Prov], a: usize, mut b: usize) -> bool {
    loop {
        if a == b {
            return true;
        }
        match provs[b].parent {
            Some(p) => b = p,
            None => return false,
        }
    }
}

/// Whether any assignment of groups and unnamed classes to providers satisfies the request.
fn brute_force_fits(provs: &[Prov], req: &PlacementRequest) -> bool {
    let g = req.groups.len();
    let unnamed: Vec<(&String, u64)> = req.resources.iter().map(|(k, v)| (k, *v as u64)).collect();
    let slots = g + unnamed.len();
    let n = provs.len();
    let mut choice = vec![0usize; slots];
    loop {
        if assignment_ok(provs, req, &unnamed, &choice) {
            return true;
        }
        // Next assignment (odometer).
        let mut i = 0;
        loop {
            if i == slots {
                return false;
            }
            choice[i] += 1;
            if choice[i] < n {
                break;
            }
            choice[i] = 0;
            i += 1;
        }
    }
}

fn assignment_ok(
    provs: &[Prov],
    req: &PlacementRequest,
    unnamed: &[(&String, u64)],
    choice: &[usize],
) -> bool {
    let g = req.groups.len();
    let mut load: HashMap<(usize, &str), u64> = HashMap::new();
    for (i, group) in req.groups.iter().enumerate() {
        let p = &provs[choice[i]];
        if !group.required_traits.iter().all(|t| p.traits.contains(t)) {
            return false;
        }
        for (class, amount) in &group.resources {
            let Some(cap) = p.cap.get(class) else {
                return false;
            };
            if *amount as u64 > *cap {
                return false;
            }
            *load.entry((choice[i], class.as_str())).or_default() += *amount as u64;
        }
    }
    if req.group_policy == GroupPolicy::Isolate {
        for a in 0..g {
            for b in a + 1..g {
                if choice[a] == choice[b] {
                    return false;
                }
            }
        }
    }
    for set in &req.same_subtree {
        let idx: Vec<usize> = set
            .iter()
            .map(|name| req.groups.iter().position(|x| &x.name == name).unwrap())
            .collect();
        if !idx.iter().any(|&a| {
            idx.iter()
                .all(|&b| ancestor_or_self(provs, choice[a], choice[b]))
        }) {
            return false;
        }
    }
    for (k, (class, amount)) in unnamed.iter().enumerate() {
        let p = choice[g + k];
        let Some(cap) = provs[p].cap.get(*class) else {
            return false;
        };
        if amount > cap {
            return false;
        }
        *load.entry((p, class.as_str())).or_default() += amount;
    }
    load.iter()
        .all(|((p, class), l)| *l <= provs[*p].cap[*class])
}

fn inventories() -> impl Strategy<Value = BTreeMap<String, InventorySpec>> {
    prop::collection::btree_map(prop::sample::select(CLASSES.to_vec()), 1i64..8, 0..3).prop_map(
        |m| {
            m.into_iter()
                .map(|(k, v)| (k.to_string(), InventorySpec::new(v)))
                .collect()
        },
    )
}

fn traits() -> impl Strategy<Value = Vec<String>> {
    prop::option::of(prop::sample::select(vec!["T_A", "T_B"]))
        .prop_map(|t| t.into_iter().map(String::from).collect())
}

fn host() -> impl Strategy<Value = HostSpec> {
    (
        inventories(),
        prop::collection::vec(
            (
                inventories(),
                traits(),
                prop::collection::vec((inventories(), traits()), 0..3),
            ),
            0..4,
        ),
    )
        .prop_map(|(inventories, children)| HostSpec {
            name: "h".into(),
            inventories,
            children: children
                .into_iter()
                .enumerate()
                .map(|(i, (inventories, traits, kids))| ProviderSpec {
                    name: format!("n{i}"),
                    numa_node: None,
                    traits,
                    inventories,
                    children: kids
                        .into_iter()
                        .enumerate()
                        .map(|(j, (inventories, traits))| ProviderSpec {
                            name: format!("n{i}-d{j}"),
                            numa_node: None,
                            traits,
                            inventories,
                            children: vec![],
                        })
                        .collect(),
                })
                .collect(),
            ..Default::default()
        })
}

fn resources(min: usize) -> impl Strategy<Value = BTreeMap<String, i64>> {
    prop::collection::btree_map(prop::sample::select(CLASSES.to_vec()), 1i64..5, min..3)
        .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

fn request() -> impl Strategy<Value = PlacementRequest> {
    (
        resources(0),
        prop::collection::vec((resources(1), traits()), 1..4),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(resources, groups, isolate, subtree)| {
            let groups: Vec<RequestGroup> = groups
                .into_iter()
                .enumerate()
                .map(|(i, (resources, required_traits))| RequestGroup {
                    name: format!("g{i}"),
                    resources,
                    required_traits,
                    forbidden_traits: vec![],
                })
                .collect();
            let same_subtree = if subtree && groups.len() >= 2 {
                vec![vec!["g0".to_string(), "g1".to_string()]]
            } else {
                vec![]
            };
            PlacementRequest {
                id: "vm".into(),
                resources,
                groups,
                group_policy: if isolate {
                    GroupPolicy::Isolate
                } else {
                    GroupPolicy::None
                },
                same_subtree,
                ..Default::default()
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_search_agrees_with_brute_force(h in host(), req in request()) {
        let spec = ClusterSpec { hosts: vec![h.clone()], ..Default::default() };
        let cluster = Arc::new(Cluster::from_spec(&spec).unwrap());
        let mut p = Placer::new(cluster, Profile::default().with_sampling(Sampling::EXHAUSTIVE), 1);
        let expected = brute_force_fits(&flatten(&h), &req);
        match p.decide(&req, &DecideOptions::default()) {
            Ok(_) => prop_assert!(expected, "placed what brute force cannot fit"),
            Err(PlaceError::Unschedulable(e)) => prop_assert!(!expected, "rejected what brute force fits: {}", e.summary),
            Err(PlaceError::Request(_)) => {}
            Err(e) => return Err(TestCaseError::fail(e.to_string())),
        }
    }
}
