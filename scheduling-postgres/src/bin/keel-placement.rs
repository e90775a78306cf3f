//! `keel-placement`: Keel's placement on a PostgreSQL database, from a shell.
//!
//! ```text
//! keel-placement --db "host=/run/postgresql dbname=keel" init
//! keel-placement --db ... load cluster.yaml
//! keel-placement --db ... place requests.yaml      # a request stream; prints where each went
//! keel-placement --db ... usage --hosts
//! keel-placement --db ... explain requests.yaml    # where each would go, or why not
//! keel-placement --db ... quota --project web --instances 10 --limit VCPU=64
//! keel-placement --db ... release vm-1 vm-2
//! ```
//!
//! Exit status: 0 when everything was done, 1 when some request was refused (each is printed
//! with its reason), 2 for a usage, input or database error (nothing written).

use clap::{Parser, Subcommand};
use scheduling::load::{from_file, Limits};
use scheduling::request::{RequestStream, StreamEvent};
use scheduling::state::{QuotaLimits, QuotaScope};
use scheduling::{ClusterSpec, DecideOptions, PlacementRequest, Policy, Profile, Scheduler};
use scheduling_postgres::{PgStore, PgStoreError, StoreConfig};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "keel-placement",
    about = "Keel's placement on a PostgreSQL database"
)]
struct Args {
    /// libpq connection string or URL of the database (default: $KEEL_PLACEMENT_DB).
    #[arg(long)]
    db: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Creates the schema, or upgrades it to this version.
    Init,
    /// Loads a cluster description (JSON or YAML) into the database.
    Load {
        /// The cluster file.
        file: PathBuf,
        /// Replace a cluster already loaded (only while it holds no allocation).
        #[arg(long)]
        replace: bool,
    },
    /// Places a request stream (JSON or YAML: server groups, then place and release events).
    Place {
        /// The stream file.
        file: PathBuf,
        /// Requests in flight at once (callers of this decider).
        #[arg(long, default_value_t = 32)]
        window: usize,
        /// Placement policy.
        #[arg(long, default_value = "spread")]
        policy: Policy,
        /// Seed of the decider.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Take only the events whose position modulo N is I (`I/N`), to split one stream
        /// between deciders.
        #[arg(long)]
        shard: Option<String>,
        /// Count a VM placed already (by an earlier run) as placed.
        #[arg(long)]
        resume: bool,
        /// Print only the summary.
        #[arg(long)]
        quiet: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// Before the summary, wait (up to a minute) until the replica holds this many VMs, so
        /// that its digest shows whether deciders converged.
        #[arg(long)]
        linger_until: Option<usize>,
    },
    /// Frees the allocations of the consumers named.
    Release {
        /// Consumer ids.
        consumers: Vec<String>,
    },
    /// Prints usage per resource class (and per host with `--hosts`).
    Usage {
        /// One line per host too.
        #[arg(long)]
        hosts: bool,
    },
    /// Decides the requests of a stream without committing: where each would go, or why not.
    Explain {
        /// The stream file.
        file: PathBuf,
        /// Placement policy.
        #[arg(long, default_value = "spread")]
        policy: Policy,
    },
    /// Sets the quota of a project, or of a user in it.
    Quota {
        /// The project.
        #[arg(long)]
        project: String,
        /// The user (else the project's own limits).
        #[arg(long)]
        user: Option<String>,
        /// Most VMs.
        #[arg(long)]
        instances: Option<u64>,
        /// Most of a class, as CLASS=AMOUNT (repeatable).
        #[arg(long = "limit", value_parser = parse_limit)]
        limits: Vec<(String, u64)>,
        /// Remove the limits instead.
        #[arg(long)]
        clear: bool,
    },
}

fn parse_limit(s: &str) -> Result<(String, u64), String> {
    let (class, amount) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected CLASS=AMOUNT"))?;
    let amount = amount.parse().map_err(|e| format!("`{s}`: amount: {e}"))?;
    Ok((class.to_string(), amount))
}

/// A failure that ends the command with status 2.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Store(#[from] PgStoreError),
    #[error(transparent)]
    Model(#[from] scheduling::ModelError),
    #[error("--shard `{0}`: expected I/N with I < N")]
    Shard(String),
    #[error("no database given: pass --db or set KEEL_PLACEMENT_DB")]
    NoDatabase,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("keel-placement: {e}");
            ExitCode::from(2)
        }
    }
}

fn store(db: &str, policy: Policy, seed: u64) -> Result<PgStore, PgStoreError> {
    let mut config = StoreConfig::new(db);
    config.profile = Arc::new(Profile::for_policy(policy));
    config.seed = seed;
    PgStore::connect(config)
}

