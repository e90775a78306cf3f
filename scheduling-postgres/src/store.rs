//! [`PgStore`]: the public face of a decider. Callers on any number of threads hand it requests;
//! one committer thread per store decides them on the replica and commits them to the database,
//! many claims per transaction.
//!
//! The committer's loop: read the change feed (so the replica has everything committed so far),
//! take the queued requests, decide each on the replica and apply it there at once (so the next
//! decision of the batch sees it), commit the batch in one transaction of the commit function,
//! then keep the claims that committed and take back those that did not. A claim refused for a
//! conflict is decided again after the next read of the feed, which brings exactly the changes
//! that made it stale, up to [`StoreConfig::max_retries`] times with a growing random delay.
//! Releases, moves and evacuation plans go through the same loop, each in a transaction of its
//! own (an evacuation plan all or nothing).
//!
//! A lost connection (a database restart) stops the loop until the database is back: it
//! reconnects, rebuilds the replica from the database, and asks the database how the commit
//! that was in flight ended (each claim carries a random token it can look up), so nothing is
//! committed twice or reported wrongly.

use crate::commit::{self, PlaceItem, Refusal, Verdict};
use crate::db::{self, normal_group, Target};
use crate::error::PgStoreError;
use crate::feed;
use crate::replica::{ChangeItem, Replica};
use crate::schema;
use crate::PgStoreStats;
use postgres::types::Json;
use postgres::Client;
use scheduling::model::ServerGroupSpec;
use scheduling::ops::Evacuation;
use scheduling::state::{QuotaLimits, QuotaScope};
use scheduling::store::{PlacementStore, StoreStats};
use scheduling::{
    CommitError, DecideOptions, Placement, PlacementRequest, Profile, Scheduler, State,
};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How a [`PgStore`] connects and decides.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// libpq connection string or URL (`host=/run/postgresql dbname=keel`,
    /// `postgresql://keel@db/keel`).
    pub conninfo: String,
    /// The scheduling profile decisions use.
    pub profile: Arc<Profile>,
    /// Seed of the decider (ties, retries' randomisation).
    pub seed: u64,
    /// Most claims committed in one transaction.
    pub max_batch: usize,
    /// How often an idle store reads the change feed.
    pub poll_interval: Duration,
    /// Conflicting commits before a request is given up.
    pub max_retries: u32,
    /// How long to keep trying to reconnect before failing the requests waiting.
    pub reconnect_timeout: Duration,
}

impl StoreConfig {
    /// Defaults: the default profile, batches of up to 64 claims, the feed read every 2 ms when
    /// idle, 16 retries, 30 s to reconnect.
    pub fn new(conninfo: impl Into<String>) -> Self {
        StoreConfig {
            conninfo: conninfo.into(),
            profile: Arc::new(Profile::default()),
            seed: 0,
            max_batch: 64,
            poll_interval: Duration::from_millis(2),
            max_retries: 16,
            reconnect_timeout: Duration::from_secs(30),
        }
    }
}

/// What a job asks for.
enum Op {
    Place(Box<PlacementRequest>),
    Release(String),
    Move(String),
    Evacuate(String),
    Group(ServerGroupSpec),
    Quota(QuotaScope, Option<QuotaLimits>),
    Sync,
}

/// What a job answers.
enum Answer {
    Placed(Placement),
    Evacuated(Evacuation),
    Done,
}

type Reply = mpsc::SyncSender<Result<Answer, PgStoreError>>;

struct Job {
    op: Op,
    reply: Reply,
    attempt: u32,
    not_before: Instant,
    /// Decided once with other claims of its batch ahead of it and refused: the next refusal is
    /// final.
    settled: bool,
    last_conflict: String,
}

impl Job {
    fn answer(self, result: Result<Answer, PgStoreError>) {
        // The caller may have gone (dropped its receiver): nothing to do then.
        let _ = self.reply.send(result);
    }
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    stopping: bool,
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    conflicts: AtomicU64,
    transactions: AtomicU64,
    reloads: AtomicU64,
    changes: AtomicU64,
}

struct Shared {
    replica: RwLock<Replica>,
    queue: Mutex<Queue>,
    wake: Condvar,
    counters: Counters,
}

impl Shared {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A decider on a PostgreSQL database: an in-memory replica for deciding, kept current from the
/// database's change feed, and one committer thread that commits claims in transactions that
/// check every generation and quota they rely on. Any number of threads may use one store;
/// several stores (in one process or many, on one machine or many) may share a database.
pub struct PgStore {
    shared: Arc<Shared>,
    profile: Arc<Profile>,
    committer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects, checks the schema version, loads the replica from the database and starts the
    /// committer. Fails (naming what) when the database is unreachable, has another schema
    /// version, or holds no cluster.
    pub fn connect(config: StoreConfig) -> Result<PgStore, PgStoreError> {
        let target = Target::parse(&config.conninfo)?;
        let mut client = target.connect()?;
        schema::check_version(&mut client)?;
        let replica = Replica::from_snapshot(db::snapshot(&mut client)?)?;
        let shared = Arc::new(Shared {
            replica: RwLock::new(replica),
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            counters: Counters::default(),
        });
        let committer = Committer {
            shared: shared.clone(),
            target,
            client: Some(client),
            stmts: None,
            reload_wanted: false,
            scheduler: Scheduler::new(config.profile.clone(), config.seed),
            rng: config.seed ^ 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()),
            config: config.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("keel-pg-committer".into())
            .spawn(move || committer.run())
            .map_err(|e| PgStoreError::OutOfStep(format!("cannot start the committer: {e}")))?;
        Ok(PgStore {
            shared,
            profile: config.profile,
            committer: Some(handle),
        })
    }

