//! Keel's Kubernetes layer on the real control plane (etcd, kube-apiserver, kube-scheduler built
//! by `k8s-adapter/testenv/build.sh`), with keel-controller and keel-node-agent as real processes
//! running Keel's test guest on this machine's KVM. The harness's kubelet stand-in marks launcher
//! pods Running (see `k8s-adapter/tests/harness/kubelet.rs`); it does not take part in the
//! VMI's own phase.
//!
//! Prints:
//! 1. VMI create → Running latency, p50 and p99 over N VMIs (default 50) created one after the
//!    other (target: p50 ≤ 1 s; KubeVirt's CI: 15–25 s). Keel's test guest never halts (it
//!    spins between tick lines, watching the power button), so each guest would take a core for
//!    itself: every VMI is deleted once Running (ACPI power button) before the next one, else
//!    the spinning guests, not Keel, would set the latency on a 2-core machine;
//! 2. per-VM node overhead with M of them running together (default 10, second argument): the
//!    mean RSS and PSS of a `keel` process (guest pages the guest touched included, a few
//!    hundred KiB), plus the node agent's RSS growth divided by M (target: ≤ 10 MiB; KubeVirt
//!    ~290 MiB);
//! 3. keel-mode placement throughput at 1,000 Nodes: the controller's placement function (the
//!    cluster rebuilt from Node and Pod objects per decision, as each reconcile does) and a
//!    batch placer that keeps its state; then 200 `schedulerName: keel` VMIs against 1,000 real
//!    Node objects, created at once, timed until every launcher pod is bound.
//!
//! ```sh
//! cargo build --release -p keel -p k8s-adapter --bins   # the programs the bench runs
//! KEEL_BIN=$PWD/target/release/keel cargo bench -p benches --bench k8s -- [N [M]]
//! ```
//! The controller and agent are taken from `target/release/`, beside the bench; without
//! `KEEL_BIN` the harness builds a debug `keel`.

#[path = "../k8s-adapter/tests/harness/mod.rs"]
#[macro_use]
mod harness;

use std::time::{Duration, Instant};

use harness::processes::keel_processes_under;
use harness::{
    install_crds, vmi_manifest, Adapter, ControlPlane, NodeSpec, RUN_UNTIL_POWER_BUTTON,
};
use k8s_adapter::api::{Phase, VirtualMachineInstance};
use k8s_adapter::placement::{self, BatchPlacer};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Resident set size of `pid`, bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// A `/proc/PID/status` field in bytes.
fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// Proportional set size of `pid` (shared pages divided among their users), bytes.
fn pss(pid: u32) -> u64 {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

fn mib(bytes: f64) -> f64 {
    bytes / 1048576.0
}

fn synthetic_nodes(n: usize) -> Vec<Node> {
    (0..n)
        .map(|i| {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("node-{i:04}"), "labels": {
                    "topology.kubernetes.io/zone": format!("zone-{}", i % 3),
                    "kubernetes.io/hostname": format!("node-{i:04}")}},
                "spec": if i % 10 == 0 { serde_json::json!({"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}) } else { serde_json::json!({}) },
                "status": {"allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"}},
            }))
            .expect("node")
        })
        .collect()
}

fn keel_vmi(i: usize, memory: &str) -> VirtualMachineInstance {
    let text = vmi_manifest(
        &format!("vm-{i:05}"),
        RUN_UNTIL_POWER_BUTTON,
        memory,
        "  schedulerName: keel\n",
    );
    let mut vmi: VirtualMachineInstance = serde_saphyr::from_str(&text).expect("vmi");
    vmi.metadata.namespace = Some("default".into());
    vmi.metadata.uid = Some(format!("00000000-0000-0000-0000-{i:012}"));
    vmi
}