fn run(args: Args) -> Result<bool, CliError> {
    let db = match args.db {
        Some(db) => db,
        None => std::env::var("KEEL_PLACEMENT_DB").map_err(|_| CliError::NoDatabase)?,
    };
    match args.command {
        Command::Init => {
            scheduling_postgres::init(&db)?;
            println!(
                "schema at version {}",
                scheduling_postgres::schema::SCHEMA_VERSION
            );
            Ok(true)
        }
        Command::Load { file, replace } => {
            let spec: ClusterSpec = from_file(&file, &Limits::default())?;
            scheduling_postgres::load_cluster(&db, &spec, replace)?;
            println!("loaded {} hosts from {}", spec.hosts.len(), file.display());
            Ok(true)
        }
        Command::Place {
            file,
            window,
            policy,
            seed,
            shard,
            resume,
            quiet,
            json,
            linger_until,
        } => {
            let stream: RequestStream = from_file(&file, &Limits::default())?;
            let shard = match shard {
                None => None,
                Some(s) => {
                    let parsed = s
                        .split_once('/')
                        .and_then(|(i, n)| {
                            Some((i.parse::<usize>().ok()?, n.parse::<usize>().ok()?))
                        })
                        .filter(|(i, n)| i < n);
                    Some(parsed.ok_or(CliError::Shard(s))?)
                }
            };
            let store = store(&db, policy, seed)?;
            let out = Output { quiet, json };
            place(
                &store,
                stream,
                window.max(1),
                shard,
                resume,
                out,
                linger_until,
            )
        }
        Command::Release { consumers } => {
            let store = store(&db, Policy::default(), 0)?;
            let mut ok = true;
            for c in consumers {
                match store.release(&c) {
                    Ok(p) => println!("released {c} from {}", p.host),
                    Err(e) => {
                        println!("{c}: {e}");
                        ok = false;
                    }
                }
            }
            Ok(ok)
        }
        Command::Usage { hosts } => {
            let store = store(&db, Policy::default(), 0)?;
            store.read(|s| print!("{}", usage(s, hosts)));
            Ok(true)
        }
        Command::Explain { file, policy } => {
            let stream: RequestStream = from_file(&file, &Limits::default())?;
            let store = store(&db, policy, 0)?;
            let mut scheduler = Scheduler::new(store.profile().clone(), 0);
            let mut ok = true;
            for e in stream.events {
                let StreamEvent::Place(req) = e else { continue };
                let line = store.read(|s| match s.compile(&req) {
                    Err(e) => Err(e.to_string()),
                    Ok(c) => {
                        let opts = DecideOptions {
                            per_host_reasons: false,
                            score_breakdown: true,
                            ..Default::default()
                        };
                        match scheduler.decide(s, &c, &opts) {
                            Ok(d) => Ok(format!(
                                "{} -> {} (score {}, {} feasible of {} visited)",
                                req.id,
                                s.cluster().host(d.claim.host()).name,
                                d.score,
                                d.feasible,
                                d.visited
                            )),
                            Err(u) => {
                                let x = u.explain(s.cluster());
                                let mut text = format!("{}: {}", req.id, x.summary);
                                for (reason, n) in x.reasons {
                                    text.push_str(&format!("\n  {n} host(s): {reason}"));
                                }
                                Err(text)
                            }
                        }
                    }
                });
                match line {
                    Ok(l) => println!("{l}"),
                    Err(l) => {
                        println!("{l}");
                        ok = false;
                    }
                }
            }
            Ok(ok)
        }
        Command::Quota {
            project,
            user,
            instances,
            limits,
            clear,
        } => {
            let store = store(&db, Policy::default(), 0)?;
            let scope = match user {
                Some(user) => QuotaScope::User { project, user },
                None => QuotaScope::Project(project),
            };
            if clear {
                store.clear_quota(scope.clone())?;
                println!("cleared the quota of {scope}");
            } else {
                let limits = QuotaLimits {
                    instances,
                    resources: limits.into_iter().collect(),
                };
                store.set_quota(scope.clone(), limits)?;
                store.sync()?;
                let used = store.read(|s| s.quota_usage(&scope));
                println!(
                    "quota of {scope} set; in use: {} VM(s) {:?}",
                    used.instances, used.resources
                );
            }
            Ok(true)
        }
    }
}

/// Counts of a `place` run.
#[derive(Default, serde::Serialize)]
struct Summary {
    placed: u64,
    already: u64,
    released: u64,
    unschedulable: u64,
    quota: u64,
    other: u64,
    conflicts: u64,
    transactions: u64,
    /// Times the replica was rebuilt after a lost connection.
    reloads: u64,
    seconds: f64,
    /// VMs in this decider's replica at the end.
    replica_vms: usize,
    /// A hash of the replica's sorted (consumer, host) pairs.
    replica_digest: String,
}

/// How `place` reports.
#[derive(Clone, Copy)]
struct Output {
    quiet: bool,
    json: bool,
}

/// A hash of the sorted `(consumer, host)` pairs: equal digests, equal allocations.
fn digest(s: &scheduling::State) -> (usize, String) {
    use std::hash::{Hash, Hasher};
    let mut pairs: Vec<(&str, &str)> = s
        .allocations()
        .iter()
        .map(|(c, a)| (c.as_str(), s.cluster().host(a.host()).name.as_str()))
        .collect();
    pairs.sort_unstable();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    pairs.hash(&mut h);
    (pairs.len(), format!("{:016x}", h.finish()))
}