    fn submit(&self, op: Op) -> Result<Answer, PgStoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        {
            let mut q = self.shared.queue();
            if q.stopping {
                return Err(PgStoreError::Stopped);
            }
            q.jobs.push_back(Job {
                op,
                reply: tx,
                attempt: 0,
                not_before: Instant::now(),
                settled: false,
                last_conflict: String::new(),
            });
        }
        self.shared.wake.notify_one();
        rx.recv().map_err(|_| PgStoreError::Stopped)?
    }

    /// Decides where `request` goes and commits it (deciding again after conflicts). Returns the
    /// placement by names once it is durable in the database.
    pub fn place(&self, request: &PlacementRequest) -> Result<Placement, PgStoreError> {
        match self.submit(Op::Place(Box::new(request.clone())))? {
            Answer::Placed(p) => Ok(p),
            _ => Err(PgStoreError::Stopped),
        }
    }

    /// Frees `consumer`'s allocation; returns what it held. An unknown consumer is refused.
    pub fn release(&self, consumer: &str) -> Result<Placement, PgStoreError> {
        match self.submit(Op::Release(consumer.to_string()))? {
            Answer::Placed(p) => Ok(p),
            _ => Err(PgStoreError::Stopped),
        }
    }

    /// Moves `consumer` to another host (a migration), decided and committed like a placement:
    /// the new host's generations and the consumer's generation are checked.
    pub fn migrate(&self, consumer: &str) -> Result<Placement, PgStoreError> {
        match self.submit(Op::Move(consumer.to_string()))? {
            Answer::Placed(p) => Ok(p),
            _ => Err(PgStoreError::Stopped),
        }
    }

    /// Disables `host` and moves its VMs elsewhere, as one plan committed all or nothing (the VMs
    /// that fit nowhere stay, listed as stranded).
    pub fn evacuate(&self, host: &str) -> Result<Evacuation, PgStoreError> {
        match self.submit(Op::Evacuate(host.to_string()))? {
            Answer::Evacuated(e) => Ok(e),
            _ => Err(PgStoreError::Stopped),
        }
    }

    /// Creates server group `spec` in the database (or finds it there with the same
    /// definition), so that requests may name it.
    pub fn ensure_server_group(&self, spec: &ServerGroupSpec) -> Result<(), PgStoreError> {
        self.submit(Op::Group(spec.clone())).map(drop)
    }

    /// Sets (replaces) the quota limits of `scope`, usage counted in the same transaction.
    pub fn set_quota(&self, scope: QuotaScope, limits: QuotaLimits) -> Result<(), PgStoreError> {
        self.submit(Op::Quota(scope, Some(limits))).map(drop)
    }

    /// Removes the quota limits of `scope`.
    pub fn clear_quota(&self, scope: QuotaScope) -> Result<(), PgStoreError> {
        self.submit(Op::Quota(scope, None)).map(drop)
    }

    /// Returns once the replica holds everything committed before the call.
    pub fn sync(&self) -> Result<(), PgStoreError> {
        self.submit(Op::Sync).map(drop)
    }

    /// Runs `f` on the replica. Claims of a batch being committed are in it already.
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self
            .shared
            .replica
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .state)
    }

    /// The profile decisions use (for explanations made on [`PgStore::read`]).
    pub fn profile(&self) -> &Arc<Profile> {
        &self.profile
    }

    /// Counters so far.
    pub fn stats(&self) -> PgStoreStats {
        let c = &self.shared.counters;
        PgStoreStats {
            commits: c.commits.load(Ordering::Relaxed),
            conflicts: c.conflicts.load(Ordering::Relaxed),
            transactions: c.transactions.load(Ordering::Relaxed),
            reloads: c.reloads.load(Ordering::Relaxed),
            changes_read: c.changes.load(Ordering::Relaxed),
        }
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.shared.queue().stopping = true;
        self.shared.wake.notify_all();
        if let Some(h) = self.committer.take() {
            if h.join().is_err() {
                log::error!("the placement committer thread panicked");
            }
        }
    }
}

impl PlacementStore for PgStore {
    type Error = PgStoreError;

    fn place(&self, request: &PlacementRequest) -> Result<Placement, PgStoreError> {
        PgStore::place(self, request)
    }

    fn release(&self, consumer: &str) -> Result<Placement, PgStoreError> {
        PgStore::release(self, consumer)
    }

    fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        PgStore::read(self, f)
    }

    fn stats(&self) -> StoreStats {
        let s = PgStore::stats(self);
        StoreStats {
            commits: s.commits,
            conflicts: s.conflicts,
        }
    }
}

/// A claim of a batch waiting for the commit's answer.
struct Pending {
    job: Job,
    consumer: String,
    token: i64,
    /// Applied to the replica before the commit (places), to take back if it fails.
    tentative: bool,
    placement: Option<Placement>,
}

/// How a commit call ended.
enum Outcome {
    /// The function's answer: one result per item.
    Results(Vec<Value>),
    /// An atomic batch refused (the failure, as the function reported it).
    Refused(Value),
    /// The connection broke: whether it committed is unknown.
    InDoubt(PgStoreError),
    /// Refused as a whole for another reason.
    Failed(PgStoreError),
}

