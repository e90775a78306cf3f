//! The API a manager uses: NUMA nodes in placements, taints as kubectl text, quotas that no number
//! of concurrent deciders can exceed.

use scheduling::generator::{self, ClusterShape};
use scheduling::request::GroupPolicy;
use scheduling::state::{QuotaLimits, QuotaScope};
use scheduling::{
    Cluster, CommitError, PlaceError, PlacementRequest, Placer, Policy, Profile, Scheduler,
    SharedState, State,
};
use std::sync::Arc;

#[test]
fn placements_name_the_numa_node_of_every_allocation() {
    let json = r#"{"hosts": [{"name": "h", "inventories": {"DISK_GB": {"total": 100}},
      "children": [
        {"name": "h-n0", "traits": ["HW_NUMA_ROOT"], "inventories": {"VCPU": {"total": 8}, "MEMORY_MB": {"total": 4096}}},
        {"name": "h-n1", "traits": ["HW_NUMA_ROOT"], "inventories": {"VCPU": {"total": 8}, "MEMORY_MB": {"total": 8192}},
         "children": [{"name": "h-gpu1", "inventories": {"VGPU": {"total": 2}}}]},
        {"name": "h-socket7", "numa_node": 7, "traits": ["CUSTOM_PIN"], "inventories": {"MEMORY_MB": {"total": 1024}}}]}]}"#;
    let mut p = Placer::new(
        Arc::new(Cluster::from_json(json).unwrap()),
        Profile::default(),
        1,
    );
    let req: PlacementRequest = serde_json::from_str(
        r#"{"id": "vm", "resources": {"DISK_GB": 10},
            "groups": [{"name": "numa", "resources": {"VCPU": 4, "MEMORY_MB": 6000}},
                       {"name": "gpu", "resources": {"VGPU": 1}},
                       {"name": "pin", "resources": {"MEMORY_MB": 512}, "required_traits": ["CUSTOM_PIN"]}],
            "group_policy": "isolate", "same_subtree": [["numa", "gpu"]]}"#,
    )
    .unwrap();
    let placed = p.place(&req).unwrap();
    let numa: Vec<(&str, &str, Option<u32>)> = placed
        .resources
        .iter()
        .map(|r| (r.provider.as_str(), r.class.as_str(), r.numa_node))
        .collect();
    assert_eq!(
        numa,
        vec![
            ("h-n1", "MEMORY_MB", Some(1)),
            ("h-n1", "VCPU", Some(1)),
            ("h-gpu1", "VGPU", Some(1)),
            ("h-socket7", "MEMORY_MB", Some(7)),
            ("h", "DISK_GB", None),
        ]
    );
    assert_eq!(req.group_policy, GroupPolicy::Isolate);
    // Persisted and restored: the same placement.
    let stored = serde_json::to_string(&placed).unwrap();
    assert!(stored.contains(r#""numa_node":1"#), "{stored}");
    let back: scheduling::Placement = serde_json::from_str(&stored).unwrap();
    let state = State::restore(p.state().cluster().clone(), &[back]).unwrap();
    assert_eq!(state.placements(), vec![placed]);
}

#[test]
fn taints_and_tolerations_read_kubectl_text_in_documents() {
    let json = r#"{"hosts": [
      {"name": "hpc", "taints": ["dedicated=hpc:NoSchedule"], "inventories": {"VCPU": {"total": 8}}},
      {"name": "maint", "taints": [{"key": "maintenance", "effect": "NoExecute"}], "inventories": {"VCPU": {"total": 8}}}]}"#;
    let cluster = Arc::new(Cluster::from_json(json).unwrap());
    assert_eq!(
        cluster.host(cluster.host_id("hpc").unwrap()).taints[0].to_string(),
        "dedicated=hpc:NoSchedule"
    );
    let mut p = Placer::new(cluster, Profile::default(), 1);
    let plain = PlacementRequest::new("a", &[("VCPU", 1)]);
    assert_eq!(
        p.place(&plain).unwrap_err().to_string(),
        "0/2 hosts available: 1 untolerated taint dedicated=hpc:NoSchedule, 1 untolerated taint maintenance:NoExecute"
    );
    let req: PlacementRequest = serde_json::from_str(
        r#"{"id": "b", "resources": {"VCPU": 1}, "tolerations": ["dedicated=hpc:NoSchedule"]}"#,
    )
    .unwrap();
    assert_eq!(p.place(&req).unwrap().host, "hpc");
    // The same in YAML, where the text form is a plain scalar.
    let yaml = "hosts:\n  - name: hpc\n    taints: [dedicated=hpc:NoSchedule]\n    inventories: {VCPU: {total: 8}}\n";
    let spec: scheduling::ClusterSpec =
        scheduling::load::parse(yaml, scheduling::load::Format::Yaml).unwrap();
    assert_eq!(
        spec.hosts[0].taints[0].to_string(),
        "dedicated=hpc:NoSchedule"
    );
    let req: PlacementRequest = scheduling::load::parse(
        "{id: c, resources: {VCPU: 1}, tolerations: [{key: dedicated, operator: Exists}], user: u}",
        scheduling::load::Format::Yaml,
    )
    .unwrap();
    assert_eq!(req.tolerations[0].to_string(), "dedicated");
    let err = p.place(&req).unwrap_err().to_string();
    assert_eq!(
        err,
        "request `c`: field `user` needs `project` (quotas count a user's VMs within a project)"
    );
    let bad = Cluster::from_json(
        r#"{"hosts": [{"name": "x", "taints": ["dedicated=hpc"], "inventories": {"VCPU": {"total": 8}}}]}"#,
    )
    .unwrap_err();
    assert!(
        bad.to_string()
            .contains("invalid taint `dedicated=hpc`: expected key=value:Effect or key:Effect"),
        "{bad}"
    );
}