fn place(
    store: &PgStore,
    stream: RequestStream,
    window: usize,
    shard: Option<(usize, usize)>,
    resume: bool,
    out: Output,
    linger_until: Option<usize>,
) -> Result<bool, CliError> {
    let Output { quiet, json } = out;
    for g in &stream.server_groups {
        store.ensure_server_group(g)?;
    }
    let start = Instant::now();
    let summary = Mutex::new(Summary::default());
    let events: Vec<StreamEvent> = stream
        .events
        .into_iter()
        .enumerate()
        .filter(|(i, _)| shard.is_none_or(|(k, n)| i % n == k))
        .map(|(_, e)| e)
        .collect();
    let note = |f: &dyn Fn(&mut Summary)| f(&mut summary.lock().unwrap_or_else(|e| e.into_inner()));
    // Runs of placements go concurrently; a release waits for what came before it.
    let mut i = 0;
    while i < events.len() {
        if let StreamEvent::Release(c) = &events[i] {
            match store.release(c) {
                Ok(_) => note(&|s| s.released += 1),
                Err(e) => {
                    if !quiet {
                        println!("{c}: {e}");
                    }
                    note(&|s| s.other += 1);
                }
            }
            i += 1;
            continue;
        }
        let end = events[i..]
            .iter()
            .position(|e| matches!(e, StreamEvent::Release(_)))
            .map_or(events.len(), |p| i + p);
        let run: Vec<&PlacementRequest> = events[i..end]
            .iter()
            .filter_map(|e| match e {
                StreamEvent::Place(r) => Some(&**r),
                StreamEvent::Release(_) => None,
            })
            .collect();
        let next = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..window.min(run.len()) {
                scope.spawn(|| loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(req) = run.get(k) else { break };
                    match store.place(req) {
                        Ok(p) => {
                            if !quiet {
                                println!("{} -> {}", p.consumer, p.host);
                            }
                            note(&|s| s.placed += 1);
                        }
                        Err(PgStoreError::DuplicateConsumer(_)) if resume => {
                            note(&|s| s.already += 1)
                        }
                        Err(e) => {
                            if !quiet {
                                println!("{}: {e}", req.id);
                            }
                            match e {
                                PgStoreError::Unschedulable(_) => note(&|s| s.unschedulable += 1),
                                PgStoreError::QuotaExceeded(_) => note(&|s| s.quota += 1),
                                _ => note(&|s| s.other += 1),
                            }
                        }
                    }
                });
            }
        });
        i = end;
    }
    if let Some(n) = linger_until {
        let until = Instant::now() + std::time::Duration::from_secs(60);
        while store.read(|s| s.allocations().len()) < n && Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    store.sync()?;
    let stats = store.stats();
    let mut s = summary.into_inner().unwrap_or_else(|e| e.into_inner());
    (s.replica_vms, s.replica_digest) = store.read(digest);
    s.conflicts = stats.conflicts;
    s.transactions = stats.transactions;
    s.reloads = stats.reloads;
    s.seconds = start.elapsed().as_secs_f64();
    if json {
        println!("{}", serde_json::to_string(&s).unwrap_or_default());
    } else {
        println!(
            "placed {} ({} already), released {}, refused {} (unschedulable {}, quota {}, other {}); \
             {} conflicts, {} transactions, {:.2} s ({:.0} placements/s)",
            s.placed,
            s.already,
            s.released,
            s.unschedulable + s.quota + s.other,
            s.unschedulable,
            s.quota,
            s.other,
            s.conflicts,
            s.transactions,
            s.seconds,
            s.placed as f64 / s.seconds.max(1e-9)
        );
    }
    Ok(s.other == 0 && s.unschedulable == 0 && s.quota == 0)
}

/// Usage per class (and host), as text.
fn usage(s: &scheduling::State, hosts: bool) -> String {
    let c = s.cluster();
    let mut totals: std::collections::BTreeMap<&str, (u128, u128, scheduling::model::ClassId)> =
        Default::default();
    for (i, slot) in c.slots().iter().enumerate() {
        let t = totals
            .entry(c.class_name(slot.class))
            .or_insert((0, 0, slot.class));
        t.0 += u128::from(s.used_slots()[i]);
        t.1 += u128::from(slot.capacity);
    }
    let mut out = format!("{} hosts, {} VMs\n", c.host_count(), s.allocations().len());
    for (name, (used, cap, _)) in &totals {
        out.push_str(&format!(
            "{name:<16} {used:>14} / {cap:<14} {:5.1}%\n",
            *used as f64 * 100.0 / (*cap).max(1) as f64
        ));
    }
    if hosts {
        for h in c.host_ids() {
            out.push_str(&format!("{:<20} {:>4} VMs", c.host(h).name, s.vm_count(h)));
            for (name, (_, _, class)) in &totals {
                let capacity = c.host_capacity(h, *class);
                if capacity > 0 {
                    out.push_str(&format!("  {name} {}/{capacity}", s.host_used(h, *class)));
                }
            }
            out.push('\n');
        }
    }
    out
}