struct Committer {
    shared: Arc<Shared>,
    target: Target,
    client: Option<Client>,
    /// Statements prepared on `client` (prepared again after every reconnection).
    stmts: Option<Arc<commit::Statements>>,
    /// Rebuild the replica before the next batch.
    reload_wanted: bool,
    scheduler: Scheduler,
    rng: u64,
    config: StoreConfig,
}

impl Committer {
    fn next_random(&mut self) -> u64 {
        // SplitMix64.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn token(&mut self) -> i64 {
        (self.next_random() >> 1) as i64
    }

    fn replica(&self) -> std::sync::RwLockWriteGuard<'_, Replica> {
        self.shared
            .replica
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for work; `None` once stopping with nothing left.
    fn next_jobs(&mut self) -> Option<Vec<Job>> {
        let mut q = self.shared.queue();
        loop {
            let now = Instant::now();
            if let Some(first) = q.jobs.iter().position(|j| j.not_before <= now) {
                let mut jobs = Vec::new();
                let is_place = matches!(q.jobs[first].op, Op::Place(_));
                if let Some(j) = q.jobs.remove(first) {
                    jobs.push(j);
                }
                if is_place {
                    let mut i = first;
                    while i < q.jobs.len() && jobs.len() < self.config.max_batch.max(1) {
                        if matches!(q.jobs[i].op, Op::Place(_)) && q.jobs[i].not_before <= now {
                            if let Some(j) = q.jobs.remove(i) {
                                jobs.push(j);
                            }
                        } else {
                            i += 1;
                        }
                    }
                }
                return Some(jobs);
            }
            if q.stopping && q.jobs.is_empty() {
                return None;
            }
            let wait = q
                .jobs
                .iter()
                .map(|j| j.not_before.saturating_duration_since(now))
                .min()
                .unwrap_or(self.config.poll_interval)
                .min(self.config.poll_interval);
            let (guard, timeout) = self
                .shared
                .wake
                .wait_timeout(q, wait)
                .unwrap_or_else(|e| e.into_inner());
            q = guard;
            if timeout.timed_out() && !q.jobs.iter().any(|j| j.not_before <= Instant::now()) {
                // Idle: read the feed.
                return Some(Vec::new());
            }
        }
    }

    fn run(mut self) {
        let mut in_doubt: Vec<Pending> = Vec::new();
        while let Some(jobs) = self.next_jobs() {
            if let Err(e) = self.ensure_connected(&mut in_doubt) {
                for job in jobs {
                    job.answer(Err(e.clone()));
                }
                self.fail_queue(&e);
                continue;
            }
            if self.reload_wanted {
                self.reload_wanted = false;
                if let Err(e) = self.reload() {
                    self.broken(e);
                    self.requeue_front(jobs);
                    continue;
                }
            }
            let t = Instant::now();
            let polled = self.poll();
            log::trace!("feed read in {:.2} ms", t.elapsed().as_secs_f64() * 1e3);
            if let Err(e) = polled {
                self.broken(e);
                self.requeue_front(jobs);
                continue;
            }
            let Some(first) = jobs.first() else {
                continue;
            };
            let doubt = match first.op {
                Op::Place(_) => self.place_batch(jobs),
                _ => {
                    let mut jobs = jobs;
                    let job = jobs.remove(0);
                    self.single(job)
                }
            };
            in_doubt.extend(doubt);
        }
    }

    /// Fails every queued job (the database stayed unreachable past the timeout).
    fn fail_queue(&self, e: &PgStoreError) {
        let jobs: Vec<Job> = self.shared.queue().jobs.drain(..).collect();
        for job in jobs {
            job.answer(Err(e.clone()));
        }
    }

    fn requeue_front(&self, jobs: Vec<Job>) {
        let mut q = self.shared.queue();
        for job in jobs.into_iter().rev() {
            q.jobs.push_front(job);
        }
    }

    fn requeue_conflict(&mut self, mut job: Job, why: String) {
        self.shared
            .counters
            .conflicts
            .fetch_add(1, Ordering::Relaxed);
        job.attempt += 1;
        job.last_conflict = why;
        if job.attempt > self.config.max_retries {
            let (attempts, last) = (job.attempt, job.last_conflict.clone());
            job.answer(Err(PgStoreError::Conflicts { attempts, last }));
            return;
        }
        if job.attempt == RELOAD_AFTER {
            // The same claim refused this many times in a row, each time after a fresh read of
            // the feed: the replica may be missing a change. Rebuild it from the database.
            log::warn!(
                "{} conflicting commits in a row (the last: {}): reloading the replica",
                job.attempt,
                job.last_conflict
            );
            self.reload_wanted = true;
        }
        // Jitter: up to attempt² × 100 µs, so deciders racing for one host fall out of step.
        let span = u64::from(job.attempt * job.attempt) * 100;
        job.not_before = Instant::now() + Duration::from_micros(self.next_random() % span.max(1));
        self.shared.queue().jobs.push_back(job);
    }

