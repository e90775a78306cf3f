//! Failures against the real servers, not simulated: conflicts (409 on a stale
//! resourceVersion), leader election handing over, the controller, the node agent and
//! kube-apiserver itself killed and restarted mid-flight.

#[macro_use]
mod harness;

use std::time::Duration;

use harness::processes::keel_processes_under;
use harness::{
    eventually, install_crds, scratch, serial, vmi_manifest, Adapter, ControlPlane,
    ControllerProcess, NodeSpec, RUN_UNTIL_POWER_BUTTON,
};
use k8s_adapter::api::{Phase, VirtualMachineInstance};
use k8s_adapter::controller::leader::{Attempt, LeaseLock};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use testkit::require_kvm;

const LONG: Duration = Duration::from_secs(90);

async fn phase(api: &Api<VirtualMachineInstance>, name: &str) -> Option<Phase> {
    api.get_opt(name).await.ok()??.status?.phase
}

async fn holder(client: &kube::Client) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    leases
        .get_opt("keel-controller")
        .await
        .ok()??
        .spec?
        .holder_identity
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_resource_version_is_refused_with_409_and_only_one_candidate_leads() {
    require_k8s!();
    let _serial = serial().await;
    let plane = ControlPlane::start(&scratch("conflicts"), false).unwrap();
    let client = plane.client().await.unwrap();
    install_crds(&plane);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), "default");
    let manifest = vmi_manifest("contested", RUN_UNTIL_POWER_BUTTON, "64Mi", "");
    assert!(plane
        .kubectl_stdin(&["apply", "-f", "-"], &manifest)
        .status
        .success());

    // Two writers read the same version; the second write is refused by the real server.
    let stale = vmis.get("contested").await.unwrap();
    let mut first = stale.clone();
    first
        .metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert("writer".into(), "first".into());
    vmis.replace("contested", &PostParams::default(), &first)
        .await
        .unwrap();
    let mut second = stale;
    second
        .metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert("writer".into(), "second".into());
    match vmis
        .replace("contested", &PostParams::default(), &second)
        .await
    {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 409, "{e:?}"),
        other => panic!("a stale resourceVersion was not refused: {other:?}"),
    }

    // Leader election: two candidates, one Lease; the follower takes over only after expiry.
    let a = LeaseLock::new(
        client.clone(),
        "default",
        "election",
        "a",
        Duration::from_secs(2),
    );
    let b = LeaseLock::new(
        client.clone(),
        "default",
        "election",
        "b",
        Duration::from_secs(2),
    );
    let (ra, rb) = tokio::join!(a.try_acquire_or_renew(), b.try_acquire_or_renew());
    let leaders = [ra.unwrap(), rb.unwrap()]
        .iter()
        .filter(|r| **r == Attempt::Leader)
        .count();
    assert_eq!(
        leaders, 1,
        "exactly one candidate wins the race for a new Lease"
    );
    let (leader, follower) = match holder_of(&client, "election").await.as_deref() {
        Some("a") => (&a, &b),
        _ => (&b, &a),
    };
    assert!(matches!(
        follower.try_acquire_or_renew().await.unwrap(),
        Attempt::Follower { .. }
    ));
    assert_eq!(
        leader.try_acquire_or_renew().await.unwrap(),
        Attempt::Leader,
        "the holder renews"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        follower.try_acquire_or_renew().await.unwrap(),
        Attempt::Leader,
        "an expired Lease is taken over"
    );
    assert!(matches!(
        leader.try_acquire_or_renew().await.unwrap(),
        Attempt::Follower { .. }
    ));
}

