//! Placement on PostgreSQL: committed claims per second and commit latency with 1, 2 and 4
//! deciders sharing one database, at 5,000 and 100,000 hosts, beside the in-memory store on the
//! same cluster and requests in the same run.
//!
//! `cargo bench -p benches --bench pg_placement` starts a throwaway PostgreSQL from Debian's
//! packages (`scheduling_postgres::testing`: `initdb` in the temporary directory, Unix socket,
//! `fsync` and `synchronous_commit` on, so every commit waits for its WAL flush) and, for each
//! size and decider count, loads the cluster into a fresh database and places the same requests:
//!
//! - **postgres**: `N` [`PgStore`]s (each its own connection, replica and committer thread, as `N`
//!   decider processes would have), each called by `PG_WINDOW` threads (default 32: requests in
//!   flight per decider, as an API server's concurrent requests). A claim counts once
//!   `place` returned, i.e. once its transaction committed; its latency is that call's, from
//!   submission to the durable answer (queueing behind the batch in flight included).
//! - **memory**: [`MemoryStore`] on the same cluster, called by `N` threads.
//! - **placement** (only with `--placement VENV`, never in CI): upstream OpenStack Placement from
//!   the Python environment `VENV` (one where `openstack-placement`, `psycopg2` and `gunicorn` are
//!   importable; the bench installs nothing and says what is missing), served by gunicorn on a
//!   database of the same PostgreSQL server, loaded with the same hosts through its API and
//!   driven by `N` clients that claim as Nova's scheduler does (`GET /allocation_candidates`, `PUT
//!   /allocations/{consumer}` with consumer generations, retried on 409): see
//!   `pg_placement_upstream.rs`. Its latency is a claim's, first GET to the PUT's answer.
//!   `PLACEMENT_SIZES` selects the sizes it joins (default: all), `PLACEMENT_REQUESTS` the requests
//!   per run (default: as many as the others), `PLACEMENT_SECONDS` a time budget per run after
//!   which no request is started (default 120; claims/s is over the run's wall time either way),
//!   `PLACEMENT_WORKERS` gunicorn's worker processes (default 4), `PLACEMENT_API_LOAD` the largest
//!   cluster loaded wholly through Placement's API (default 5,000; larger ones by SQL in the same
//!   shape, see there).
//!
//! Requests: mixed flavours (scheduling's W2: 1–64 vCPU, some memory-heavy), `PG_REQUESTS` of them
//! (default 20,000). `PG_SIZES=5000,100000` and `PG_DECIDERS=1,2,4` select; `--quick` (or
//! `PG_QUICK=1`) runs 1,000 hosts and 2,000 requests. Both run on this machine's cores together
//! with PostgreSQL itself: on the 2-core machines this was written on, the deciders and the
//! database share two cores.
//!
//! Reference: upstream OpenStack Placement 16 on SQLite measured here does 1.2–4.7 placements/s per
//! thread, 45–65 ms per claim. Target of issue 21: >= 5,000 durable claims/s with 4 deciders at
//! 5,000 hosts, p99 commit <= 10 ms.

use scheduling::generator::{self, ClusterShape};
use scheduling::store::{MemoryStore, PlacementStore};
use scheduling::{Cluster, PlacementRequest, Profile, State};
use scheduling_postgres::testing::TempPostgres;
use scheduling_postgres::{PgStore, StoreConfig};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "pg_placement_upstream.rs"]
mod upstream;

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    match std::env::var(name) {
        Ok(v) => v.split(',').filter_map(|x| x.trim().parse().ok()).collect(),
        Err(_) => default.to_vec(),
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What one run measured.
struct Run {
    committed: usize,
    refused: usize,
    seconds: f64,
    latencies: Vec<Duration>,
}

impl Run {
    fn of(latencies: Vec<Duration>) -> Run {
        Run {
            committed: latencies.len(),
            refused: 0,
            seconds: 0.0,
            latencies,
        }
    }

    fn rate(&self) -> f64 {
        self.committed as f64 / self.seconds.max(1e-9)
    }

    fn percentile(&mut self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        self.latencies.sort_unstable();
        let i = ((self.latencies.len() - 1) as f64 * p).round() as usize;
        self.latencies[i].as_secs_f64() * 1e3
    }
}

/// Places `requests` through `threads` callers; caller `t` uses `place(t, request)`.
fn drive<E: std::fmt::Display>(
    requests: &[PlacementRequest],
    threads: usize,
    place: impl Fn(usize, &PlacementRequest) -> Result<(), E> + Sync,
) -> Run {
    let next = AtomicUsize::new(0);
    let all = Mutex::new(Vec::with_capacity(requests.len()));
    let refused = AtomicUsize::new(0);
    let first_error = Mutex::new(None::<String>);
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (next, all, refused, first_error, place) =
                (&next, &all, &refused, &first_error, &place);
            s.spawn(move || {
                let mut mine = Vec::new();
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(req) = requests.get(k) else { break };
                    let t0 = Instant::now();
                    match place(t, req) {
                        Ok(()) => mine.push(t0.elapsed()),
                        Err(e) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            let mut first = first_error.lock().unwrap_or_else(|e| e.into_inner());
                            first.get_or_insert_with(|| format!("{}: {e}", req.id));
                        }
                    }
                }
                all.lock().unwrap_or_else(|e| e.into_inner()).extend(mine);
            });
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    if let Some(e) = first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        eprintln!("   (first refusal: {e})");
    }
    let latencies = all.into_inner().unwrap_or_else(|e| e.into_inner());
    Run {
        committed: latencies.len(),
        refused: refused.into_inner(),
        seconds,
        latencies,
    }
}

