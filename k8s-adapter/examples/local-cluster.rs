//! A local Kubernetes cluster for trying Keel's Kubernetes layer by hand: the real etcd,
//! kube-apiserver and kube-scheduler (built by `testenv/build.sh`), two Nodes, Keel's CRDs, the
//! controller, a node agent per node (running `keel` on this machine's KVM) and the test
//! harness's kubelet stand-in for launcher pods. Started by `scripts/k8s-local-cluster.sh`;
//! Ctrl-C stops everything.

#[path = "../tests/harness/mod.rs"]
#[macro_use]
mod harness;

use harness::{install_crds, Adapter, ControlPlane, NodeSpec};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::var_os("KEEL_CLUSTER_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("keel-local-cluster"));
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "starting etcd, kube-apiserver and kube-scheduler in {} ...",
        dir.display()
    );
    let plane = ControlPlane::start(&dir, true)?;
    let client = plane.client().await?;
    for (name, zone) in [("node-1", "zone-a"), ("node-2", "zone-b")] {
        let spec = NodeSpec::new(name, "4", "8Gi").label("topology.kubernetes.io/zone", zone);
        plane.create_node(&client, &spec).await?;
    }
    install_crds(&plane);
    let adapter = Adapter::start(&plane, &["node-1", "node-2"]).await;
    let guest = harness::test_guest();
    println!("export KUBECONFIG={}", plane.kubeconfig.display());
    println!("alias kubectl={}", plane.bin.join("kubectl").display());
    println!("# the test guest: {}", guest.display());
    for agent in &adapter.agents {
        println!("# console endpoint of {}: {}", agent.node, agent.console);
    }
    println!("# logs: {}", dir.display());
    println!("# Ctrl-C stops the cluster");
    tokio::signal::ctrl_c().await?;
    drop(adapter);
    drop(plane);
    Ok(())
}