async fn holder_of(client: &kube::Client, name: &str) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    leases.get_opt(name).await.ok()??.spec?.holder_identity
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_controller_the_agent_and_the_apiserver_mid_flight_converges_without_orphans() {
    require_k8s!();
    require_kvm!();
    let _serial = serial().await;
    let mut plane = ControlPlane::start(&scratch("restarts"), true).unwrap();
    let client = plane.client().await.unwrap();
    plane
        .create_node(&client, &NodeSpec::new("node-a", "4", "8Gi"))
        .await
        .unwrap();
    install_crds(&plane);
    let mut adapter = Adapter::start(&plane, &["node-a"]).await;
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), "default");
    eventually("controller-a to lead", LONG, || async {
        (holder(&client).await.as_deref() == Some("controller-a")).then_some(())
    })
    .await;
    let standby = ControllerProcess::start(&plane, "controller-b");

    let manifest = vmi_manifest("survivor", RUN_UNTIL_POWER_BUTTON, "64Mi", "");
    assert!(plane
        .kubectl_stdin(&["apply", "-f", "-"], &manifest)
        .status
        .success());
    eventually("Running", LONG, || async {
        (phase(&vmis, "survivor").await == Some(Phase::Running)).then_some(())
    })
    .await;
    let run_dir = adapter.agents[0].run_dir.clone();
    let pids = keel_processes_under(&run_dir);
    assert_eq!(pids.len(), 1, "{}", adapter.logs());

    // The leader dies: the standby takes the Lease and carries on.
    adapter.controller.kill();
    eventually("controller-b to lead", LONG, || async {
        (holder(&client).await.as_deref() == Some("controller-b")).then_some(())
    })
    .await;
    let manifest = vmi_manifest("after-handover", RUN_UNTIL_POWER_BUTTON, "64Mi", "");
    assert!(plane
        .kubectl_stdin(&["apply", "-f", "-"], &manifest)
        .status
        .success());
    eventually("the new leader runs a new VMI", LONG, || async {
        (phase(&vmis, "after-handover").await == Some(Phase::Running)).then_some(())
    })
    .await;

    // The agent dies and comes back: it re-adopts the running VMMs, starts no duplicate.
    let before: Vec<u32> = keel_processes_under(&run_dir);
    assert_eq!(before.len(), 2);
    adapter.agents[0].kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        keel_processes_under(&run_dir),
        before,
        "VMMs outlive the agent"
    );
    adapter.agents[0].restart();
    eventually("re-adoption", LONG, || async {
        (adapter.agents[0].log().matches("adopted VMM").count() >= 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        keel_processes_under(&run_dir),
        before,
        "no duplicate VM after the agent restart"
    );
    assert_eq!(phase(&vmis, "survivor").await, Some(Phase::Running));

    // kube-apiserver dies and comes back: every watch restarts; new work goes through.
    plane.kill_apiserver();
    tokio::time::sleep(Duration::from_secs(2)).await;
    plane.start_apiserver().unwrap();
    let manifest = vmi_manifest("after-apiserver", RUN_UNTIL_POWER_BUTTON, "64Mi", "");
    assert!(plane
        .kubectl_stdin(&["apply", "-f", "-"], &manifest)
        .status
        .success());
    eventually("Running after the API server restart", LONG, || async {
        (phase(&vmis, "after-apiserver").await == Some(Phase::Running)).then_some(())
    })
    .await;
    assert_eq!(keel_processes_under(&run_dir).len(), 3);

    // Deleting everything stops every VMM: nothing orphaned.
    for name in ["survivor", "after-handover", "after-apiserver"] {
        let out = plane.kubectl(&["delete", "vmi", name, "--timeout=60s"]);
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            adapter.logs()
        );
    }
    assert!(
        keel_processes_under(&run_dir).is_empty(),
        "{}",
        adapter.logs()
    );
    drop(standby);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vmi_deleted_while_its_agent_is_down_is_stopped_when_the_agent_returns() {
    require_k8s!();
    require_kvm!();
    let _serial = serial().await;
    let plane = ControlPlane::start(&scratch("finalizer"), true).unwrap();
    let client = plane.client().await.unwrap();
    plane
        .create_node(&client, &NodeSpec::new("node-a", "4", "8Gi"))
        .await
        .unwrap();
    install_crds(&plane);
    let mut adapter = Adapter::start(&plane, &["node-a"]).await;
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), "default");
    let manifest = vmi_manifest("held", RUN_UNTIL_POWER_BUTTON, "64Mi", "");
    assert!(plane
        .kubectl_stdin(&["apply", "-f", "-"], &manifest)
        .status
        .success());
    eventually("Running", LONG, || async {
        (phase(&vmis, "held").await == Some(Phase::Running)).then_some(())
    })
    .await;
    let run_dir = adapter.agents[0].run_dir.clone();

    adapter.agents[0].kill();
    plane
        .kubectl_ok(&["delete", "vmi", "held", "--wait=false"])
        .unwrap();
    // The agent's finalizer holds the VMI while its VMM may still run.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = vmis.get("held").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    assert!(
        held.finalizers().iter().any(|f| f == "keel.dev/node-agent"),
        "{:?}",
        held.finalizers()
    );
    assert_eq!(keel_processes_under(&run_dir).len(), 1);

    adapter.agents[0].restart();
    eventually("the VMI to go", LONG, || async {
        vmis.get_opt("held").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(
        keel_processes_under(&run_dir).is_empty(),
        "{}",
        adapter.logs()
    );
}

/// Launcher pods in `default`.
async fn launcher_pods(client: &kube::Client) -> usize {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.list(&ListParams::default().labels("app.kubernetes.io/component=keel-launcher"))
        .await
        .map(|l| l.items.len())
        .unwrap_or(usize::MAX)
}

/// Waits (polling every 5 ms) until `count` keel processes run under `dir`.
async fn until_vmms(dir: &std::path::Path, count: usize) {
    let deadline = std::time::Instant::now() + LONG;
    while keel_processes_under(dir).len() < count {
        assert!(
            std::time::Instant::now() < deadline,
            "no keel process started under {}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_killed_while_a_vmi_is_starting_converge_to_one_vmm_per_vmi() {
    require_k8s!();
    require_kvm!();
    let _serial = serial().await;
    let mut plane = ControlPlane::start(&scratch("mid-start"), true).unwrap();
    let client = plane.client().await.unwrap();
    plane
        .create_node(&client, &NodeSpec::new("node-a", "4", "8Gi"))
        .await
        .unwrap();
    install_crds(&plane);
    let mut adapter = Adapter::start(&plane, &["node-a"]).await;
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), "default");
    let run_dir = adapter.agents[0].run_dir.clone();
    eventually("controller-a to lead", LONG, || async {
        (holder(&client).await.as_deref() == Some("controller-a")).then_some(())
    })
    .await;

    // The controller dies as the VMI arrives (while it may be creating the launcher pod), and
    // the agent dies the moment it has started the VMM, before it could report it running.
    let manifest = vmi_manifest("interrupted", RUN_UNTIL_POWER_BUTTON, "64Mi", "");
    assert!(plane
        .kubectl_stdin(&["apply", "-f", "-"], &manifest)
        .status
        .success());
    adapter.controller.kill();
    adapter.controller = ControllerProcess::start(&plane, "controller-a");
    until_vmms(&run_dir, 1).await;
    adapter.agents[0].kill();
    let started = keel_processes_under(&run_dir);
    assert_eq!(started.len(), 1, "{}", adapter.logs());
    adapter.agents[0].restart();
    eventually("Running after both restarts", LONG, || async {
        (phase(&vmis, "interrupted").await == Some(Phase::Running)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        keel_processes_under(&run_dir),
        started,
        "the VMM started before the agent died is the one that runs: {}",
        adapter.logs()
    );
    assert_eq!(launcher_pods(&client).await, 1);

    // kube-apiserver dies as the next VMI's VMM starts: the agent's report waits for it.
    let manifest = vmi_manifest("through-outage", RUN_UNTIL_POWER_BUTTON, "64Mi", "");
    assert!(plane
        .kubectl_stdin(&["apply", "-f", "-"], &manifest)
        .status
        .success());
    until_vmms(&run_dir, 2).await;
    plane.kill_apiserver();
    tokio::time::sleep(Duration::from_secs(2)).await;
    plane.start_apiserver().unwrap();
    eventually("Running after the API server came back", LONG, || async {
        (phase(&vmis, "through-outage").await == Some(Phase::Running)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        keel_processes_under(&run_dir).len(),
        2,
        "{}",
        adapter.logs()
    );
    assert_eq!(launcher_pods(&client).await, 2);

    for name in ["interrupted", "through-outage"] {
        let out = plane.kubectl(&["delete", "vmi", name, "--timeout=60s"]);
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            adapter.logs()
        );
    }
    assert!(
        keel_processes_under(&run_dir).is_empty(),
        "{}",
        adapter.logs()
    );
}

use kube::ResourceExt;
