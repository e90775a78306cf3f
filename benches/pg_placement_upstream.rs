//! Upstream OpenStack Placement on the bench's throwaway PostgreSQL (`pg_placement --placement
//! VENV`).
//!
//! Nothing here installs Placement: `VENV` is an existing Python environment where upstream
//! `openstack-placement` is importable together with `psycopg2` (its PostgreSQL driver) and
//! `gunicorn` (the WSGI server). For each cluster size the bench
//!
//! 1. creates a database on the same server as Keel's runs, writes a `placement.conf`
//!    (`[placement_database] connection = postgresql+psycopg2://…` on the server's Unix socket,
//!    `[api] auth_strategy = noauth2`, `[placement] randomize_allocation_candidates = true` as
//!    Placement's documentation advises when clients pass `limit`) and syncs the schema with
//!    Placement's own `placement-manage db sync`;
//! 2. serves `placement.wsgi.api:application` with gunicorn (`gthread` workers, one thread each,
//!    `PLACEMENT_WORKERS` processes, default 4) on a Unix socket;
//! 3. loads the same cluster through the API, as a compute node reports itself: one root resource
//!    provider per host (`POST /resource_providers`, `PUT …/inventories`; above
//!    `PLACEMENT_API_LOAD` hosts, default 5,000, the first host so and the others by one SQL
//!    transaction into Placement's tables in the same shape, read back through the API: the API
//!    loads 40–60 hosts/s on a 2-core machine, half an hour or more for 100,000) with the host tree's
//!    `VCPU` (or `PCPU`), `MEMORY_MB` and `DISK_GB`, totals and reserved summed over the tree,
//!    allocation ratios and the largest `max_unit` as Keel's cluster has them (Nova reports flat
//!    compute nodes; the requests ask for the unnumbered group, which Keel too may take from any
//!    provider of the tree);
//! 4. per client count, empties `allocations` and `consumers` (`TRUNCATE` through `psql`, between
//!    runs, not timed) and has `N` clients place the requests the way Nova's scheduler does:
//!    `GET /allocation_candidates?resources=…&limit=1000` (Nova's `max_placement_results`), pick
//!    the candidate with the most free memory (Nova's default RAM weigher spreads), `PUT
//!    /allocations/{consumer}` with `consumer_generation: null` (a new consumer); on a 409
//!    `placement.concurrent_update` the same PUT is retried (up to 4 times, as Nova's report client
//!    does, but without its randomised sleeps), on another 409 (capacity taken) the next
//!    alternate is tried (Nova keeps 2 alternates), and when all fail the candidates are fetched
//!    again (up to 3 times). A claim's latency runs from its first GET to the 204 of its PUT.
//!
//! The HTTP client is a small HTTP/1.1 writer/reader on `std::os::unix::net::UnixStream` (one
//! keep-alive connection per client; `Content-Length` and chunked bodies), not a library.

use scheduling::model::spec::{ClusterSpec, HostSpec, InventorySpec, ProviderSpec};
use scheduling::PlacementRequest;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Placement microversion used for every call (1.36: consumer generations since 1.28, mappings in
/// allocation candidates since 1.34, `same_subtree` since 1.36).
const MICROVERSION: &str = "placement 1.36";
/// Nova's `[scheduler] max_placement_results` default.
const CANDIDATE_LIMIT: usize = 1000;
/// Nova's `[scheduler] max_attempts` default (the chosen host and 2 alternates).
const HOSTS_PER_SCHEDULE: usize = 3;
/// Nova's report client tries a claim 4 times on a generation conflict.
const PUT_TRIES: usize = 4;
/// Fresh candidate queries before a request counts as refused.
const SCHEDULES: usize = 3;

/// Checks that `venv` holds a usable Placement; the error names what is missing.
pub fn check(venv: &Path) -> Result<(), String> {
    let python = venv.join("bin/python");
    if !python.exists() {
        return Err(format!(
            "--placement {}: no {} (expected a Python environment where upstream \
             openstack-placement, psycopg2 and gunicorn are importable)",
            venv.display(),
            python.display()
        ));
    }
    for module in ["placement", "placement.wsgi", "psycopg2", "gunicorn"] {
        let out = Command::new(&python)
            .args(["-c", &format!("import {module}")])
            .output()
            .map_err(|e| format!("--placement: running {}: {e}", python.display()))?;
        if !out.status.success() {
            let what = match module {
                "psycopg2" => "psycopg2 (Placement's PostgreSQL driver)",
                "gunicorn" => "gunicorn (the WSGI server the bench serves Placement with)",
                _ => "upstream openstack-placement",
            };
            return Err(format!(
                "--placement {}: `import {module}` fails in {}: {what} is not installed there\n{}",
                venv.display(),
                python.display(),
                String::from_utf8_lossy(&out.stderr).trim_end()
            ));
        }
    }
    for tool in ["placement-manage", "gunicorn"] {
        if !venv.join("bin").join(tool).exists() {
            return Err(format!(
                "--placement {}: no bin/{tool} in that environment",
                venv.display()
            ));
        }
    }
    Ok(())
}

/// Placement's version as installed (from its package metadata).
pub fn version(venv: &Path) -> String {
    Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('openstack-placement'))",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into())
}

