//! One VMI, one `keel`, even when the node agent dies between starting a `keel` and that
//! `keel` opening its API socket: the window where the next agent cannot ping it yet. Real
//! `keel` processes (no VM needed: the agent's command only opens the API), no API server.

#[macro_use]
mod harness;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use harness::processes::keel_processes_under;
use harness::{keel_binary, scratch};
use k8s_adapter::agent::vmm::{Vmm, VmmError};

/// A `keel` that takes a second to start: the agent's window, made wide enough to die in.
fn slow_keel(dir: &std::path::Path) -> std::path::PathBuf {
    let script = dir.join("slow-keel");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nsleep 1\nexec {} \"$@\"\n",
            keel_binary().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

#[tokio::test]
async fn an_agent_that_dies_before_its_keel_answers_leaves_one_keel_that_the_next_adopts() {
    let dir = scratch("agent-lock");
    let run_dir = dir.join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    let keel = slow_keel(&dir);

    // The first agent starts the VMM and dies while waiting for its API (the task is dropped;
    // the process it started lives on, as it does when the agent process dies).
    let starting = tokio::spawn({
        let (keel, run_dir) = (keel.clone(), run_dir.clone());
        async move { Vmm::spawn(&keel, &run_dir, "vmi-1").await.map(|_| ()) }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    starting.abort();
    assert!(
        !run_dir.join("vmi-1/api.sock").exists(),
        "the test must stop the agent before the keel's API is up"
    );

    // The next agent cannot ping it yet; the lock says it is alive, so it waits and adopts it
    // instead of starting a second one.
    let mut adopted = Vmm::adopt(&run_dir, "vmi-1")
        .await
        .expect("adopt")
        .expect("the starting keel is adopted, not forgotten");
    let running = keel_processes_under(&run_dir);
    assert_eq!(running, vec![adopted.pid], "one keel for the VMI");

    // Starting another while that one lives is refused.
    match Vmm::spawn(&keel_binary(), &run_dir, "vmi-1").await {
        Err(VmmError::Locked { .. }) => {}
        other => panic!("a second keel for the VMI was not refused: {other:?}"),
    }
    assert_eq!(keel_processes_under(&run_dir).len(), 1);

    // When it ends, the lock goes with it: nothing to adopt, and a new one may start.
    adopted.stop(Duration::ZERO).await;
    assert!(Vmm::adopt(&run_dir, "vmi-1").await.unwrap().is_none());
    let mut fresh = Vmm::spawn(&keel_binary(), &run_dir, "vmi-1").await.unwrap();
    assert_eq!(keel_processes_under(&run_dir), vec![fresh.pid]);
    fresh.stop(Duration::ZERO).await;
    let _ = std::fs::remove_dir_all(&dir);
}