    /// Rebuilds the replica from the database on the current connection.
    fn reload(&mut self) -> Result<(), PgStoreError> {
        let Some(client) = self.client.as_mut() else {
            return Ok(());
        };
        let replica = Replica::from_snapshot(db::snapshot(client)?)?;
        *self.replica() = replica;
        self.shared.counters.reloads.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Drops the connection after an error that means it is gone.
    fn broken(&mut self, e: PgStoreError) {
        if e.is_connection() {
            log::warn!("lost the database connection: {e}");
        } else {
            log::error!("rebuilding the replica after: {e}");
        }
        self.client = None;
    }

    /// Reconnects (and rebuilds the replica) if the connection was lost, then settles the commit
    /// that was in flight when it broke.
    fn ensure_connected(&mut self, in_doubt: &mut Vec<Pending>) -> Result<(), PgStoreError> {
        if self.client.is_some() {
            return Ok(());
        }
        let deadline = Instant::now() + self.config.reconnect_timeout;
        let mut delay = Duration::from_millis(20);
        let mut client = loop {
            let attempt = self.target.connect().and_then(|mut c| {
                schema::check_version(&mut c)?;
                let replica = Replica::from_snapshot(db::snapshot(&mut c)?)?;
                *self.replica() = replica;
                Ok(c)
            });
            match attempt {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline && (e.is_connection() || is_starting(&e)) => {
                    log::debug!("reconnecting: {e}");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_millis(500));
                }
                Err(e) => return Err(e),
            }
        };
        self.shared.counters.reloads.fetch_add(1, Ordering::Relaxed);
        log::info!(
            "reconnected to {} and reloaded the replica",
            self.target.name
        );
        let doubts = std::mem::take(in_doubt);
        if !doubts.is_empty() {
            if let Err(e) = self.settle(&mut client, doubts) {
                self.client = None;
                return Err(e);
            }
        }
        self.client = Some(client);
        self.stmts = None;
        Ok(())
    }

    /// Learns how an interrupted commit ended, from the tokens its claims wrote.
    fn settle(&mut self, client: &mut Client, doubts: Vec<Pending>) -> Result<(), PgStoreError> {
        let ids: Vec<String> = doubts.iter().map(|p| p.consumer.clone()).collect();
        let rows = client
            .query(
                "SELECT id, token, placement FROM keel_consumers WHERE id = ANY($1)",
                &[&ids],
            )
            .map_err(PgStoreError::db(
                "reading the consumers of an interrupted commit",
            ))?;
        let found: HashMap<String, (i64, Value)> = rows
            .into_iter()
            .map(|r| {
                let Json(p): Json<Value> = r.get(2);
                (r.get(0), (r.get(1), p))
            })
            .collect();
        let mut again = Vec::new();
        for p in doubts {
            let row = found.get(&p.consumer);
            let committed = match &p.job.op {
                Op::Release(_) => row.is_none(),
                _ => row.is_some_and(|(t, _)| *t == p.token),
            };
            if committed {
                self.shared.counters.commits.fetch_add(1, Ordering::Relaxed);
                let placement = match (&p.placement, row) {
                    (Some(pl), _) => Ok(pl.clone()),
                    (None, Some((_, v))) => db::decode_json::<Placement>("placement", v.clone()),
                    (None, None) => Err(PgStoreError::UnknownConsumer(p.consumer.clone())),
                };
                p.job.answer(placement.map(Answer::Placed));
            } else if matches!(p.job.op, Op::Place(_)) && row.is_some() {
                p.job
                    .answer(Err(PgStoreError::DuplicateConsumer(p.consumer.clone())));
            } else {
                again.push(p.job);
            }
        }
        self.requeue_front(again);
        Ok(())
    }

    /// The statements prepared on the current connection (preparing them if needed).
    fn statements(&mut self) -> Result<Option<Arc<commit::Statements>>, postgres::Error> {
        let Some(client) = self.client.as_mut() else {
            return Ok(None);
        };
        if self.stmts.is_none() {
            self.stmts = Some(Arc::new(commit::Statements::prepare(client)?));
        }
        Ok(self.stmts.clone())
    }

    fn poll(&mut self) -> Result<(), PgStoreError> {
        let Some(stmts) = self
            .statements()
            .map_err(PgStoreError::db("preparing statements"))?
        else {
            return Ok(());
        };
        let Some(client) = self.client.as_mut() else {
            return Ok(());
        };
        let n = feed::poll(client, &stmts.feed, &self.shared.replica)?;
        self.shared
            .counters
            .changes
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Calls the commit function.
    fn call(&mut self, batch: &Value) -> Outcome {
        let Some(client) = self.client.as_mut() else {
            return Outcome::Failed(PgStoreError::Stopped);
        };
        let result = client.query_one("SELECT keel_commit($1)", &[&Json(batch)]);
        self.shared
            .counters
            .transactions
            .fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(row) => {
                let Json(v): Json<Value> = row.get(0);
                match v.get("results").and_then(Value::as_array) {
                    Some(r) => Outcome::Results(r.clone()),
                    None => Outcome::Failed(PgStoreError::OutOfStep(format!(
                        "the commit function answered {v}"
                    ))),
                }
            }
            Err(e) => {
                if crate::error::is_connection_error(&e) {
                    return Outcome::InDoubt(PgStoreError::db("a commit")(e));
                }
                if let Some(db) = e.as_db_error() {
                    if db.code().code() == "KL409" {
                        let v = serde_json::from_str(db.message()).unwrap_or(Value::Null);
                        return Outcome::Refused(v);
                    }
                }
                Outcome::Failed(PgStoreError::db("a commit")(e))
            }
        }
    }