/// A running Placement API (gunicorn) over one database; stopped and removed on drop.
pub struct Placement {
    dir: PathBuf,
    socket: PathBuf,
    server: Child,
    psql: PathBuf,
    conninfo: String,
}

/// One provider's flattened inventory (a compute node's report).
#[derive(Clone, Debug, PartialEq)]
struct Flat {
    total: i64,
    reserved: i64,
    max_unit: i64,
    ratio: f64,
}

/// `VCPU`/`PCPU`, `MEMORY_MB` and `DISK_GB` of a host tree, as one root provider's inventories.
fn flatten(host: &HostSpec) -> BTreeMap<&'static str, Flat> {
    fn add(out: &mut BTreeMap<&'static str, Flat>, invs: &BTreeMap<String, InventorySpec>) {
        for class in ["VCPU", "PCPU", "MEMORY_MB", "DISK_GB"] {
            let Some(inv) = invs.get(class) else { continue };
            let e = out.entry(class).or_insert(Flat {
                total: 0,
                reserved: 0,
                max_unit: 0,
                ratio: inv.allocation_ratio.unwrap_or(1.0),
            });
            e.total += inv.total;
            e.reserved += inv.reserved;
            e.max_unit = e.max_unit.max(inv.max_unit.unwrap_or(inv.total));
        }
    }
    fn walk(out: &mut BTreeMap<&'static str, Flat>, p: &ProviderSpec) {
        add(out, &p.inventories);
        for c in &p.children {
            walk(out, c);
        }
    }
    let mut out = BTreeMap::new();
    add(&mut out, &host.inventories);
    for c in &host.children {
        walk(&mut out, c);
    }
    out
}

fn provider_uuid(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012x}")
}

fn consumer_uuid(run: usize, i: usize) -> String {
    format!("c0000000-{run:04x}-4000-8000-{i:012x}")
}

/// A keep-alive HTTP/1.1 connection to the API's Unix socket.
struct Http {
    socket: PathBuf,
    conn: Option<BufReader<UnixStream>>,
}

/// An HTTP response: status and body.
struct Response {
    status: u16,
    body: Vec<u8>,
}

