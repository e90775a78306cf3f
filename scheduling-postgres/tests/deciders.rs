//! Four decider processes (the `keel-placement` program) place 20,000 VMs of mixed flavours, a
//! third of them in anti-affinity groups spread over zones, all in projects with quotas, on a
//! generated cluster of 5,000 hosts, against one real PostgreSQL. An independent check then reads
//! the allocations from the database.
//!
//! Sized for a debug build (the workspace's `cargo test`): about a minute here, most of it
//! PostgreSQL's durable commits on two cores.

mod common;

use std::process::Stdio;

#[test]
fn four_deciders_place_twenty_thousand_vms_without_breaking_a_rule() {
    let Some((_server, db)) = common::database("deciders") else {
        return;
    };
    let (spec, stream) = common::workload(5000, 20_000, 21);
    let dir = common::scratch("deciders");
    let stream_file = dir.join("requests.json");
    common::write_json(&stream_file, &stream);
    scheduling_postgres::load_cluster(&db, &spec, false).expect("load");
    {
        let store =
            scheduling_postgres::PgStore::connect(scheduling_postgres::StoreConfig::new(&db))
                .expect("connect");
        for (scope, limits) in common::quotas() {
            store.set_quota(scope, limits).expect("quota");
        }
    }
    let started = std::time::Instant::now();
    let deciders: Vec<_> = (0..4)
        .map(|i| {
            common::program()
                .args(["--db", &db, "place", "--quiet", "--json", "--window", "24"])
                .arg("--seed")
                .arg(i.to_string())
                .arg("--shard")
                .arg(format!("{i}/4"))
                .arg(&stream_file)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start a decider")
        })
        .collect();
    let mut placed = 0;
    let mut refused_by_quota = 0;
    let mut conflicts = 0;
    for d in deciders {
        let out = d.wait_with_output().expect("decider");
        let text = String::from_utf8_lossy(&out.stdout);
        let summary: serde_json::Value = serde_json::from_str(text.lines().last().unwrap_or(""))
            .unwrap_or_else(|e| {
                panic!(
                    "summary ({e}): {text}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        eprintln!("decider: {summary}");
        // Without faults, no replica ever falls out of step with the database (a rebuild is
        // logged as an error or a warning naming the replica).
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(!log.contains("the replica"), "{log}");
        assert_eq!(summary["reloads"], 0, "{summary}");
        placed += summary["placed"].as_u64().unwrap();
        refused_by_quota += summary["quota"].as_u64().unwrap();
        conflicts += summary["conflicts"].as_u64().unwrap();
        assert_eq!(summary["other"], 0, "{summary}");
        assert_eq!(summary["unschedulable"], 0, "{summary}");
    }
    eprintln!(
        "4 deciders: {placed} placed, {refused_by_quota} refused by quotas, {conflicts} conflicts, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(placed + refused_by_quota, 20_000);
    assert!(
        refused_by_quota > 900,
        "the quotas bind: {refused_by_quota}"
    );

    let report = common::check::database(&db, &spec, &stream, &common::quotas());
    assert!(
        report.problems.is_empty(),
        "{:#?}",
        &report.problems[..report.problems.len().min(20)]
    );
    assert_eq!(
        report.vms as u64, placed,
        "every placement reported is in the database"
    );
    let _ = std::fs::remove_dir_all(dir);
}