    /// Decides a batch of placements on the replica and commits them in one transaction. Returns
    /// the claims whose fate is unknown (the connection broke).
    fn place_batch(&mut self, jobs: Vec<Job>) -> Vec<Pending> {
        let mut pending: Vec<Pending> = Vec::with_capacity(jobs.len());
        let mut items: Vec<PlaceItem> = Vec::with_capacity(jobs.len());
        let mut later: Vec<Job> = Vec::new();
        {
            let shared = self.shared.clone();
            let mut r = shared.replica.write().unwrap_or_else(|e| e.into_inner());
            let mut bumps: HashMap<usize, i64> = HashMap::new();
            let mut group_bumps: HashMap<String, i64> = HashMap::new();
            for mut job in jobs {
                let Op::Place(req) = &job.op else {
                    later.push(job);
                    continue;
                };
                let compiled = match r.state.compile(req) {
                    Ok(c) => c,
                    Err(e) => {
                        job.answer(Err(e.into()));
                        continue;
                    }
                };
                let opts = DecideOptions {
                    attempt: job.attempt,
                    ..Default::default()
                };
                let ahead = !pending.is_empty();
                let decision = match self.scheduler.decide(&r.state, &compiled, &opts) {
                    Ok(d) => d,
                    Err(u) => {
                        if ahead && !job.settled {
                            job.settled = true;
                            later.push(job);
                        } else {
                            let why = u.explain(r.state.cluster());
                            job.answer(Err(PgStoreError::Unschedulable(Box::new(why))));
                        }
                        continue;
                    }
                };
                let claim = decision.claim;
                let cluster = r.state.cluster().clone();
                let placement = claim.placement(&cluster);
                let host_owner = cluster.host_owner(claim.host()).index();
                let check: Vec<(usize, i64)> = claim
                    .generations()
                    .iter()
                    .map(|g| {
                        let o = g.owner().index();
                        let base = r.owner_generation(g.owner());
                        (o, base + bumps.get(&o).copied().unwrap_or(0))
                    })
                    .collect();
                let group = placement.server_group.clone();
                // Every claim in a group checks the group's generation, whether or not this
                // decision depended on the members elsewhere: the group's changes are then
                // ordered by the database, and a replica never holds a group generation whose
                // earlier changes it has not applied.
                let group_gen = group.as_ref().map(|g| {
                    r.group_generation(&g.name) + group_bumps.get(&g.name).copied().unwrap_or(0)
                });
                if let Err(e) = self.scheduler.commit(&mut r.state, claim) {
                    match e {
                        CommitError::QuotaExceeded { .. } if ahead && !job.settled => {
                            job.settled = true;
                            later.push(job);
                        }
                        CommitError::QuotaExceeded { .. } => {
                            job.answer(Err(PgStoreError::QuotaExceeded(e.to_string())))
                        }
                        CommitError::DuplicateConsumer(c) => {
                            job.answer(Err(PgStoreError::DuplicateConsumer(c)))
                        }
                        other => {
                            let why = other.to_string();
                            self.requeue_conflict(job, why);
                        }
                    }
                    continue;
                }
                for (o, _) in &check {
                    *bumps.entry(*o).or_insert(0) += 1;
                }
                if let Some(g) = &group {
                    *group_bumps.entry(g.name.clone()).or_insert(0) += 1;
                }
                let token = self.token();
                let usage: Vec<(String, i64)> = compiled
                    .totals
                    .iter()
                    .map(|&(c, a)| (cluster.class_name(c).to_string(), to_i64(a)))
                    .collect();
                let alloc: Vec<(String, String, i64)> = placement
                    .resources
                    .iter()
                    .map(|x| (x.provider.clone(), x.class.clone(), to_i64(x.amount)))
                    .collect();
                items.push(PlaceItem {
                    consumer: placement.consumer.clone(),
                    token,
                    host: placement.host.clone(),
                    host_owner,
                    check,
                    group: group.as_ref().map(|g| {
                        let (policy, max) = normal_group(g);
                        (g.name.clone(), policy, max)
                    }),
                    group_gen,
                    project: req.project.clone(),
                    user: req.user.clone(),
                    usage,
                    alloc,
                    placement: serde_json::to_value(&placement).unwrap_or(Value::Null),
                });
                pending.push(Pending {
                    consumer: placement.consumer.clone(),
                    job,
                    token,
                    tentative: true,
                    placement: Some(placement),
                });
            }
        }
        self.requeue_front(later);
        if items.is_empty() {
            return Vec::new();
        }
        let decided = Instant::now();
        let outcome = match self.statements() {
            Ok(Some(stmts)) => match self.client.as_mut() {
                Some(client) => commit::commit_places(client, &stmts, &items),
                None => Ok(Vec::new()),
            },
            Ok(None) => Ok(Vec::new()),
            Err(e) => Err(e),
        };
        if matches!(&outcome, Ok(v) if v.is_empty()) {
            // No connection: decide again once reconnected.
            self.undo(&pending);
            self.requeue_front(pending.into_iter().map(|p| p.job).collect());
            return Vec::new();
        }
        self.shared
            .counters
            .transactions
            .fetch_add(1, Ordering::Relaxed);
        log::debug!(
            "batch of {} committed in {:.2} ms",
            pending.len(),
            decided.elapsed().as_secs_f64() * 1e3
        );
        match outcome {
            Ok(verdicts) => {
                self.finish_batch(pending, verdicts);
                Vec::new()
            }
            Err(e) if crate::error::is_connection_error(&e) => {
                self.broken(PgStoreError::db("a commit")(e));
                pending
            }
            Err(e) => {
                self.undo(&pending);
                let sqlstate = e.code().map(|c| c.code().to_string());
                let e = PgStoreError::db("a commit")(e);
                match sqlstate.as_deref() {
                    // A consumer inserted by another decider's transaction in flight (unique
                    // violation), a deadlock or serialization failure: decide again.
                    Some("23505") | Some("40P01") | Some("40001") => {
                        for p in pending {
                            self.requeue_conflict(p.job, e.to_string());
                        }
                    }
                    // An inventory's CHECK refused, or an inventory the replica named is missing:
                    // the replica was wrong. Rebuild it and decide again.
                    Some("23514") | Some("22012") => {
                        log::error!("the database refused a batch the replica allowed: {e}");
                        self.client = None;
                        for p in pending {
                            self.requeue_conflict(p.job, e.to_string());
                        }
                    }
                    _ => {
                        for p in pending {
                            p.job.answer(Err(e.clone()));
                        }
                    }
                }
                Vec::new()
            }
        }
    }

