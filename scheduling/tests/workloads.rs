//! Every placement of every workload (W1–W5, GPU, dedicated) checked by the independent validator.

mod common;

use common::Validator;
use scheduling::generator::SplitMix64;
use scheduling::generator::{self, ClusterShape, Workload};
use scheduling::{Cluster, ClusterSpec, PlaceError, PlacementRequest, Placer, Policy, Profile};
use std::collections::HashMap;
use std::sync::Arc;

struct Run {
    spec: ClusterSpec,
    placer: Placer,
    validator: Validator,
    placed: usize,
    rejected: usize,
}

impl Run {
    fn new(hosts: usize, seed: u64, policy: Policy) -> Self {
        let spec = generator::cluster(ClusterShape::new(hosts, seed));
        let cluster = Arc::new(Cluster::from_spec(&spec).unwrap());
        Run {
            validator: Validator::new(&spec),
            placer: Placer::new(cluster, Profile::for_policy(policy), seed),
            spec,
            placed: 0,
            rejected: 0,
        }
    }

    fn groups(&mut self, w: &Workload) {
        for g in &w.server_groups {
            self.placer
                .state_mut()
                .create_server_group(g.clone())
                .unwrap();
            self.validator.add_group(g);
        }
    }

    /// Places and validates; returns whether it was placed.
    fn place(&mut self, req: &PlacementRequest) -> bool {
        match self.placer.place(req) {
            Ok(p) => {
                let v = self.validator.place(req, &p);
                assert!(v.is_empty(), "validator: {v:#?}");
                self.placed += 1;
                true
            }
            Err(PlaceError::Unschedulable(e)) => {
                if req.groups.is_empty() {
                    assert_eq!(
                        self.validator.some_host_fits(req),
                        None,
                        "wrongly rejected {}: {}",
                        req.id,
                        e.summary
                    );
                }
                assert!(e
                    .summary
                    .starts_with(&format!("0/{} hosts available: ", self.spec.hosts.len())));
                self.rejected += 1;
                false
            }
            Err(e) => panic!("unexpected error for {}: {e}", req.id),
        }
    }

    fn release(&mut self, id: &str) {
        self.placer.state_mut().release(id).unwrap();
        assert!(self.validator.release(id).is_empty());
    }

    fn finish(&self) {
        assert_eq!(
            self.placer.state().check_consistency(),
            Vec::<String>::new()
        );
        // The scheduler's usage equals the validator's replayed usage, slot by slot.
        let c = self.placer.state().cluster();
        let mut mine: HashMap<(String, String), u128> = HashMap::new();
        for (i, s) in c.slot_ids().zip(c.slots()) {
            let used = self.placer.state().used(i);
            if used > 0 {
                mine.insert(
                    (
                        c.provider(s.provider).name.clone(),
                        c.class_name(s.class).to_string(),
                    ),
                    u128::from(used),
                );
            }
        }
        let theirs: HashMap<_, _> = self
            .validator
            .usage()
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        assert_eq!(mine, theirs);
        assert_eq!(
            self.placer.state().allocations().len(),
            self.validator.live_count()
        );
    }
}

fn fill(run: &mut Run, w: &Workload) {
    run.groups(w);
    for r in &w.requests {
        run.place(r);
    }
}

#[test]
fn w1_homogeneous_after_prefill_all_policies() {
    for policy in Policy::ALL {
        let mut run = Run::new(120, 11, policy);
        fill(&mut run, &generator::mixed(400, 1, "pre"));
        fill(&mut run, &generator::homogeneous(900, "w1-"));
        assert!(run.placed > 1200, "{policy:?} placed {}", run.placed);
        run.finish();
    }
}

#[test]
fn w2_mixed_until_failure_and_beyond() {
    let mut run = Run::new(100, 12, Policy::Pack);
    let w = generator::mixed(12_000, 2, "w2-");
    for r in &w.requests {
        run.place(r);
        if run.rejected > 300 {
            break;
        }
    }
    assert!(run.rejected > 0, "cluster should fill up");
    run.finish();
}

#[test]
fn w3_anti_affinity_groups_with_zone_spread() {
    let mut run = Run::new(90, 13, Policy::Spread);
    let w = generator::anti_affinity(600, 3, "w3-");
    fill(&mut run, &w);
    assert!(run.placed > 500);
    // Small groups on a big enough cluster: everything fits.
    assert_eq!(run.rejected, 0);
    run.finish();
}

#[test]
fn w3_anti_affinity_rejects_when_hosts_run_out() {
    let mut run = Run::new(6, 13, Policy::Spread);
    let g = scheduling::model::ServerGroupSpec {
        name: "g".into(),
        policy: scheduling::model::ServerGroupPolicy::AntiAffinity,
        max_per_host: None,
    };
    run.placer
        .state_mut()
        .create_server_group(g.clone())
        .unwrap();
    run.validator.add_group(&g);
    let mut ok = 0;
    for i in 0..10 {
        let mut r = PlacementRequest::new(format!("a{i}"), &[("VCPU", 1), ("MEMORY_MB", 512)]);
        r.server_group = Some("g".into());
        r.tolerations.push(scheduling::request::Toleration {
            operator: scheduling::request::TolerationOperator::Exists,
            ..Default::default()
        });
        if run.place(&r) {
            ok += 1;
        }
    }
    // Only hosts with VCPU inventory count (dedicated hosts have PCPU only).
    let vcpu_hosts = run
        .spec
        .hosts
        .iter()
        .filter(|h| {
            h.children
                .iter()
                .any(|c| c.inventories.contains_key("VCPU"))
        })
        .count();
    assert_eq!(ok, vcpu_hosts);
    let err = run.placer.place(&{
        let mut r = PlacementRequest::new("extra", &[("VCPU", 1)]);
        r.server_group = Some("g".into());
        r
    });
    let msg = err.unwrap_err().to_string();
    assert!(msg.contains("anti-affinity (group g)"), "{msg}");
    run.finish();
}

#[test]
fn w4_numa_pinned_with_hugepages() {
    let mut run = Run::new(60, 14, Policy::Pack);
    fill(&mut run, &generator::numa_pinned(3000, 4, "w4-"));
    assert!(run.rejected > 0, "fills up");
    run.finish();
}

#[test]
fn gpu_and_dedicated_requests() {
    let mut run = Run::new(200, 15, Policy::Spread);
    for i in 0..400 {
        run.place(&generator::gpu_request(format!("gpu{i}")));
        run.place(&generator::dedicated_request(format!("ded{i}"), 4));
    }
    assert!(run.placed > 100);
    run.finish();
}

#[test]
fn w5_churn_at_85_percent() {
    let mut run = Run::new(80, 16, Policy::Balanced);
    let mut r = SplitMix64::new(5);
    let mut live: Vec<String> = Vec::new();
    let mut i = 0;
    // Fill with mixed VMs until the first failure, then release 15% of VMs.
    loop {
        let req = generator::mixed_request(&mut r, format!("f{i}"));
        i += 1;
        if !run.place(&req) {
            break;
        }
        live.push(req.id.clone());
    }
    for _ in 0..live.len() * 15 / 100 {
        let k = r.below(live.len() as u64) as usize;
        let id = live.swap_remove(k);
        run.release(&id);
    }
    for _ in 0..3000 {
        if r.chance(50) && !live.is_empty() {
            let k = r.below(live.len() as u64) as usize;
            let id = live.swap_remove(k);
            run.release(&id);
        } else {
            let req = generator::mixed_request(&mut r, format!("c{i}"));
            i += 1;
            if run.place(&req) {
                live.push(req.id.clone());
            }
        }
    }
    run.finish();
}
