//! End to end on the real kube-apiserver, etcd and kube-scheduler, with keel-controller and
//! keel-node-agent as real processes and Keel's test guest on this machine's KVM.
//!
//! The only stand-in is the harness's kubelet for launcher pods (see `harness/kubelet.rs`): it
//! mirrors the node agent's report into the launcher pod's phase, as a kubelet would.

#[macro_use]
mod harness;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use harness::processes::keel_processes_under;
use harness::{
    eventually, install_crds, scratch, serial, vmi_manifest, Adapter, ControlPlane, NodeSpec,
    POWER_OFF_SOON, RUN_UNTIL_POWER_BUTTON,
};
use k8s_adapter::api::condition;
use k8s_adapter::api::{Phase, VirtualMachine, VirtualMachineInstance, VmmState};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::ResourceExt;
use testkit::require_kvm;

const LONG: Duration = Duration::from_secs(90);

async fn wait_phase(
    api: &Api<VirtualMachineInstance>,
    name: &str,
    phase: Phase,
    adapter: &Adapter,
) -> VirtualMachineInstance {
    let deadline = std::time::Instant::now() + LONG;
    loop {
        if let Ok(Some(vmi)) = api.get_opt(name).await {
            if vmi.status.as_ref().and_then(|s| s.phase) == Some(phase) {
                return vmi;
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "{name} never reached {phase:?}: {:#?}\n{}",
                    vmi.status,
                    adapter.logs()
                );
            }
        } else if std::time::Instant::now() > deadline {
            panic!("{name} does not exist\n{}", adapter.logs());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn launcher_pod(client: &kube::Client, vmi: &str) -> Option<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.list(&ListParams::default().labels(&format!("keel.dev/vmi={vmi}")))
        .await
        .ok()?
        .items
        .into_iter()
        .next()
}

/// Attaches to a VM's console through the node agent's endpoint and reads until `needle`.
fn console_until(addr: std::net::SocketAddr, key: &str, needle: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect to the console endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    writeln!(stream, "{key}").expect("send the VM's name");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut first = String::new();
    reader.read_line(&mut first).expect("read the answer");
    assert_eq!(first, "OK\n", "console endpoint refused {key}");
    let mut text = String::new();
    let mut buf = [0u8; 1024];
    while !text.contains(needle) {
        let n = reader.read(&mut buf).expect("console output");
        assert!(n > 0, "console closed before {needle:?}: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vmi_applied_with_kubectl_is_placed_by_kube_scheduler_runs_on_kvm_and_ends() {
    require_k8s!();
    require_kvm!();
    let _serial = serial().await;
    let plane = ControlPlane::start(&scratch("mode-a"), true).unwrap();
    let client = plane.client().await.unwrap();
    plane
        .create_node(&client, &NodeSpec::new("node-a", "4", "8Gi"))
        .await
        .unwrap();
    install_crds(&plane);
    let adapter = Adapter::start(&plane, &["node-a"]).await;
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), "default");

    // A guest that runs until the power button: applied with kubectl, it reaches Running.
    let manifest = vmi_manifest("ticker", RUN_UNTIL_POWER_BUTTON, "64Mi", "");
    let out = plane.kubectl_stdin(&["apply", "-f", "-"], &manifest);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let vmi = wait_phase(&vmis, "ticker", Phase::Running, &adapter).await;
    let status = vmi.status.clone().unwrap();
    assert_eq!(status.node_name.as_deref(), Some("node-a"));
    let ready = condition::find(&status.conditions, condition::READY).unwrap();
    assert!(ready.is_true(), "{status:#?}");
    let report = status.node_report.clone().unwrap();
    assert_eq!(report.state, VmmState::Running);
    // Mode (a): the real kube-scheduler bound the launcher pod.
    let pod = launcher_pod(&client, "ticker").await.unwrap();
    let spec = pod.spec.clone().unwrap();
    assert_eq!(spec.node_name.as_deref(), Some("node-a"));
    assert_eq!(spec.scheduler_name.as_deref(), Some("default-scheduler"));
    let events = plane
        .kubectl_ok(&[
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.name={},reason=Scheduled", pod.name_any()),
            "-o",
            "jsonpath={.items[*].reportingComponent}{.items[*].source.component}",
        ])
        .unwrap();
    assert!(events.contains("default-scheduler"), "{events:?}");
    // One keel process, the one the report names.
    let run_dir = &adapter.agents[0].run_dir;
    assert_eq!(keel_processes_under(run_dir), vec![report.pid.unwrap()]);
    // kubectl shows the printer columns.
    let table = plane.kubectl_ok(&["get", "vmi", "ticker"]).unwrap();
    assert!(
        table.contains("Running") && table.contains("node-a") && table.contains("True"),
        "{table}"
    );
    // The console, through the agent's endpoint: the banner (kept from boot) and live ticks.
    let text = console_until(adapter.agents[0].console, "default/ticker", "tick 3");
    assert!(text.contains("keel-guest: boot protocol="), "{text}");
    let tail = eventually("console lines in status", LONG, || async {
        let s = vmis.get("ticker").await.ok()?.status?;
        s.node_report
            .filter(|r| r.console_tail.iter().any(|l| l.contains("tick")))
            .map(|r| r.console_tail)
    })
    .await;
    assert!(tail.len() <= 10, "{tail:?}");

    // A guest that powers off by itself: Succeeded, with keel's exit reason.
    let manifest = vmi_manifest("short", POWER_OFF_SOON, "64Mi", "");
    assert!(plane
        .kubectl_stdin(&["apply", "-f", "-"], &manifest)
        .status
        .success());
    let done = wait_phase(&vmis, "short", Phase::Succeeded, &adapter).await;
    let report = done
        .status
        .as_ref()
        .and_then(|s| s.node_report.clone())
        .unwrap();
    assert_eq!(
        report.exit_reason.as_deref(),
        Some("shutdown"),
        "{report:?}"
    );
    assert_eq!(report.state, VmmState::Exited);
    let pod_phase = eventually("the stand-in to mark the pod Succeeded", LONG, || async {
        launcher_pod(&client, "short")
            .await?
            .status?
            .phase
            .filter(|p| p == "Succeeded")
    })
    .await;
    assert_eq!(pod_phase, "Succeeded");

    // Deleting the running VMI: the agent presses the power button, the guest powers off, the
    // finalizers go, the pod goes, and no keel process is left.
    let out = plane.kubectl(&["delete", "vmi", "ticker", "--timeout=60s"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        adapter.logs()
    );
    assert!(vmis.get_opt("ticker").await.unwrap().is_none());
    eventually("the launcher pod to go", LONG, || async {
        launcher_pod(&client, "ticker")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        keel_processes_under(run_dir).is_empty(),
        "{}",
        adapter.logs()
    );
    assert!(
        adapter.agents[0].log().contains("power button"),
        "{}",
        adapter.logs()
    );
    plane.kubectl_ok(&["delete", "vmi", "short"]).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_with_run_strategy_always_is_restarted_and_halting_it_stops_it() {
    require_k8s!();
    require_kvm!();
    let _serial = serial().await;
    let plane = ControlPlane::start(&scratch("run-strategy"), true).unwrap();
    let client = plane.client().await.unwrap();
    plane
        .create_node(&client, &NodeSpec::new("node-a", "4", "8Gi"))
        .await
        .unwrap();
    install_crds(&plane);
    let adapter = Adapter::start(&plane, &["node-a"]).await;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), "default");
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), "default");
    let spec = harness::vmi_spec(POWER_OFF_SOON, "64Mi", "")
        .lines()
        .map(|l| format!("      {l}\n"))
        .collect::<String>();
    let manifest = format!(
        "apiVersion: keel.dev/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: looper\nspec:\n  runStrategy: Always\n  template:\n    metadata:\n      labels: {{app: looper}}\n    spec:\n{spec}"
    );
    let out = plane.kubectl_stdin(&["apply", "-f", "-"], &manifest);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = eventually("the first instance", LONG, || async {
        vmis.get_opt("looper").await.ok()?.and_then(|v| v.uid())
    })
    .await;
    // The guest powers off; the VM starts a new instance.
    let restarts = eventually("a restart", LONG, || async {
        let status = vms.get("looper").await.ok()?.status?;
        (status.restarts >= 1).then_some(status.restarts)
    })
    .await;
    assert!(restarts >= 1);
    let second = eventually("a new instance", LONG, || async {
        vmis.get_opt("looper")
            .await
            .ok()?
            .and_then(|v| v.uid())
            .filter(|u| *u != first)
    })
    .await;
    assert_ne!(first, second);
    let vmi = vmis.get("looper").await.unwrap();
    assert_eq!(vmi.labels().get("app").map(String::as_str), Some("looper"));
    // Halted: the instance is deleted and the VM reads Stopped.
    plane
        .kubectl_ok(&[
            "patch",
            "vm",
            "looper",
            "--type=merge",
            "-p",
            "{\"spec\":{\"runStrategy\":\"Halted\"}}",
        ])
        .unwrap();
    eventually("Stopped", LONG, || async {
        let status = vms.get("looper").await.ok()?.status?;
        (status.printable_status.as_deref() == Some("Stopped")).then_some(())
    })
    .await;
    assert!(vmis.get_opt("looper").await.unwrap().is_none());
    eventually("no keel process", LONG, || async {
        keel_processes_under(&adapter.agents[0].run_dir)
            .is_empty()
            .then_some(())
    })
    .await;
    let table = plane.kubectl_ok(&["get", "vm", "looper"]).unwrap();
    assert!(table.contains("Stopped"), "{table}");
    // Deleting the VM (finalizer-aware) leaves nothing.
    plane
        .kubectl_ok(&["delete", "vm", "looper", "--timeout=60s"])
        .unwrap();
    assert!(vms.get_opt("looper").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keel_places_vmis_itself_and_explains_one_that_fits_nowhere() {
    require_k8s!();
    require_kvm!();
    let _serial = serial().await;
    let plane = ControlPlane::start(&scratch("mode-b"), true).unwrap();
    let client = plane.client().await.unwrap();
    for node in [
        NodeSpec::new("big", "4", "8Gi").label("topology.kubernetes.io/zone", "z1"),
        NodeSpec::new("small-1", "4", "512Mi").label("topology.kubernetes.io/zone", "z1"),
        NodeSpec::new("small-2", "4", "512Mi").label("topology.kubernetes.io/zone", "z2"),
        NodeSpec::new("reserved", "8", "32Gi").taint("dedicated=db:NoSchedule"),
    ] {
        plane.create_node(&client, &node).await.unwrap();
    }
    install_crds(&plane);
    let adapter = Adapter::start(&plane, &["big", "small-1", "small-2", "reserved"]).await;
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), "default");

    // 1 GiB fits only on `big` (the small nodes lack memory, `reserved` is tainted).
    let manifest = vmi_manifest(
        "placed",
        RUN_UNTIL_POWER_BUTTON,
        "1Gi",
        "  schedulerName: keel\n",
    );
    assert!(plane
        .kubectl_stdin(&["apply", "-f", "-"], &manifest)
        .status
        .success());
    let vmi = wait_phase(&vmis, "placed", Phase::Running, &adapter).await;
    assert_eq!(vmi.status.unwrap().node_name.as_deref(), Some("big"));
    let pod = launcher_pod(&client, "placed").await.unwrap();
    assert_eq!(
        pod.spec.as_ref().unwrap().scheduler_name.as_deref(),
        Some("keel")
    );
    let events = plane
        .kubectl_ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=placed,reason=Scheduled",
            "-o",
            "jsonpath={.items[*].note}{.items[*].message}",
        ])
        .unwrap();
    assert!(events.contains("placed on big by keel"), "{events:?}");
    assert!(
        !plane.scheduler_log().contains(&pod.name_any()),
        "kube-scheduler touched a keel pod"
    );

    // 20 GiB fits nowhere (only the tainted node has that much): Pending, with Keel's
    // explanation in PodScheduled, read back with kubectl.
    let manifest = vmi_manifest(
        "too-big",
        RUN_UNTIL_POWER_BUTTON,
        "20Gi",
        "  schedulerName: keel\n",
    );
    assert!(plane
        .kubectl_stdin(&["apply", "-f", "-"], &manifest)
        .status
        .success());
    let message = eventually("the explanation", LONG, || async {
        let out = plane
            .kubectl_ok(&[
                "get",
                "vmi",
                "too-big",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].message}",
            ])
            .ok()?;
        (!out.is_empty()).then_some(out)
    })
    .await;
    assert_eq!(
        message,
        "0/4 nodes available: 3 insufficient memory, 1 untolerated taint dedicated=db:NoSchedule",
        "{}",
        adapter.logs()
    );
    let phase = plane
        .kubectl_ok(&["get", "vmi", "too-big", "-o", "jsonpath={.status.phase}"])
        .unwrap();
    assert_eq!(phase, "Pending");
    let reason = plane
        .kubectl_ok(&[
            "get",
            "vmi",
            "too-big",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].reason}",
        ])
        .unwrap();
    assert_eq!(reason, "Unschedulable");
    assert!(launcher_pod(&client, "too-big")
        .await
        .unwrap()
        .spec
        .unwrap()
        .node_name
        .is_none());

    // A toleration opens the tainted node (a node selector picks it among those that fit).
    let manifest = vmi_manifest(
        "tolerant",
        RUN_UNTIL_POWER_BUTTON,
        "64Mi",
        "  schedulerName: keel\n  nodeSelector: {kubernetes.io/hostname: reserved}\n  tolerations: [{key: dedicated, operator: Equal, value: db, effect: NoSchedule}]\n",
    );
    assert!(plane
        .kubectl_stdin(&["apply", "-f", "-"], &manifest)
        .status
        .success());
    let vmi = wait_phase(&vmis, "tolerant", Phase::Running, &adapter).await;
    assert_eq!(vmi.status.unwrap().node_name.as_deref(), Some("reserved"));

    for name in ["placed", "too-big", "tolerant"] {
        plane
            .kubectl_ok(&["delete", "vmi", name, "--timeout=60s"])
            .unwrap();
    }
    for agent in &adapter.agents {
        assert!(
            keel_processes_under(&agent.run_dir).is_empty(),
            "{}",
            adapter.logs()
        );
    }
}