    /// Takes back the claims applied to the replica ahead of a commit that did not happen.
    fn undo(&mut self, pending: &[Pending]) {
        let mut r = self.replica();
        for p in pending.iter().filter(|p| p.tentative) {
            if let Err(e) = r.state.release(&p.consumer) {
                log::error!("taking back `{}`: {e}", p.consumer);
            }
        }
    }

    fn finish_batch(&mut self, pending: Vec<Pending>, verdicts: Vec<Verdict>) {
        let mut retry = Vec::new();
        let mut out_of_step = false;
        {
            let shared = self.shared.clone();
            let mut r = shared.replica.write().unwrap_or_else(|e| e.into_inner());
            for (p, verdict) in pending.into_iter().zip(verdicts) {
                let (kind, detail) = match verdict {
                    Verdict::Committed { gens, group } => {
                        if !r.confirm(&gens, group.as_ref(), &p.consumer, Some(1)) {
                            log::error!(
                                "the commit of `{}` skipped a generation the replica holds: \
                                 rebuilding the replica",
                                p.consumer
                            );
                            out_of_step = true;
                        }
                        shared.counters.commits.fetch_add(1, Ordering::Relaxed);
                        let placement = p.placement.clone();
                        p.job
                            .answer(placement.map(Answer::Placed).ok_or(PgStoreError::Stopped));
                        continue;
                    }
                    Verdict::Refused(kind, detail) => (kind, detail),
                };
                if let Err(e) = r.state.release(&p.consumer) {
                    log::error!("taking back `{}`: {e}", p.consumer);
                }
                match kind {
                    Refusal::Conflict => retry.push((p.job, detail)),
                    Refusal::Quota => p.job.answer(Err(PgStoreError::QuotaExceeded(detail))),
                    Refusal::Duplicate => p
                        .job
                        .answer(Err(PgStoreError::DuplicateConsumer(p.consumer))),
                    Refusal::Group => p.job.answer(Err(PgStoreError::ServerGroup(detail))),
                }
            }
        }
        if out_of_step {
            self.reload_wanted = true;
        }
        for (job, why) in retry {
            self.requeue_conflict(job, why);
        }
    }

    /// Runs a job that is not a placement, in a transaction of its own.
    fn single(&mut self, job: Job) -> Vec<Pending> {
        let result = match &job.op {
            Op::Release(c) => {
                let c = c.clone();
                return self.release(job, c);
            }
            Op::Move(c) => {
                let c = c.clone();
                return self.relocate(job, c);
            }
            Op::Evacuate(h) => {
                let h = h.clone();
                return self.evacuate(job, h);
            }
            Op::Group(spec) => self.group(spec),
            Op::Quota(scope, limits) => self.quota(scope, limits.as_ref()),
            Op::Sync | Op::Place(_) => Ok(Answer::Done),
        };
        match result {
            Err(e) if e.is_connection() => {
                self.broken(e);
                self.requeue_front(vec![job]);
            }
            other => {
                let _ = self.poll();
                job.answer(other);
            }
        }
        Vec::new()
    }

    /// Applies the change items a successful commit of this decider returned.
    fn apply_results(&mut self, results: &[Value], ops: &[Value]) -> Result<(), PgStoreError> {
        let mut r = self.replica();
        for (result, op) in results.iter().zip(ops) {
            let mut v = result.clone();
            if let (Some(obj), Some(src)) = (v.as_object_mut(), op.as_object()) {
                for key in ["op", "consumer", "host", "disabled"] {
                    if let Some(x) = src.get(key) {
                        obj.insert(key.to_string(), x.clone());
                    }
                }
            }
            let item: ChangeItem = serde_json::from_value(v)
                .map_err(|e| PgStoreError::OutOfStep(format!("commit result: {e}")))?;
            r.offer(item)?;
        }
        r.flush()
    }

    /// Runs one atomic batch for `job`: the results on success; conflicts are retried, other
    /// refusals answered.
    fn atomic(&mut self, job: Job, items: Vec<Value>, pending: Pending) -> AtomicEnd {
        let batch = json!({"atomic": true, "items": items});
        match self.call(&batch) {
            Outcome::Results(results) => {
                if let Err(e) = self.apply_results(&results, &items) {
                    self.broken(e);
                }
                self.shared
                    .counters
                    .commits
                    .fetch_add(items.len() as u64, Ordering::Relaxed);
                AtomicEnd::Done(job, results)
            }
            Outcome::Refused(v) => {
                let kind = v.get("error").and_then(Value::as_str).unwrap_or("");
                let detail = v
                    .get("detail")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                match kind {
                    "conflict" | "disabled" => self.requeue_conflict(job, detail),
                    "unknown_consumer" => {
                        let c = v.get("consumer").and_then(Value::as_str).unwrap_or("");
                        job.answer(Err(PgStoreError::UnknownConsumer(c.to_string())));
                    }
                    "unknown_host" => job.answer(Err(PgStoreError::UnknownHost(detail))),
                    "quota" => job.answer(Err(PgStoreError::QuotaExceeded(detail))),
                    _ => job.answer(Err(PgStoreError::ServerGroup(detail))),
                }
                AtomicEnd::Answered
            }
            Outcome::InDoubt(e) => {
                self.broken(e);
                AtomicEnd::InDoubt(Pending { job, ..pending })
            }
            Outcome::Failed(e) => {
                job.answer(Err(e));
                AtomicEnd::Answered
            }
        }
    }

