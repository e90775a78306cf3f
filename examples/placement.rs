//! Replays a stream of placement requests on a cluster and reports what happened.
//!
//! ```text
//! cargo run --release -p examples --example placement -- cluster.json requests.json [--policy pack]
//! cargo run --release -p examples --example placement -- cluster.yaml requests.yaml
//! cargo run --release -p examples --example placement -- --generate 2000 [--events 5000] [--seed 7]
//! ```
//!
//! Prints each placement (the first `--show` of them), the utilisation per resource class, stranded
//! capacity, failures grouped by their main reason (with the full explanation of the first few), and
//! writes an SVG picture of per-host utilisation. `--generate N` first writes a synthetic cluster of N
//! hosts and a demo request stream (see `scheduling::generator`) to `--out`, then replays them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use scheduling::generator::{self, ClusterShape};
use scheduling::load::{parse, Format};
use scheduling::report::{summary, svg};
use scheduling::request::{RequestStream, StreamEvent};
use scheduling::{Cluster, ClusterSpec, PlaceError, Placer, Policy, Profile};

#[derive(Parser, Debug)]
#[command(about = "Place VMs on a cluster description with Keel's scheduling library")]
struct Args {
    /// Cluster description (`scheduling::ClusterSpec`; YAML if named `.yaml`/`.yml`, else JSON).
    cluster: Option<PathBuf>,
    /// Request stream (`scheduling::request::RequestStream`, or a plain array of requests; YAML if
    /// named `.yaml`/`.yml`, else JSON).
    requests: Option<PathBuf>,
    /// Generate a cluster of this many hosts and a demo stream instead of reading files.
    #[arg(long)]
    generate: Option<usize>,
    /// Events in the generated stream.
    #[arg(long, default_value_t = 5000)]
    events: usize,
    /// Seed for generation and tie-breaking.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Directory for generated files and the SVG.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Policy: spread, pack, balanced, power_saving, even_vm_count, stranded_aware.
    #[arg(long, default_value = "spread", value_parser = parse_policy)]
    policy: Policy,
    /// How many placements to print.
    #[arg(long, default_value_t = 15)]
    show: usize,
}

fn parse_policy(s: &str) -> Result<Policy, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| format!("unknown policy `{s}`"))
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn read_stream(path: &Path) -> Result<RequestStream, String> {
    let text = read(path)?;
    let format = Format::from_path(path);
    parse::<RequestStream>(&text, format).or_else(|first| {
        parse::<Vec<scheduling::PlacementRequest>>(&text, format)
            .map(|v| RequestStream {
                server_groups: Vec::new(),
                events: v
                    .into_iter()
                    .map(|r| StreamEvent::Place(Box::new(r)))
                    .collect(),
            })
            .map_err(|_| format!("{}: {first}", path.display()))
    })
}

fn write(path: &Path, text: Result<String, serde_json::Error>) -> Result<(), String> {
    let text = text.map_err(|e| e.to_string())?;
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn run(args: Args) -> Result<(), String> {
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("keel-placement"));
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let (spec, stream): (ClusterSpec, RequestStream) =
        match (args.generate, &args.cluster, &args.requests) {
            (Some(hosts), _, _) => {
                let spec = generator::cluster(ClusterShape::new(hosts, args.seed));
                let stream = generator::demo_stream(args.events, args.seed);
                write(
                    &out.join("cluster.json"),
                    serde_json::to_string_pretty(&spec),
                )?;
                write(
                    &out.join("requests.json"),
                    serde_json::to_string_pretty(&stream),
                )?;
                println!(
                    "wrote {0}/cluster.json and {0}/requests.json",
                    out.display()
                );
                (spec, stream)
            }
            (None, Some(c), Some(r)) => {
                let spec = parse(&read(c)?, Format::from_path(c))
                    .map_err(|e| format!("{}: {e}", c.display()))?;
                (spec, read_stream(r)?)
            }
            _ => {
                return Err(
                    "give <cluster.json> <requests.json>, or --generate N (see --help)".into(),
                )
            }
        };
    let cluster = Arc::new(Cluster::from_spec(&spec).map_err(|e| e.to_string())?);
    let mut placer = Placer::new(cluster.clone(), Profile::for_policy(args.policy), args.seed);
    for g in &stream.server_groups {
        placer
            .state_mut()
            .create_server_group(g.clone())
            .map_err(|e| e.to_string())?;
    }
    println!(
        "cluster: {} hosts, {} inventories; {} events; policy {:?}\n",
        cluster.host_count(),
        cluster.slots().len(),
        stream.events.len(),
        args.policy
    );

    let (mut placed, mut released, mut shown) = (0usize, 0usize, 0usize);
    let mut failures: Vec<(String, String)> = Vec::new();
    let mut by_reason: BTreeMap<String, usize> = BTreeMap::new();
    let start = Instant::now();
    for event in &stream.events {
        match event {
            StreamEvent::Place(req) => match placer.place(req) {
                Ok(p) => {
                    placed += 1;
                    if shown < args.show {
                        shown += 1;
                        let parts: Vec<String> = p
                            .resources
                            .iter()
                            .map(|r| format!("{} {} @{}", r.amount, r.class, r.provider))
                            .collect();
                        println!("  {:<14} -> {:<8} {}", p.consumer, p.host, parts.join(", "));
                    }
                }
                Err(PlaceError::Unschedulable(e)) => {
                    let main = e
                        .reasons
                        .first()
                        .map_or("no hosts".to_string(), |(r, _)| r.clone());
                    *by_reason.entry(main).or_default() += 1;
                    failures.push((req.id.clone(), e.summary));
                }
                Err(e) => {
                    *by_reason.entry("invalid request".into()).or_default() += 1;
                    failures.push((req.id.clone(), e.to_string()));
                }
            },
            StreamEvent::Release(id) => {
                if placer.state_mut().release(id).is_ok() {
                    released += 1;
                }
            }
        }
    }
    let elapsed = start.elapsed();
    if placed > shown {
        println!("  ... and {} more", placed - shown);
    }
    println!(
        "\nplaced {placed}, released {released}, failed {} in {:.1} ms ({:.0} events/s)\n",
        failures.len(),
        elapsed.as_secs_f64() * 1e3,
        stream.events.len() as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    let vcpu = cluster.class_id("VCPU").ok_or("no VCPU class")?;
    let mem = cluster.class_id("MEMORY_MB").ok_or("no MEMORY_MB class")?;
    let s = summary(placer.state(), &[(vcpu, 1), (mem, 2048)]);
    println!("utilisation (stranded = free capacity unusable by a 1 vCPU / 2 GiB VM):");
    print!("{}", s.table());
    if !failures.is_empty() {
        println!("\nfailures by main reason:");
        let mut reasons: Vec<_> = by_reason.into_iter().collect();
        reasons.sort_by_key(|r| std::cmp::Reverse(r.1));
        for (reason, n) in reasons {
            println!("  {n:>6}  {reason}");
        }
        println!("\nfirst failures:");
        for (id, why) in failures.iter().take(5) {
            println!("  {id}: {why}");
        }
    }
    let problems = placer.state().check_consistency();
    if !problems.is_empty() {
        return Err(format!("bookkeeping inconsistent: {problems:?}"));
    }
    let path = out.join("placement.svg");
    let title = format!(
        "{} hosts, policy {:?}: {} VMs on {} hosts",
        cluster.host_count(),
        args.policy,
        s.vms,
        s.hosts_used
    );
    std::fs::write(&path, svg(placer.state(), [vcpu, mem], &title))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    println!("\nutilisation picture: {}", path.display());
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
