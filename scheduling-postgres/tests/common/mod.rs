//! Shared by the integration tests: a real PostgreSQL per test binary (or per test that restarts
//! it), and small clusters.

#![allow(dead_code)]

use scheduling_postgres::testing::TempPostgres;

/// Set to 1 by CI: a missing PostgreSQL is a failure there, not a skip.
const REQUIRE: &str = "KEEL_REQUIRE_POSTGRES";

/// Starts a server, or returns `None` (printing why) where PostgreSQL is not installed and CI
/// does not require it.
pub fn server() -> Option<TempPostgres> {
    match TempPostgres::start() {
        Ok(s) => Some(s),
        Err(e @ scheduling_postgres::testing::TempPostgresError::NotInstalled)
            if std::env::var(REQUIRE).as_deref() != Ok("1") =>
        {
            eprintln!("KEEL-POSTGRES-SKIP: {e}");
            None
        }
        Err(e) => panic!("starting PostgreSQL: {e}"),
    }
}

/// A fresh server with a database `name` holding the schema. Each test owns its server, so that
/// it is stopped and removed when the test ends (a server in a `static` would outlive the test
/// process: statics are never dropped).
pub fn database(name: &str) -> Option<(TempPostgres, String)> {
    let server = server()?;
    let db = server.create_database(name).expect("createdb");
    scheduling_postgres::init(&db).expect("schema");
    Some((server, db))
}

/// A cluster of `n` flat hosts with `cpus` VCPU and `mem` MEMORY_MB each.
pub fn flat_cluster(n: usize, cpus: i64, mem: i64) -> scheduling::ClusterSpec {
    let hosts: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"name": "h{i}", "zone": "z{}", "inventories": {{"VCPU": {{"total": {cpus}}}, "MEMORY_MB": {{"total": {mem}}}}}}}"#,
                i % 2
            )
        })
        .collect();
    serde_json::from_str(&format!(r#"{{"hosts": [{}]}}"#, hosts.join(","))).expect("cluster")
}

pub mod check;

use scheduling::generator::{self, ClusterShape};
use scheduling::request::{RequestStream, StreamEvent};
use std::path::Path;

/// The projects requests are spread over (request `i` is in project `p{i % 10}`, user
/// `u{i % 3}`), and the quotas the tests set on some of them.
pub const PROJECTS: usize = 10;

/// Quotas that bind: project p0 at 1,000 VMs (it asks for about 2,000), project p1 at 6,000
/// VCPU, user u1 of project p2 at 300 VMs.
pub fn quotas() -> Vec<(
    scheduling::state::QuotaScope,
    scheduling::state::QuotaLimits,
)> {
    use scheduling::state::{QuotaLimits, QuotaScope};
    vec![
        (
            QuotaScope::Project("p0".into()),
            QuotaLimits {
                instances: Some(1000),
                resources: Default::default(),
            },
        ),
        (
            QuotaScope::Project("p1".into()),
            QuotaLimits {
                instances: None,
                resources: [("VCPU".to_string(), 6000)].into(),
            },
        ),
        (
            QuotaScope::User {
                project: "p2".into(),
                user: "u1".into(),
            },
            QuotaLimits {
                instances: Some(300),
                resources: Default::default(),
            },
        ),
    ]
}

/// A generated cluster of `hosts` (NUMA trees, GPU hosts, tainted dedicated hosts, a shared
/// storage pool per zone) and a stream of `vms` requests: mixed flavours, and a third in
/// anti-affinity groups spread over zones; every request in a project.
pub fn workload(hosts: usize, vms: usize, seed: u64) -> (scheduling::ClusterSpec, RequestStream) {
    let cluster = generator::cluster(ClusterShape::new(hosts, seed));
    let groups = generator::anti_affinity(vms / 3, seed + 1, "aa");
    let mixed = generator::mixed(vms - groups.requests.len(), seed + 2, "vm");
    // Interleave, so that members of one group go to different deciders' shards.
    let mut requests = Vec::with_capacity(vms);
    let mut g = groups.requests.into_iter();
    let mut m = mixed.requests.into_iter();
    loop {
        match (m.next(), g.next()) {
            (None, None) => break,
            (a, b) => requests.extend(a.into_iter().chain(b)),
        }
    }
    for (i, r) in requests.iter_mut().enumerate() {
        r.project = Some(format!("p{}", i % PROJECTS));
        r.user = Some(format!("u{}", i % 3));
    }
    let stream = RequestStream {
        server_groups: groups.server_groups,
        events: requests
            .into_iter()
            .map(|r| StreamEvent::Place(Box::new(r)))
            .collect(),
    };
    (cluster, stream)
}

/// Writes `value` as JSON to `path`.
pub fn write_json(path: &Path, value: &impl serde::Serialize) {
    std::fs::write(path, serde_json::to_vec(value).expect("serialize")).expect("write");
}

/// A scratch directory for a test's files.
pub fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-pg-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// The keel-placement program Cargo built for these tests.
pub fn program() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_keel-placement"))
}