    fn release(&mut self, job: Job, consumer: String) -> Vec<Pending> {
        let (cgen, known) = {
            let r = self.replica();
            (
                r.consumer_generation(&consumer),
                r.state.allocation(&consumer).is_some(),
            )
        };
        let token = self.token();
        let items = vec![json!({
            "op": "release", "consumer": consumer,
            "cgen": if known { cgen } else { None },
        })];
        let pending = Pending {
            job: dummy_job(),
            consumer: consumer.clone(),
            token,
            tentative: false,
            placement: None,
        };
        match self.atomic(job, items, pending) {
            AtomicEnd::Done(job, results) => {
                let placement = results
                    .first()
                    .and_then(|r| r.get("placement"))
                    .cloned()
                    .unwrap_or(Value::Null);
                job.answer(
                    db::decode_json::<Placement>(format!("placement of `{consumer}`"), placement)
                        .map(Answer::Placed),
                );
                Vec::new()
            }
            AtomicEnd::Answered => Vec::new(),
            AtomicEnd::InDoubt(p) => vec![p],
        }
    }

    fn relocate(&mut self, mut job: Job, consumer: String) -> Vec<Pending> {
        let token = self.token();
        let decided = {
            let shared = self.shared.clone();
            let r = shared.replica.read().unwrap_or_else(|e| e.into_inner());
            let Some(alloc) = r.state.allocation(&consumer) else {
                job.answer(Err(PgStoreError::UnknownConsumer(consumer)));
                return Vec::new();
            };
            let from = alloc.host();
            let request = alloc.request().clone();
            let opts = DecideOptions {
                exclude: &[from],
                attempt: job.attempt,
                ..Default::default()
            };
            match self.scheduler.decide(&r.state, &request, &opts) {
                Ok(d) => {
                    let cluster = r.state.cluster();
                    let placement = d.claim.placement(cluster);
                    let check: Vec<(usize, i64)> = d
                        .claim
                        .generations()
                        .iter()
                        .map(|g| (g.owner().index(), r.owner_generation(g.owner())))
                        .collect();
                    let group_gen = placement
                        .server_group
                        .as_ref()
                        .map(|g| r.group_generation(&g.name));
                    Ok((
                        placement,
                        check,
                        r.consumer_generation(&consumer),
                        group_gen,
                    ))
                }
                Err(u) => Err(u.explain(r.state.cluster())),
            }
        };
        let (placement, check, cgen, group_gen) = match decided {
            Ok(x) => x,
            Err(why) => {
                job.answer(Err(PgStoreError::Unschedulable(Box::new(why))));
                return Vec::new();
            }
        };
        let item = move_item(&placement, &check, cgen, token, group_gen);
        job.settled = true;
        let pending = Pending {
            job: dummy_job(),
            consumer: consumer.clone(),
            token,
            tentative: false,
            placement: Some(placement.clone()),
        };
        match self.atomic(job, vec![item], pending) {
            AtomicEnd::Done(job, _) => {
                job.answer(Ok(Answer::Placed(placement)));
                Vec::new()
            }
            AtomicEnd::Answered => Vec::new(),
            AtomicEnd::InDoubt(p) => vec![p],
        }
    }

    fn evacuate(&mut self, job: Job, host: String) -> Vec<Pending> {
        let planned = {
            let shared = self.shared.clone();
            let r = shared.replica.read().unwrap_or_else(|e| e.into_inner());
            let mut scratch = r.state.clone();
            match scheduling::ops::evacuate(&mut scratch, &mut self.scheduler, &host) {
                Err(e) => Err(e),
                Ok(plan) => {
                    let mut bumps: HashMap<usize, i64> = HashMap::new();
                    let mut group_bumps: HashMap<String, i64> = HashMap::new();
                    let cluster = r.state.cluster().clone();
                    let mut items = vec![json!({"op": "disable", "host": host, "disabled": true})];
                    if let Some(h) = cluster.host_id(&host) {
                        *bumps.entry(cluster.host_owner(h).index()).or_insert(0) += 1;
                    }
                    let mut tokens = Vec::new();
                    for (consumer, _) in &plan.moved {
                        let (Some(new), Some(old)) =
                            (scratch.allocation(consumer), r.state.allocation(consumer))
                        else {
                            continue;
                        };
                        let placement = new.placement(&cluster);
                        let owners = |a: &scheduling::Allocation| {
                            let mut o = vec![cluster.host_owner(a.host()).index()];
                            for s in a.slots() {
                                if let Some(slot) = cluster.slot(s.slot()) {
                                    o.push(cluster.provider(slot.provider).owner.index());
                                }
                            }
                            o.sort_unstable();
                            o.dedup();
                            o
                        };
                        let dest = owners(new);
                        let check: Vec<(usize, i64)> = dest
                            .iter()
                            .map(|&o| {
                                let base = r.owner_generation_at(o);
                                (o, base + bumps.get(&o).copied().unwrap_or(0))
                            })
                            .collect();
                        let mut all = dest.clone();
                        all.extend(owners(old));
                        all.sort_unstable();
                        all.dedup();
                        for o in all {
                            *bumps.entry(o).or_insert(0) += 1;
                        }
                        let group_gen = placement.server_group.as_ref().map(|g| {
                            let bump = group_bumps.entry(g.name.clone()).or_insert(0);
                            *bump += 1;
                            r.group_generation(&g.name) + *bump - 1
                        });
                        let token = (self.next_random() >> 1) as i64;
                        tokens.push((consumer.clone(), token));
                        items.push(move_item(
                            &placement,
                            &check,
                            r.consumer_generation(consumer),
                            token,
                            group_gen,
                        ));
                    }
                    Ok((plan, items, tokens))
                }
            }
        };
        let (plan, items, tokens) = match planned {
            Ok(x) => x,
            Err(scheduling::PlacementStateError::UnknownHost(h)) => {
                job.answer(Err(PgStoreError::UnknownHost(h)));
                return Vec::new();
            }
            Err(e) => {
                job.answer(Err(e.into()));
                return Vec::new();
            }
        };
        // In doubt, the first move's token tells whether the plan committed.
        let (consumer, token) = tokens.first().cloned().unwrap_or_default();
        let pending = Pending {
            job: dummy_job(),
            consumer,
            token,
            tentative: false,
            placement: None,
        };
        match self.atomic(job, items, pending) {
            AtomicEnd::Done(job, _) => {
                job.answer(Ok(Answer::Evacuated(plan)));
                Vec::new()
            }
            AtomicEnd::Answered => Vec::new(),
            AtomicEnd::InDoubt(p) => vec![p],
        }
    }

