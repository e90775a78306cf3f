//! The test harness itself: the real etcd, kube-apiserver and kube-scheduler come up on this
//! machine, and kube-scheduler binds a pod to a harness-created Node.

#[macro_use]
mod harness;

use std::time::Duration;

use harness::{eventually, scratch, ControlPlane, NodeSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_control_plane_starts_and_kube_scheduler_binds_a_pod() {
    require_k8s!();
    let plane = ControlPlane::start(&scratch("smoke"), true).unwrap();
    let version = plane.kubectl_ok(&["version", "-o", "json"]).unwrap();
    assert!(version.contains("\"gitVersion\": \"v1.37.2\""), "{version}");
    let client = plane.client().await.unwrap();
    plane
        .create_node(
            &client,
            &NodeSpec::new("smoke-1", "4", "8Gi").label("topology.kubernetes.io/zone", "z1"),
        )
        .await
        .unwrap();
    let nodes = plane
        .kubectl_ok(&["get", "nodes", "-L", "topology.kubernetes.io/zone"])
        .unwrap();
    assert!(nodes.contains("smoke-1") && nodes.contains("z1"), "{nodes}");

    // An ordinary pod (not a launcher: nothing will run it) is placed by the real kube-scheduler.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "placed-by-kube-scheduler"},
        "spec": {"containers": [{"name": "c", "image": "example.invalid/none",
                  "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let node = eventually(
        "kube-scheduler to bind the pod",
        Duration::from_secs(60),
        || async {
            pods.get("placed-by-kube-scheduler")
                .await
                .ok()
                .and_then(|p| p.spec?.node_name)
        },
    )
    .await;
    assert_eq!(node, "smoke-1", "{}", plane.scheduler_log());
}