#[test]
fn policies_parse_from_text() {
    assert_eq!("pack".parse::<Policy>().unwrap(), Policy::Pack);
    assert_eq!(Policy::StrandedAware.to_string(), "stranded_aware");
}

/// Two deciders on both cores race to place VMs of one project whose quota holds ten: exactly ten
/// land, whichever decider commits them, and the usage never passes the limits.
#[test]
fn a_quota_is_never_exceeded_by_two_concurrent_deciders() {
    let spec = generator::cluster(ClusterShape::new(60, 3));
    let mut state = State::new(Arc::new(Cluster::from_spec(&spec).unwrap()));
    let project = QuotaScope::Project("web".into());
    let alice = QuotaScope::User {
        project: "web".into(),
        user: "alice".into(),
    };
    state
        .set_quota(
            project.clone(),
            QuotaLimits {
                instances: Some(10),
                resources: [("VCPU".to_string(), 40)].into(),
            },
        )
        .unwrap();
    state
        .set_quota(
            alice.clone(),
            QuotaLimits {
                instances: Some(4),
                resources: Default::default(),
            },
        )
        .unwrap();
    let shared = Arc::new(SharedState::new(state));
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let mut sched = Scheduler::new(Arc::new(Profile::for_policy(Policy::Pack)), t);
                let (mut placed, mut refused) = (0, 0);
                for i in 0..40 {
                    let mut r = PlacementRequest::new(format!("t{t}-{i}"), &[("VCPU", 2)]);
                    r.project = Some("web".into());
                    r.user = Some(if i % 2 == 0 { "alice" } else { "bob" }.into());
                    match shared.place(&mut sched, &r) {
                        Ok(_) => placed += 1,
                        Err(PlaceError::Commit(CommitError::QuotaExceeded {
                            limit, used, ..
                        })) => {
                            assert!(used <= limit);
                            refused += 1;
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                (placed, refused)
            })
        })
        .collect();
    let results: Vec<(u32, u32)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let placed: u32 = results.iter().map(|r| r.0).sum();
    assert_eq!(placed, 10, "{results:?}");
    let state = Arc::try_unwrap(shared).unwrap().into_inner();
    let usage = state.quota_usage(&project);
    assert_eq!(usage.instances, 10);
    assert_eq!(usage.resources["VCPU"], 20);
    assert!(state.quota_usage(&alice).instances <= 4);
    assert_eq!(state.allocations().len(), 10);
    assert!(state.check_consistency().is_empty());
    // Releasing makes room again; a resize past the VCPU limit is refused.
    let mut state = state;
    let first = state.placements()[0].consumer.clone();
    state.release(&first).unwrap();
    assert_eq!(state.quota_usage(&project).instances, 9);
}
