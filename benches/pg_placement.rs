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
//!
//! Requests: mixed flavours (scheduling's W2: 1–64 vCPU, some memory-heavy), `PG_REQUESTS` of them
//! (default 20,000). `PG_SIZES=5000,100000` and `PG_DECIDERS=1,2,4` select; `--quick` (or
//! `PG_QUICK=1`) runs 1,000 hosts and 2,000 requests. Both run on this machine's cores together
//! with PostgreSQL itself: on the 2-core machines this was written on, the deciders and the
//! database share two cores.
//!
//! Reference: upstream OpenStack Placement 16 on SQLite measured here does 1.2–4.7 placements/s per
//! thread, 45–65 ms per claim. Target of issue 21: >= 5,000 durable claims/s with 4 deciders at
//! 5,000 hosts, p99 commit <= 10 ms. Upstream Placement on the same PostgreSQL (`--placement`) is
//! not part of this bench.

use scheduling::generator::{self, ClusterShape};
use scheduling::store::{MemoryStore, PlacementStore};
use scheduling::{Cluster, PlacementRequest, Profile, State};
use scheduling_postgres::testing::TempPostgres;
use scheduling_postgres::{PgStore, StoreConfig};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    println!(
        "{:<9} {:>7} {:>8} {:>8} {:>12} {:>9} {:>9} {:>10} {:>6}",
        "store", "hosts", "deciders", "claims", "claims/s", "p50 ms", "p99 ms", "conflicts", "txns"
    );
    let mut summary = Vec::new();
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