impl Response {
    fn json(&self) -> Result<Value, String> {
        serde_json::from_slice(&self.body).map_err(|e| {
            format!(
                "Placement answered {} with a body that is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn error_code(&self) -> String {
        self.json()
            .ok()
            .and_then(|v| v["errors"][0]["code"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    fn text(&self) -> String {
        format!("{} {}", self.status, String::from_utf8_lossy(&self.body))
    }
}

impl Http {
    fn new(socket: &Path) -> Http {
        Http {
            socket: socket.to_path_buf(),
            conn: None,
        }
    }

    fn request(
        &mut self,
        method: &str,
        uri: &str,
        body: Option<&Value>,
    ) -> Result<Response, String> {
        let body = body.map(|b| b.to_string());
        let mut head = format!(
            "{method} {uri} HTTP/1.1\r\nHost: placement\r\nOpenStack-API-Version: {MICROVERSION}\r\n\
             X-Auth-Token: admin\r\nAccept: application/json\r\n"
        );
        if let Some(b) = &body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        if let Some(b) = &body {
            bytes.extend_from_slice(b.as_bytes());
        }
        // A reused connection the server closed while idle fails before any answer: reconnect
        // once and send again (the request was not processed).
        for attempt in 0..2 {
            let reused = self.conn.is_some();
            if self.conn.is_none() {
                let s = UnixStream::connect(&self.socket)
                    .map_err(|e| format!("connecting to {}: {e}", self.socket.display()))?;
                self.conn = Some(BufReader::new(s));
            }
            let conn = self.conn.as_mut().expect("connected above");
            let sent = conn.get_mut().write_all(&bytes);
            match sent
                .map_err(|e| e.to_string())
                .and_then(|()| read_response(conn))
            {
                Ok((resp, keep)) => {
                    if !keep {
                        self.conn = None;
                    }
                    return Ok(resp);
                }
                Err(e) => {
                    self.conn = None;
                    if !(reused && attempt == 0 && e.starts_with("closed")) {
                        return Err(format!("{method} {uri}: {e}"));
                    }
                }
            }
        }
        Err(format!("{method} {uri}: connection closed twice"))
    }
}

/// Reads one response; returns it and whether the connection may be reused.
fn read_response(conn: &mut BufReader<UnixStream>) -> Result<(Response, bool), String> {
    let mut line = String::new();
    if conn.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
        return Err("closed before the status line".into());
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    let mut keep = !line.starts_with("HTTP/1.0");
    loop {
        line.clear();
        if conn.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Err("connection closed inside the headers".into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let Some((name, value)) = l.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse::<usize>().ok(),
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => keep = !value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if status == 204 || status == 304 || (100..200).contains(&status) {
    } else if chunked {
        loop {
            line.clear();
            conn.read_line(&mut line).map_err(|e| e.to_string())?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| format!("bad chunk size {line:?}"))?;
            if size == 0 {
                line.clear();
                conn.read_line(&mut line).map_err(|e| e.to_string())?;
                break;
            }
            let start = body.len();
            body.resize(start + size + 2, 0);
            conn.read_exact(&mut body[start..])
                .map_err(|e| e.to_string())?;
            body.truncate(start + size);
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        conn.read_exact(&mut body).map_err(|e| e.to_string())?;
    } else {
        conn.read_to_end(&mut body).map_err(|e| e.to_string())?;
        keep = false;
    }
    Ok((Response { status, body }, keep))
}

/// What one Placement run measured.
pub struct PlacementRun {
    /// Latency of each committed claim (first GET to the PUT's 204).
    pub latencies: Vec<Duration>,
    /// Requests given up (no candidate left after retries).
    pub refused: usize,
    /// 409 answers to PUTs (generation conflicts and capacity taken by another client).
    pub conflicts: usize,
    /// Wall time of the run.
    pub seconds: f64,
    /// Requests not started because the time budget ran out.
    pub skipped: usize,
    /// Duration of every `GET /allocation_candidates`.
    pub gets: Vec<Duration>,
    /// Duration of every `PUT /allocations/{consumer}` (the commit, whatever its answer).
    pub puts: Vec<Duration>,
}

impl Placement {
    /// Creates database `dbname` on the server behind `socket_dir`, syncs Placement's schema into
    /// it and starts the API.
    pub fn start(
        venv: &Path,
        pg_bin: &Path,
        socket_dir: &Path,
        conninfo: &str,
        dbname: &str,
        workers: usize,
    ) -> Result<Placement, String> {
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "keel-placement-{}-{}",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let conf = format!(
            "[DEFAULT]\nlog_file = {log}\n\n[api]\nauth_strategy = noauth2\n\n\
             [placement_database]\nconnection = postgresql+psycopg2://keel@/{dbname}?host={sock}\n\n\
             [placement]\nrandomize_allocation_candidates = true\n",
            log = dir.join("placement.log").display(),
            sock = socket_dir.display(),
        );
        let conf_path = dir.join("placement.conf");
        std::fs::write(&conf_path, conf)
            .map_err(|e| format!("writing {}: {e}", conf_path.display()))?;
        let out = Command::new(venv.join("bin/placement-manage"))
            .arg("--config-file")
            .arg(&conf_path)
            .args(["db", "sync"])
            .output()
            .map_err(|e| format!("running placement-manage: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "placement-manage db sync failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let socket = dir.join("api.sock");
        let log = std::fs::File::create(dir.join("gunicorn.log"))
            .map_err(|e| format!("creating gunicorn.log: {e}"))?;
        let server = Command::new(venv.join("bin/gunicorn"))
            .env("OS_PLACEMENT_CONFIG_DIR", &dir)
            .arg("--bind")
            .arg(format!("unix:{}", socket.display()))
            .args(["--worker-class", "gthread", "--threads", "1", "--workers"])
            .arg(workers.to_string())
            .args(["--backlog", "256", "placement.wsgi.api:application"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting gunicorn: {e}"))?;
        let mut p = Placement {
            dir,
            socket,
            server,
            psql: pg_bin.join("psql"),
            conninfo: conninfo.to_string(),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut http = Http::new(&p.socket);
        loop {
            if let Ok(r) = http.request("GET", "/", None) {
                if r.status == 200 {
                    break;
                }
            }
            if let Ok(Some(status)) = p.server.try_wait() {
                return Err(format!(
                    "gunicorn exited ({status}) before serving Placement:\n{}",
                    p.log_tail()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "Placement did not answer on {} within 120 s:\n{}",
                    p.socket.display(),
                    p.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(p)
    }

    fn log_tail(&self) -> String {
        let mut s = String::new();
        for f in ["gunicorn.log", "placement.log"] {
            if let Ok(text) = std::fs::read_to_string(self.dir.join(f)) {
                let lines: Vec<&str> = text.lines().collect();
                s.push_str(&format!("--- {f} (end)\n"));
                for l in &lines[lines.len().saturating_sub(20)..] {
                    s.push_str(l);
                    s.push('\n');
                }
            }
        }
        s
    }

    /// Loads one root provider per host: through the API with `loaders` concurrent clients when
    /// the cluster has at most `api_max` hosts; above, the first host through the API (which also
    /// has Placement sync its standard resource classes) and the others written by one SQL
    /// transaction in the same shape (generation 1, root provider itself, inventories with
    /// `min_unit` and `step_size` 1), then the last host read back through the API and compared.
    /// Returns whether the API loaded everything.
    pub fn load(&self, spec: &ClusterSpec, loaders: usize, api_max: usize) -> Result<bool, String> {
        if spec.hosts.len() <= api_max {
            self.load_api(&spec.hosts, loaders)?;
            return Ok(true);
        }
        self.load_api(&spec.hosts[..1], 1)?;
        self.load_sql(spec)?;
        let last = spec.hosts.len() - 1;
        let mut http = Http::new(&self.socket);
        let r = http.request(
            "GET",
            &format!("/resource_providers/{}/inventories", provider_uuid(last)),
            None,
        )?;
        let v = r.json()?;
        for (class, f) in flatten(&spec.hosts[last]) {
            let inv = &v["inventories"][class];
            if inv["total"].as_i64() != Some(f.total)
                || inv["reserved"].as_i64() != Some(f.reserved)
                || inv["max_unit"].as_i64() != Some(f.max_unit)
                || inv["allocation_ratio"].as_f64() != Some(f.ratio)
            {
                return Err(format!(
                    "provider {} as Placement reads it back differs from the cluster: {}",
                    spec.hosts[last].name,
                    r.text()
                ));
            }
        }
        Ok(false)
    }

    fn load_sql(&self, spec: &ClusterSpec) -> Result<(), String> {
        let mut script = String::from(
            "BEGIN;\nCREATE TEMP TABLE h (uuid text, name text);\n\
             CREATE TEMP TABLE inv (uuid text, rc text, total int, reserved int, max_unit int, \
             ratio float);\nCOPY h FROM STDIN;\n",
        );
        for (i, host) in spec.hosts.iter().enumerate().skip(1) {
            script.push_str(&format!("{}\t{}\n", provider_uuid(i), host.name));
        }
        script.push_str("\\.\nCOPY inv FROM STDIN;\n");
        for (i, host) in spec.hosts.iter().enumerate().skip(1) {
            for (class, f) in flatten(host) {
                script.push_str(&format!(
                    "{}\t{class}\t{}\t{}\t{}\t{}\n",
                    provider_uuid(i),
                    f.total,
                    f.reserved,
                    f.max_unit,
                    f.ratio
                ));
            }
        }
        script.push_str(
            "\\.\nINSERT INTO resource_providers (uuid, name, generation, created_at, updated_at) \
             SELECT uuid, name, 1, now(), now() FROM h ORDER BY uuid;\n\
             UPDATE resource_providers SET root_provider_id = id WHERE root_provider_id IS NULL;\n\
             INSERT INTO inventories (resource_provider_id, resource_class_id, total, reserved, \
             min_unit, max_unit, step_size, allocation_ratio, created_at, updated_at) \
             SELECT rp.id, rc.id, inv.total, inv.reserved, 1, inv.max_unit, 1, inv.ratio, now(), \
             now() FROM inv JOIN resource_providers rp ON rp.uuid = inv.uuid \
             JOIN resource_classes rc ON rc.name = inv.rc;\nCOMMIT;\nANALYZE;\n",
        );
        let mut child = Command::new(&self.psql)
            .arg(&self.conninfo)
            .args(["-q", "-v", "ON_ERROR_STOP=1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("running {}: {e}", self.psql.display()))?;
        let mut stdin = child.stdin.take().expect("piped");
        let writer = std::thread::spawn(move || stdin.write_all(script.as_bytes()));
        let out = child.wait_with_output().map_err(|e| format!("psql: {e}"))?;
        let written = writer
            .join()
            .map_err(|_| "psql writer panicked".to_string())?;
        if !out.status.success() {
            return Err(format!(
                "writing providers into Placement's tables: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        written.map_err(|e| format!("feeding psql: {e}"))
    }

    fn load_api(&self, hosts: &[HostSpec], loaders: usize) -> Result<(), String> {
        let next = AtomicUsize::new(0);
        let error = Mutex::new(None::<String>);
        std::thread::scope(|s| {
            for _ in 0..loaders.max(1) {
                s.spawn(|| {
                    let mut http = Http::new(&self.socket);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(host) = hosts.get(i) else { break };
                        if let Err(e) = load_host(&mut http, i, host) {
                            error
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .get_or_insert(e);
                            next.store(usize::MAX / 2, Ordering::Relaxed);
                            break;
                        }
                    }
                });
            }
        });
        match error.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Removes every allocation and consumer (between runs, not timed).
    pub fn reset(&self) -> Result<(), String> {
        let out = Command::new(&self.psql)
            .arg(&self.conninfo)
            .args(["-q", "-v", "ON_ERROR_STOP=1", "-c"])
            .arg("TRUNCATE allocations, consumers")
            .output()
            .map_err(|e| format!("running {}: {e}", self.psql.display()))?;
        if !out.status.success() {
            return Err(format!(
                "emptying Placement's allocations: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    /// Places `requests` with `clients` concurrent clients (run number `run` names consumers);
    /// no request is started after `budget`.
    pub fn drive(
        &self,
        requests: &[PlacementRequest],
        clients: usize,
        run: usize,
        budget: Duration,
    ) -> PlacementRun {
        let next = AtomicUsize::new(0);
        let refused = AtomicUsize::new(0);
        let conflicts = AtomicUsize::new(0);
        let skipped = AtomicUsize::new(0);
        let all = Mutex::new(Vec::with_capacity(requests.len()));
        let times = Mutex::new(Timing::default());
        let first_error = Mutex::new(None::<String>);
        let started = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..clients.max(1) {
                s.spawn(|| {
                    let mut http = Http::new(&self.socket);
                    let mut mine = Vec::new();
                    let mut t = Timing::default();
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let Some(req) = requests.get(k) else { break };
                        if started.elapsed() > budget {
                            skipped.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        let t0 = Instant::now();
                        match claim(&mut http, req, &consumer_uuid(run, k), &mut t) {
                            Ok(c) => {
                                mine.push(t0.elapsed());
                                conflicts.fetch_add(c, Ordering::Relaxed);
                            }
                            Err((c, e)) => {
                                conflicts.fetch_add(c, Ordering::Relaxed);
                                refused.fetch_add(1, Ordering::Relaxed);
                                first_error
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .get_or_insert_with(|| format!("{}: {e}", req.id));
                            }
                        }
                    }
                    all.lock().unwrap_or_else(|e| e.into_inner()).extend(mine);
                    let mut x = times.lock().unwrap_or_else(|e| e.into_inner());
                    x.get.extend(t.get);
                    x.put.extend(t.put);
                });
            }
        });
        let seconds = started.elapsed().as_secs_f64();
        if let Some(e) = first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
            eprintln!("   (placement: first refusal: {e})");
        }
        let t = times.into_inner().unwrap_or_else(|e| e.into_inner());
        PlacementRun {
            latencies: all.into_inner().unwrap_or_else(|e| e.into_inner()),
            refused: refused.into_inner(),
            conflicts: conflicts.into_inner(),
            seconds,
            skipped: skipped.into_inner(),
            gets: t.get,
            puts: t.put,
        }
    }
}

impl Drop for Placement {
    fn drop(&mut self) {
        // SIGTERM: gunicorn's graceful stop of its workers.
        // SAFETY: kill(2) on the pid of a child this struct started and has not reaped yet.
        unsafe {
            libc::kill(self.server.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while matches!(self.server.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if matches!(self.server.try_wait(), Ok(None)) {
            let _ = self.server.kill();
            let _ = self.server.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn load_host(http: &mut Http, i: usize, host: &HostSpec) -> Result<(), String> {
    let uuid = provider_uuid(i);
    let r = http.request(
        "POST",
        "/resource_providers",
        Some(&json!({"name": host.name, "uuid": uuid})),
    )?;
    if r.status != 200 {
        return Err(format!("creating provider {}: {}", host.name, r.text()));
    }
    let inventories: serde_json::Map<String, Value> = flatten(host)
        .into_iter()
        .map(|(class, f)| {
            (
                class.to_string(),
                json!({"total": f.total, "reserved": f.reserved, "max_unit": f.max_unit,
                       "allocation_ratio": f.ratio}),
            )
        })
        .collect();
    let r = http.request(
        "PUT",
        &format!("/resource_providers/{uuid}/inventories"),
        Some(&json!({"resource_provider_generation": 0, "inventories": inventories})),
    )?;
    if r.status != 200 {
        return Err(format!("inventories of {}: {}", host.name, r.text()));
    }
    Ok(())
}

#[derive(Default)]
struct Timing {
    get: Vec<Duration>,
    put: Vec<Duration>,
}

/// One request placed as Nova's scheduler does; returns the number of 409s met.
fn claim(
    http: &mut Http,
    req: &PlacementRequest,
    consumer: &str,
    t: &mut Timing,
) -> Result<usize, (usize, String)> {
    let resources: Vec<String> = req
        .resources
        .iter()
        .map(|(c, a)| format!("{c}:{a}"))
        .collect();
    let uri = format!(
        "/allocation_candidates?resources={}&limit={CANDIDATE_LIMIT}",
        resources.join(",")
    );
    let mut conflicts = 0;
    for _ in 0..SCHEDULES {
        let t0 = Instant::now();
        let r = http
            .request("GET", &uri, None)
            .map_err(|e| (conflicts, e))?;
        t.get.push(t0.elapsed());
        if r.status != 200 {
            return Err((conflicts, format!("GET {uri}: {}", r.text())));
        }
        let v = r.json().map_err(|e| (conflicts, e))?;
        let mut candidates: Vec<(i64, &Value)> = v["allocation_requests"]
            .as_array()
            .map(|a| a.iter().map(|c| (free_memory(&v, c), c)).collect())
            .unwrap_or_default();
        if candidates.is_empty() {
            return Err((conflicts, "no allocation candidates (NoValidHost)".into()));
        }
        // RAM weigher: most free memory first (stable: ties keep Placement's order).
        candidates.sort_by_key(|(free, _)| std::cmp::Reverse(*free));
        for (_, c) in candidates.iter().take(HOSTS_PER_SCHEDULE) {
            let body = json!({
                "allocations": c["allocations"],
                "project_id": "bench-project",
                "user_id": "bench-user",
                "consumer_generation": null,
            });
            for _ in 0..PUT_TRIES {
                let t0 = Instant::now();
                let r = http
                    .request("PUT", &format!("/allocations/{consumer}"), Some(&body))
                    .map_err(|e| (conflicts, e))?;
                t.put.push(t0.elapsed());
                match r.status {
                    204 => return Ok(conflicts),
                    409 => {
                        conflicts += 1;
                        if r.error_code() != "placement.concurrent_update" {
                            break; // capacity gone: next alternate
                        }
                    }
                    _ => return Err((conflicts, format!("PUT: {}", r.text()))),
                }
            }
        }
    }
    Err((conflicts, "every candidate taken after 3 schedules".into()))
}

/// Free `MEMORY_MB` (capacity minus used) over the providers of one allocation request.
fn free_memory(v: &Value, candidate: &Value) -> i64 {
    let Some(allocs) = candidate["allocations"].as_object() else {
        return 0;
    };
    allocs
        .keys()
        .map(|rp| {
            let m = &v["provider_summaries"][rp]["resources"]["MEMORY_MB"];
            m["capacity"].as_i64().unwrap_or(0) - m["used"].as_i64().unwrap_or(0)
        })
        .sum()
}
