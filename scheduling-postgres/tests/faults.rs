//! Faults in the middle of a run: three decider processes (the `keel-placement` program) place a
//! stream; one is killed with SIGKILL while it commits, then PostgreSQL itself is stopped at once
//! (`pg_ctl stop -m immediate`, a crash: no checkpoint, every client cut off) and started again.
//! The survivors reconnect and carry on, the killed decider is started again with `--resume`, and
//! at the end:
//! - the independent check finds every allocation whole, nothing over capacity or quota, no
//!   anti-affinity broken, no VM twice;
//! - every request got exactly one answer across the runs that finished (placed, placed already
//!   by the killed run, or refused by the quota), and the database holds exactly the VMs placed;
//! - the three deciders' replicas converged: each holds the database's allocations exactly (the
//!   same digest of sorted `(consumer, host)` pairs as the test computes from the database).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HOSTS: usize = 1_000;
const VMS: usize = 3_000;
/// Project p0's instance quota; p0 asks for VMS / PROJECTS = 300 VMs.
const P0_LIMIT: u64 = 150;

fn decider(db: &str, shard: usize, seed: u64, resume: bool, stream: &std::path::Path) -> Child {
    let mut cmd: Command = common::program();
    cmd.args(["--db", db, "place", "--quiet", "--json", "--window", "16"])
        .arg("--seed")
        .arg(seed.to_string())
        .arg("--shard")
        .arg(format!("{shard}/3"))
        .arg("--linger-until")
        .arg((VMS as u64 - P0_LIMIT).to_string());
    if resume {
        cmd.arg("--resume");
    }
    cmd.arg(stream)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a decider")
}

fn summary(child: Child) -> serde_json::Value {
    let out = child.wait_with_output().expect("decider");
    let text = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let s: serde_json::Value = serde_json::from_str(text.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("summary ({e}): {text}\n{stderr}"));
    eprintln!("decider: {s}");
    for line in stderr.lines() {
        eprintln!("  | {line}");
    }
    // Losing the connection is expected here; a replica out of step with the database is not.
    assert!(!stderr.contains("skipped a generation"), "{stderr}");
    assert!(!stderr.contains("conflicting commits in a row"), "{stderr}");
    assert_eq!(s["other"], 0, "{s}\n{text}\n{stderr}");
    assert_eq!(s["unschedulable"], 0, "{s}");
    s
}

fn consumers(db: &str) -> Option<i64> {
    let mut c = postgres::Client::connect(db, postgres::NoTls).ok()?;
    Some(
        c.query_one("SELECT count(*) FROM keel_consumers", &[])
            .ok()?
            .get(0),
    )
}

/// The digest `keel-placement` prints, computed from the database.
fn database_digest(db: &str) -> (usize, String) {
    use std::hash::{Hash, Hasher};
    let mut c = postgres::Client::connect(db, postgres::NoTls).expect("connect");
    let rows = c
        .query("SELECT id, host FROM keel_consumers", &[])
        .expect("read");
    let owned: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut pairs: Vec<(&str, &str)> = owned
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    pairs.sort_unstable();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    pairs.hash(&mut h);
    (pairs.len(), format!("{:016x}", h.finish()))
}

#[test]
fn a_killed_decider_and_a_database_crash_lose_nothing_and_the_deciders_converge() {
    let Some(server) = common::server() else {
        return;
    };
    let db = server.create_database("faults").expect("createdb");
    scheduling_postgres::init(&db).expect("schema");
    let (spec, stream) = common::workload(HOSTS, VMS, 33);
    let quotas = vec![(
        scheduling::state::QuotaScope::Project("p0".into()),
        scheduling::state::QuotaLimits {
            instances: Some(P0_LIMIT),
            resources: Default::default(),
        },
    )];
    scheduling_postgres::load_cluster(&db, &spec, false).expect("load");
    {
        let store =
            scheduling_postgres::PgStore::connect(scheduling_postgres::StoreConfig::new(&db))
                .expect("connect");
        for (scope, limits) in &quotas {
            store
                .set_quota(scope.clone(), limits.clone())
                .expect("quota");
        }
    }
    let dir = common::scratch("faults");
    let stream_file = dir.join("requests.json");
    common::write_json(&stream_file, &stream);

    let mut deciders: Vec<Child> = (0..3)
        .map(|i| decider(&db, i, i as u64, false, &stream_file))
        .collect();

    // Kill decider 0 once a fifth of the VMs are in, while everyone commits.
    let deadline = Instant::now() + Duration::from_secs(300);
    let at_kill = loop {
        let n = consumers(&db).unwrap_or(0);
        if n >= (VMS / 5) as i64 {
            break n;
        }
        assert!(
            Instant::now() < deadline,
            "the deciders made no progress: {n} VMs"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    deciders[0].kill().expect("kill -9 decider 0");
    let killed = deciders
        .remove(0)
        .wait_with_output()
        .expect("reap decider 0");
    assert!(
        !killed.status.success(),
        "decider 0 ended before it was killed"
    );
    eprintln!("killed decider 0 at {at_kill} VMs in the database");

    // Then crash the database under the two survivors, and bring it back.
    std::thread::sleep(Duration::from_millis(200));
    let before_crash = consumers(&db).unwrap_or(0);
    server.crash().expect("crash PostgreSQL");
    std::thread::sleep(Duration::from_millis(700));
    server.start_again().expect("start PostgreSQL again");
    let after_crash = consumers(&db).expect("count after the restart");
    eprintln!("PostgreSQL crashed at {before_crash} VMs, restarted with {after_crash}");
    assert!(
        after_crash >= before_crash,
        "committed VMs were lost in the crash"
    );
    assert!(
        after_crash < (VMS as u64 - P0_LIMIT) as i64,
        "the run ended before the crash"
    );

    // The killed decider comes back and finishes its shard.
    let restarted = decider(&db, 0, 10, true, &stream_file);
    let mut summaries: Vec<serde_json::Value> = deciders.into_iter().map(summary).collect();
    for s in &summaries {
        assert!(
            s["reloads"].as_u64().unwrap() >= 1,
            "a survivor never reconnected: {s}"
        );
    }
    summaries.push(summary(restarted));

    let count = |k: &str| {
        summaries
            .iter()
            .map(|s| s[k].as_u64().unwrap())
            .sum::<u64>()
    };
    let (placed, already, quota) = (count("placed"), count("already"), count("quota"));
    eprintln!("survivors and the restarted decider: {placed} placed, {already} placed before the kill, {quota} refused by the quota");
    assert_eq!(
        placed + already + quota,
        VMS as u64,
        "every request answered once"
    );
    assert_eq!(quota, VMS as u64 / common::PROJECTS as u64 - P0_LIMIT);

    let report = common::check::database(&db, &spec, &stream, &quotas);
    assert!(
        report.problems.is_empty(),
        "{:#?}",
        &report.problems[..report.problems.len().min(20)]
    );
    assert_eq!(report.vms as u64, VMS as u64 - P0_LIMIT);

    let (n, digest) = database_digest(&db);
    for s in &summaries {
        assert_eq!(s["replica_vms"].as_u64(), Some(n as u64), "{s}");
        assert_eq!(
            s["replica_digest"].as_str(),
            Some(digest.as_str()),
            "a replica differs: {s}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}