    fn group(&mut self, spec: &ServerGroupSpec) -> Result<Answer, PgStoreError> {
        let Some(client) = self.client.as_mut() else {
            return Err(PgStoreError::Stopped);
        };
        let (policy, max) = normal_group(spec);
        let mut tx = client
            .transaction()
            .map_err(PgStoreError::db("starting the server group"))?;
        tx.execute(
            "INSERT INTO keel_server_groups (name, policy, max_per_host) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO NOTHING",
            &[&spec.name, &policy, &max],
        )
        .map_err(PgStoreError::db("creating the server group"))?;
        let row = tx
            .query_one(
                "SELECT policy, max_per_host FROM keel_server_groups WHERE name = $1",
                &[&spec.name],
            )
            .map_err(PgStoreError::db("reading the server group"))?;
        let (have_policy, have_max): (String, Option<i32>) = (row.get(0), row.get(1));
        if have_policy != policy || have_max != max {
            return Err(PgStoreError::ServerGroup(format!(
                "server group `{}`: exists with policy {have_policy} (max_per_host {}), asked for {policy} (max_per_host {})",
                spec.name,
                have_max.map_or("None".into(), |m| m.to_string()),
                max.map_or("None".into(), |m| m.to_string()),
            )));
        }
        let item = json!([{"op": "group", "spec": spec, "gens": []}]);
        tx.execute(
            "INSERT INTO keel_changes (items) VALUES ($1)",
            &[&Json(item)],
        )
        .map_err(PgStoreError::db("recording the server group"))?;
        tx.commit()
            .map_err(PgStoreError::db("committing the server group"))?;
        self.replica().ensure_group(spec)?;
        Ok(Answer::Done)
    }

    fn quota(
        &mut self,
        scope: &QuotaScope,
        limits: Option<&QuotaLimits>,
    ) -> Result<Answer, PgStoreError> {
        let cluster = self.replica().state.cluster().clone();
        let Some(client) = self.client.as_mut() else {
            return Err(PgStoreError::Stopped);
        };
        db::set_quota(client, &cluster, scope, limits)?;
        Ok(Answer::Done)
    }
}

/// How an atomic commit ended for its job.
enum AtomicEnd {
    /// Committed: the job, to answer, and the results.
    Done(Job, Vec<Value>),
    /// Answered already (refused, or queued again).
    Answered,
    /// The connection broke: settle after reconnecting.
    InDoubt(Pending),
}

/// A job that answers nobody (a placeholder while the real one is being answered).
fn dummy_job() -> Job {
    let (tx, _) = mpsc::sync_channel(1);
    Job {
        op: Op::Sync,
        reply: tx,
        attempt: 0,
        not_before: Instant::now(),
        settled: true,
        last_conflict: String::new(),
    }
}

/// The commit function's item for moving a consumer to `placement`.
fn move_item(
    placement: &Placement,
    check: &[(usize, i64)],
    cgen: Option<i64>,
    token: i64,
    group_gen: Option<i64>,
) -> Value {
    let alloc: Vec<(&str, &str, u64)> = placement
        .resources
        .iter()
        .map(|x| (x.provider.as_str(), x.class.as_str(), x.amount))
        .collect();
    json!({
        "op": "move",
        "consumer": placement.consumer,
        "cgen": cgen,
        "token": token,
        "host": placement.host,
        "check": check,
        "group_gen": group_gen,
        "alloc": alloc,
        "placement": placement,
    })
}

/// Consecutive conflicts of one claim after which the replica is rebuilt from the database.
const RELOAD_AFTER: u32 = 8;

/// A database that is starting up or shutting down answers connections with these.
fn is_starting(e: &PgStoreError) -> bool {
    match e {
        PgStoreError::Unreachable { source, .. } | PgStoreError::Database { source, .. } => {
            crate::error::is_connection_error(source)
        }
        _ => false,
    }
}

/// A quantity as the database stores it (every quantity is at most 2^53, validated by the
/// cluster model).
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
