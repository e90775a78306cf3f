//! Arithmetic that cannot wrap: totals, reserves, ratios and requests at and beyond
//! `MAX_QUANTITY` (and up to `i64::MAX`), in debug builds where any overflow panics. A cluster either
//! loads with every capacity within the limit, or is refused naming the quantity; every placement
//! passes the independent validator (which computes in 128 bits), every rejection of a simple
//! request is justified, and the bookkeeping stays consistent.

mod common;

use common::Validator;
use proptest::prelude::*;
use scheduling::model::{ClusterSpec, HostSpec, InventorySpec, ProviderSpec, MAX_QUANTITY};
use scheduling::request::RequestGroup;
use scheduling::{Cluster, ModelError, PlaceError, PlacementRequest, Placer, Policy, Profile};
use std::collections::BTreeMap;
use std::sync::Arc;

const MAX: i64 = MAX_QUANTITY as i64;

/// Small amounts, amounts around the limit, around half of it, and around `i64::MAX`.
fn quantity() -> impl Strategy<Value = i64> {
    prop_oneof![
        2 => 1i64..64,
        2 => (MAX - 4)..=(MAX + 4),
        1 => (MAX / 2 - 2)..=(MAX / 2 + 2),
        1 => (MAX / 4)..=(MAX / 4 + 2),
        1 => (i64::MAX - 4)..=i64::MAX,
    ]
}

fn ratio() -> impl Strategy<Value = f64> {
    prop::sample::select(vec![1e-7, 1e-6, 0.25, 0.5, 1.0, 1.5, 4.0, 16.0, 1e6, 1e300])
}

fn inventory() -> impl Strategy<Value = InventorySpec> {
    (
        quantity(),
        0u8..3,
        prop::option::of(quantity()),
        prop::option::of(ratio()),
    )
        .prop_map(|(total, r, max_unit, allocation_ratio)| InventorySpec {
            total,
            reserved: match r {
                0 => 0,
                1 => total / 2,
                _ => total,
            },
            min_unit: None,
            max_unit,
            step_size: None,
            allocation_ratio,
        })
}

fn inventories() -> impl Strategy<Value = BTreeMap<String, InventorySpec>> {
    prop::collection::btree_map(
        prop::sample::select(vec!["VCPU", "MEMORY_MB"]),
        inventory(),
        0..3,
    )
    .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

fn cluster() -> impl Strategy<Value = ClusterSpec> {
    prop::collection::vec(
        (inventories(), prop::collection::vec(inventories(), 0..3)),
        1..4,
    )
    .prop_map(|hosts| ClusterSpec {
        hosts: hosts
            .into_iter()
            .enumerate()
            .map(|(i, (inventories, children))| HostSpec {
                name: format!("h{i}"),
                inventories,
                children: children
                    .into_iter()
                    .enumerate()
                    .map(|(n, inventories)| ProviderSpec {
                        name: format!("h{i}-n{n}"),
                        numa_node: None,
                        inventories,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    })
}

fn resources() -> impl Strategy<Value = BTreeMap<String, i64>> {
    prop::collection::btree_map(
        prop::sample::select(vec!["VCPU", "MEMORY_MB"]),
        quantity(),
        1..3,
    )
    .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

fn request() -> impl Strategy<Value = PlacementRequest> {
    (resources(), prop::option::of(resources())).prop_map(|(resources, group)| PlacementRequest {
        resources,
        groups: group
            .into_iter()
            .map(|resources| RequestGroup {
                name: "g".into(),
                resources,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    })
}

fn all_fields(spec: &ClusterSpec) -> Vec<(&str, &InventorySpec)> {
    let mut out = Vec::new();
    for h in &spec.hosts {
        out.extend(h.inventories.values().map(|i| (h.name.as_str(), i)));
        for c in &h.children {
            out.extend(c.inventories.values().map(|i| (c.name.as_str(), i)));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn quantities_at_and_past_the_limit_never_wrap(
        spec in cluster(),
        ops in prop::collection::vec((request(), any::<bool>()), 1..24),
        p in 0usize..6,
        seed in any::<u64>(),
    ) {
        let cluster = match Cluster::from_spec(&spec) {
            Ok(c) => c,
            Err(ModelError::QuantityTooLarge { limit, value, .. }) => {
                prop_assert_eq!(limit, MAX_QUANTITY);
                prop_assert!(value > u128::from(MAX_QUANTITY));
                return Ok(());
            }
            Err(ModelError::InvalidInventory { .. }) => return Ok(()),
            Err(e) => return Err(TestCaseError::fail(format!("unexpected {e}"))),
        };
        // Loaded: every field, every capacity and every host's sum is within the limit.
        for (_, inv) in all_fields(&spec) {
            prop_assert!(inv.total <= MAX);
            prop_assert!(inv.max_unit.is_none_or(|m| m <= MAX));
        }
        for s in cluster.slots() {
            prop_assert!(s.capacity <= MAX_QUANTITY);
        }
        for h in cluster.host_ids() {
            for c in ["VCPU", "MEMORY_MB"] {
                let class = cluster.class_id(c).unwrap();
                prop_assert!(cluster.host_capacity(h, class) <= MAX_QUANTITY);
            }
        }
        let mut placer = Placer::new(Arc::new(cluster), Profile::for_policy(Policy::ALL[p]), seed);
        let mut v = Validator::new(&spec);
        let mut live = Vec::new();
        for (i, (r, release)) in ops.iter().enumerate() {
            if *release && !live.is_empty() {
                let id: String = live.swap_remove(i % live.len());
                placer.state_mut().release(&id).expect("live");
                prop_assert!(v.release(&id).is_empty());
            }
            let mut r = r.clone();
            r.id = format!("vm{i}");
            match placer.place(&r) {
                Ok(pl) => {
                    let errs = v.place(&r, &pl);
                    prop_assert!(errs.is_empty(), "{errs:?}");
                    live.push(r.id.clone());
                }
                Err(PlaceError::Unschedulable(e)) => {
                    if r.groups.is_empty() {
                        prop_assert_eq!(v.some_host_fits(&r), None, "wrongly rejected: {}", e.summary);
                    }
                }
                Err(PlaceError::Request(_)) => {}
                Err(e) => return Err(TestCaseError::fail(format!("unexpected {e}"))),
            }
            let problems = placer.state().check_consistency();
            prop_assert!(problems.is_empty(), "{problems:?}");
        }
    }
}