fn placement_in_process() {
    let nodes = synthetic_nodes(1000);
    // The controller's path: the cluster rebuilt from the objects for every decision, with the
    // pods placed so far (as listed from the API server).
    let mut pods: Vec<Pod> = Vec::new();
    let decisions = 300;
    let start = Instant::now();
    for i in 0..decisions {
        let vmi = keel_vmi(i, "2Gi");
        let node = placement::place(&vmi, &nodes, &pods, i as u64).expect("placed");
        let mut pod = k8s_adapter::pod::launcher_pod(&vmi, &Default::default()).expect("pod");
        if let Some(spec) = pod.spec.as_mut() {
            spec.node_name = Some(node);
        }
        pods.push(pod);
    }
    let per_decision = start.elapsed() / decisions as u32;
    println!(
        "keel-mode placement, 1000 nodes, controller path (cluster rebuilt per decision, {decisions} decisions): {:.0} placements/s ({:.2} ms each)",
        1.0 / per_decision.as_secs_f64(),
        per_decision.as_secs_f64() * 1e3
    );
    let mut placer = BatchPlacer::new(&nodes, &[], 7).expect("placer");
    let n = 20_000;
    let start = Instant::now();
    let mut placed = 0;
    for i in 0..n {
        if placer.place(&keel_vmi(i, "1Gi")).is_ok() {
            placed += 1;
        }
    }
    let elapsed = start.elapsed();
    println!(
        "keel-mode placement, 1000 nodes, batch placer ({placed}/{n} placed): {:.0} placements/s",
        placed as f64 / elapsed.as_secs_f64()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let numbers: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = numbers.first().copied().unwrap_or(50).max(1);
    let m = numbers.get(1).copied().unwrap_or(10).max(1);
    placement_in_process();
    for program in [
        harness::processes::controller_binary(),
        harness::processes::agent_binary(),
    ] {
        if !program.exists() {
            println!(
                "k8s bench: {} is missing (cargo build --release -p k8s-adapter --bins); only in-process placement measured",
                program.display()
            );
            return;
        }
    }
    if let Err(err) = harness::server_binaries() {
        println!(
            "k8s bench: control plane not available ({err}); only in-process placement measured"
        );
        return;
    }
    if let Some(reason) = testkit::kvm_unavailable() {
        println!("k8s bench: no KVM ({reason}); only in-process placement measured");
        return;
    }
    let dir = harness::scratch("bench");
    let plane = ControlPlane::start(&dir, true).expect("control plane");
    let client = plane.client().await.expect("client");
    plane
        .create_node(&client, &NodeSpec::new("node-a", "64", "64Gi"))
        .await
        .expect("node");
    install_crds(&plane);
    let adapter = Adapter::start(&plane, &["node-a"]).await;
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), "default");
    let agent_pid = adapter.agents[0].child.id();
    // Warm up (the first VMI also pays for the controller's and agent's first watches).
    let warm: VirtualMachineInstance =
        serde_saphyr::from_str(&vmi_manifest("warm-up", RUN_UNTIL_POWER_BUTTON, "64Mi", ""))
            .expect("vmi");
    vmis.create(&PostParams::default(), &warm)
        .await
        .expect("create");
    wait_running(&vmis, "warm-up").await;
    delete_and_wait(&vmis, "warm-up").await;
    let mut latencies = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("bench-{i:03}");
        let vmi: VirtualMachineInstance =
            serde_saphyr::from_str(&vmi_manifest(&name, RUN_UNTIL_POWER_BUTTON, "64Mi", ""))
                .expect("vmi");
        let start = Instant::now();
        vmis.create(&PostParams::default(), &vmi)
            .await
            .expect("create");
        wait_running(&vmis, &name).await;
        latencies.push(start.elapsed());
        delete_and_wait(&vmis, &name).await;
    }
    latencies.sort();
    println!(
        "VMI create → Running over {n} VMIs (one at a time): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (target p50 ≤ 1000 ms; KubeVirt 15–25 s)",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );

    // Overhead: M VMs running side by side.
    let agent_before = rss(agent_pid);
    let names: Vec<String> = (0..m).map(|i| format!("resident-{i:03}")).collect();
    for name in &names {
        let vmi: VirtualMachineInstance =
            serde_saphyr::from_str(&vmi_manifest(name, RUN_UNTIL_POWER_BUTTON, "64Mi", ""))
                .expect("vmi");
        vmis.create(&PostParams::default(), &vmi)
            .await
            .expect("create");
    }
    for name in &names {
        wait_running(&vmis, name).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pids = keel_processes_under(&adapter.agents[0].run_dir);
    let count = pids.len().max(1) as f64;
    let mean =
        |field: &str| pids.iter().map(|p| status_bytes(*p, field)).sum::<u64>() as f64 / count;
    let (rss_mean, anon, shmem, file) = (
        mean("VmRSS:"),
        mean("RssAnon:"),
        mean("RssShmem:"),
        mean("RssFile:"),
    );
    let pss: f64 = pids.iter().map(|p| pss(*p)).sum::<u64>() as f64 / count;
    let agent_share = rss(agent_pid).saturating_sub(agent_before) as f64 / m as f64;
    println!(
        "per-VM node overhead with {} VMs running (guest RAM 64 MiB, pages the guest touched included): keel RSS {:.2} MiB \
         (private {:.2} MiB, file-backed code {:.2} MiB shared by every keel on the node), PSS {:.2} MiB; \
         agent share {:.2} MiB; per VM = PSS + agent share = {:.2} MiB (target ≤ 10 MiB; the pod books {:.2} MiB; KubeVirt ~290 MiB)",
        pids.len(),
        mib(rss_mean),
        mib(anon + shmem),
        mib(file),
        mib(pss),
        mib(agent_share),
        mib(pss + agent_share),
        mib(k8s_adapter::overhead::memory_overhead_bytes(1, 64 << 20) as f64)
    );
    for name in &names {
        delete_and_wait(&vmis, name).await;
    }
    drop(adapter);
    drop(plane);

    // Keel-mode placement on the real API server: 1,000 Nodes, 200 VMIs at once, until bound.
    let dir = harness::scratch("bench-placement");
    let plane = ControlPlane::start(&dir, false).expect("control plane");
    let client = plane.client().await.expect("client");
    for i in 0..1000 {
        let mut spec = NodeSpec::new(&format!("node-{i:04}"), "32", "128Gi")
            .label("topology.kubernetes.io/zone", &format!("zone-{}", i % 3));
        if i % 10 == 0 {
            spec = spec.taint("dedicated=db:NoSchedule");
        }
        plane.create_node(&client, &spec).await.expect("node");
    }
    install_crds(&plane);
    let controller = harness::ControllerProcess::start(&plane, "bench");
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), "default");
    let count = 200;
    let start = Instant::now();
    for i in 0..count {
        let mut vmi = keel_vmi(i, "2Gi");
        vmi.metadata.uid = None;
        vmi.metadata.namespace = None;
        vmis.create(&PostParams::default(), &vmi)
            .await
            .expect("create");
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let bound = pods
            .list(&ListParams::default().labels("app.kubernetes.io/component=keel-launcher"))
            .await
            .map(|l| {
                l.items
                    .iter()
                    .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
                    .count()
            })
            .unwrap_or(0);
        if bound >= count || Instant::now() > deadline {
            let elapsed = start.elapsed();
            println!(
                "keel-mode placement on the real API server, 1000 Nodes: {bound}/{count} VMIs bound in {:.1} s ({:.1} VMIs/s, create → pods/binding)",
                elapsed.as_secs_f64(),
                bound as f64 / elapsed.as_secs_f64()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(controller);
}

/// Deletes a VMI (the agent presses the power button; the guest powers off) and waits until it
/// is gone.
async fn delete_and_wait(vmis: &Api<VirtualMachineInstance>, name: &str) {
    vmis.delete(name, &DeleteParams::default())
        .await
        .expect("delete");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !matches!(vmis.get_opt(name).await, Ok(None)) {
        assert!(Instant::now() < deadline, "{name} was never deleted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_running(vmis: &Api<VirtualMachineInstance>, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(vmi) = vmis.get(name).await {
            if vmi.status.as_ref().and_then(|s| s.phase) == Some(Phase::Running) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{name} never ran");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