fn main() {
    let quick = std::env::var_os("PG_QUICK").is_some() || std::env::args().any(|a| a == "--quick");
    let sizes = env_list("PG_SIZES", if quick { &[1000] } else { &[5000, 100_000] });
    let deciders = env_list("PG_DECIDERS", &[1, 2, 4]);
    let n_requests = env_usize("PG_REQUESTS", if quick { 2000 } else { 20_000 });
    let window = env_usize("PG_WINDOW", 32).max(1);
    let args: Vec<String> = std::env::args().collect();
    let venv = args.iter().enumerate().find_map(|(i, a)| {
        if a == "--placement" {
            Some(args.get(i + 1).cloned().unwrap_or_default())
        } else {
            a.strip_prefix("--placement=").map(str::to_string)
        }
    });
    let venv = venv.map(|v| {
        let v = std::path::PathBuf::from(v);
        if let Err(e) = upstream::check(&v) {
            eprintln!("pg_placement: {e}");
            std::process::exit(2);
        }
        v
    });
    let placement_sizes = env_list("PLACEMENT_SIZES", &sizes);
    let placement_requests = env_usize("PLACEMENT_REQUESTS", n_requests);
    let placement_budget = Duration::from_secs(env_usize("PLACEMENT_SECONDS", 120) as u64);
    let placement_workers = env_usize("PLACEMENT_WORKERS", 4).max(1);
    let placement_api_load = env_usize("PLACEMENT_API_LOAD", 5000);

    let server = match TempPostgres::start() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pg_placement: {e}");
            std::process::exit(2);
        }
    };
    println!(
        "PostgreSQL placement bench: {n_requests} mixed-flavour requests per run, {window} callers per decider, \
         synchronous_commit on, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if let Some(v) = &venv {
        println!(
            "placement: upstream openstack-placement {} from {}, gunicorn with {placement_workers} \
             gthread workers, {placement_requests} requests per run or {} s, 1 client per decider",
            upstream::version(v),
            v.display(),
            placement_budget.as_secs()
        );
    }
    println!(
        "{:<9} {:>7} {:>8} {:>8} {:>12} {:>9} {:>9} {:>10} {:>6}",
        "store", "hosts", "deciders", "claims", "claims/s", "p50 ms", "p99 ms", "conflicts", "txns"
    );
    let mut summary = Vec::new();
    let mut placement_summary = Vec::new();
    let mut runs = 0;
    for &hosts in &sizes {
        let spec = generator::cluster(ClusterShape::new(hosts, 7));
        let cluster = match Cluster::from_spec(&spec) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                eprintln!("pg_placement: generated cluster: {e}");
                std::process::exit(2);
            }
        };
        let requests = generator::mixed(n_requests, 11, "vm").requests;
        let placement_name = format!("placement_{hosts}");
        let placement = venv
            .as_ref()
            .filter(|_| placement_sizes.contains(&hosts))
            .map(|v| {
                let t = Instant::now();
                let p = server
                    .create_database(&placement_name)
                    .map_err(|e| e.to_string())
                    .and_then(|conninfo| {
                        let bin = scheduling_postgres::testing::find_binaries()
                            .ok_or("PostgreSQL binaries not found")?;
                        upstream::Placement::start(
                            v,
                            &bin,
                            server.socket_dir(),
                            &conninfo,
                            &placement_name,
                            placement_workers,
                        )
                    })
                    .and_then(|p| p.load(&spec, 4, placement_api_load).map(|api| (p, api)));
                match p {
                    Ok((p, api)) => {
                        eprintln!(
                            "   (placement: {hosts} providers loaded {} in {:.1} s)",
                            if api {
                                "through the API"
                            } else {
                                "by SQL (the first through the API)"
                            },
                            t.elapsed().as_secs_f64()
                        );
                        p
                    }
                    Err(e) => {
                        eprintln!("pg_placement: upstream Placement at {hosts} hosts: {e}");
                        std::process::exit(2);
                    }
                }
            });
        let placement_reqs = &generator::mixed(placement_requests, 11, "vm").requests;
        for &n in &deciders {
            let name = format!("bench_{hosts}_{n}");
            let db = match server.create_database(&name) {
                Ok(db) => db,
                Err(e) => {
                    eprintln!("pg_placement: {e}");
                    std::process::exit(2);
                }
            };
            let t = Instant::now();
            let stores = scheduling_postgres::init(&db)
                .and_then(|()| scheduling_postgres::load_cluster(&db, &spec, false))
                .and_then(|()| {
                    (0..n)
                        .map(|i| {
                            PgStore::connect(StoreConfig {
                                seed: i as u64,
                                ..StoreConfig::new(&db)
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()
                });
            let stores = match stores {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("pg_placement: setting up {name}: {e}");
                    std::process::exit(2);
                }
            };
            eprintln!(
                "   ({hosts} hosts loaded and {n} replica(s) built in {:.1} s)",
                t.elapsed().as_secs_f64()
            );
            let mut run = drive(&requests, n * window, |t, req| {
                stores[t % n].place(req).map(drop)
            });
            let (conflicts, txns) = stores.iter().fold((0, 0), |(c, x), s| {
                let st = s.stats();
                (c + st.conflicts, x + st.transactions)
            });
            let (p50, p99) = (run.percentile(0.5), run.percentile(0.99));
            println!(
                "{:<9} {:>7} {:>8} {:>8} {:>12.0} {:>9.2} {:>9.2} {:>10} {:>6}{}",
                "postgres",
                hosts,
                n,
                run.committed,
                run.rate(),
                p50,
                p99,
                conflicts,
                txns,
                if run.refused > 0 {
                    format!("  ({} refused)", run.refused)
                } else {
                    String::new()
                }
            );
            summary.push((hosts, n, run.rate(), p99));
            drop(stores);
            if let Err(e) = server.drop_database(&name) {
                eprintln!("pg_placement: {e}");
            }

            let memory = MemoryStore::new(State::new(cluster.clone()), Profile::default(), 1);
            let mut run = drive(&requests, n, |_, req| {
                PlacementStore::place(&memory, req).map(drop)
            });
            let (p50, p99) = (run.percentile(0.5), run.percentile(0.99));
            println!(
                "{:<9} {:>7} {:>8} {:>8} {:>12.0} {:>9.4} {:>9.4} {:>10} {:>6}",
                "memory",
                hosts,
                n,
                run.committed,
                run.rate(),
                p50,
                p99,
                memory.stats().conflicts,
                "-"
            );

            if let Some(p) = &placement {
                if let Err(e) = p.reset() {
                    eprintln!("pg_placement: {e}");
                    std::process::exit(2);
                }
                let r = p.drive(placement_reqs, n, runs, placement_budget);
                runs += 1;
                let mut run = Run {
                    committed: r.latencies.len(),
                    refused: r.refused,
                    seconds: r.seconds,
                    latencies: r.latencies,
                };
                let (p50, p99) = (run.percentile(0.5), run.percentile(0.99));
                println!(
                    "{:<9} {:>7} {:>8} {:>8} {:>12.2} {:>9.2} {:>9.2} {:>10} {:>6}{}",
                    "placement",
                    hosts,
                    n,
                    run.committed,
                    run.rate(),
                    p50,
                    p99,
                    r.conflicts,
                    "-",
                    if run.refused + r.skipped > 0 {
                        format!(
                            "  ({} refused, {} not started: time budget)",
                            run.refused, r.skipped
                        )
                    } else {
                        String::new()
                    }
                );
                let mut gets = Run::of(r.gets);
                let mut puts = Run::of(r.puts);
                eprintln!(
                    "   (placement: GET /allocation_candidates p50 {:.1} / p99 {:.1} ms over {}; \
                     PUT /allocations p50 {:.1} / p99 {:.1} ms over {})",
                    gets.percentile(0.5),
                    gets.percentile(0.99),
                    gets.latencies.len(),
                    puts.percentile(0.5),
                    puts.percentile(0.99),
                    puts.latencies.len()
                );
                placement_summary.push((hosts, n, run.rate()));
            }
        }
        if placement.is_some() {
            drop(placement);
            if let Err(e) = server.drop_database(&placement_name) {
                eprintln!("pg_placement: {e}");
            }
        }
    }
    for &(hosts, n, rate) in &placement_summary {
        if let Some((_, _, keel, _)) = summary.iter().find(|s| s.0 == hosts && s.1 == n) {
            println!(
                "-- {hosts} hosts, {n} decider(s)/client(s): Keel on PostgreSQL {keel:.0} claims/s, \
                 upstream Placement {rate:.2} claims/s ({:.0}x)",
                keel / rate.max(1e-9)
            );
        }
    }
    for (hosts, n, rate, p99) in summary {
        if hosts == 5000 && n == 4 {
            let ok = rate >= 5000.0 && p99 <= 10.0;
            println!(
                "-- target at 5,000 hosts with 4 deciders: >= 5,000 durable claims/s, p99 <= 10 ms: \
                 {rate:.0}/s, p99 {p99:.2} ms [{}]",
                if ok { "met" } else { "NOT met" }
            );
        }
    }
}
