//! Connecting, loading a cluster into the database, and setting quotas: everything that writes
//! outside the commit function.

use crate::error::PgStoreError;
use crate::schema;
use postgres::types::Json;
use postgres::{Client, Config, NoTls};
use scheduling::model::{ClusterSpec, InventorySpec, ProviderSpec, ServerGroupPolicy};
use scheduling::model::{ServerGroupSpec, MAX_QUANTITY};
use scheduling::state::{QuotaLimits, QuotaScope};
use scheduling::Cluster;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// A parsed connection string, and how to name it in errors.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub(crate) config: Config,
    pub(crate) name: String,
}

impl Target {
    pub(crate) fn parse(conninfo: &str) -> Result<Target, PgStoreError> {
        let mut config: Config = conninfo
            .parse()
            .map_err(|e| PgStoreError::ConnectionString(Arc::new(e)))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                postgres::config::Host::Tcp(h) => h.clone(),
                postgres::config::Host::Unix(p) => p.display().to_string(),
            })
            .collect();
        let name = format!(
            "{} (database `{}`)",
            if hosts.is_empty() {
                "the default socket".to_string()
            } else {
                hosts.join(",")
            },
            config.get_dbname().unwrap_or("default")
        );
        Ok(Target { config, name })
    }

    pub(crate) fn connect(&self) -> Result<Client, PgStoreError> {
        self.config
            .connect(NoTls)
            .map_err(|e| PgStoreError::Unreachable {
                target: self.name.clone(),
                source: Arc::new(e),
            })
    }
}

/// Connects to `conninfo` and brings its schema to this build's version (creating it in an empty
/// database). Refuses a database written by a newer version.
pub fn init(conninfo: &str) -> Result<(), PgStoreError> {
    let mut client = Target::parse(conninfo)?.connect()?;
    schema::migrate(&mut client)?;
    Ok(())
}

/// The normal form of a server group's definition (anti-affinity's default of one member per host
/// spelled as no limit), so that two deciders describe one group alike.
pub(crate) fn normal_group(spec: &ServerGroupSpec) -> (String, Option<i32>) {
    let max = match spec.policy {
        ServerGroupPolicy::AntiAffinity => spec
            .max_per_host
            .filter(|&m| m != 1)
            .map(|m| i32::try_from(m).unwrap_or(i32::MAX)),
        _ => None,
    };
    (spec.policy.to_string(), max)
}

/// Rows of the providers and inventories tables, gathered from the spec and the validated cluster.
#[derive(Default)]
struct Rows {
    provider: Vec<String>,
    owner: Vec<i32>,
    parent: Vec<Option<String>>,
    host: Vec<Option<String>>,
    inv_provider: Vec<String>,
    class: Vec<String>,
    total: Vec<i64>,
    reserved: Vec<i64>,
    min_unit: Vec<i64>,
    max_unit: Vec<i64>,
    step: Vec<i64>,
    ratio: Vec<f64>,
    capacity: Vec<i64>,
}

fn to_i64(v: u64) -> i64 {
    // Every quantity is at most MAX_QUANTITY (2^53), validated by Cluster::from_spec.
    i64::try_from(v.min(MAX_QUANTITY)).unwrap_or(i64::MAX)
}

impl Rows {
    fn provider(
        &mut self,
        cluster: &Cluster,
        name: &str,
        parent: Option<&str>,
        host: Option<&str>,
        inventories: &std::collections::BTreeMap<String, InventorySpec>,
    ) {
        let Some(pid) = cluster.provider_id(name) else {
            return;
        };
        let p = cluster.provider(pid);
        self.provider.push(name.to_string());
        self.owner
            .push(i32::try_from(p.owner.index()).unwrap_or(i32::MAX));
        self.parent.push(parent.map(str::to_string));
        self.host.push(host.map(str::to_string));
        for slot in p.slot_ids() {
            let Some(s) = cluster.slot(slot) else {
                continue;
            };
            let class = cluster.class_name(s.class);
            let spec = inventories.get(class);
            self.inv_provider.push(name.to_string());
            self.class.push(class.to_string());
            self.total.push(spec.map_or(0, |i| i.total));
            self.reserved.push(spec.map_or(0, |i| i.reserved));
            self.min_unit.push(to_i64(s.min_unit));
            self.max_unit.push(to_i64(s.max_unit));
            self.step.push(to_i64(s.step_size));
            self.ratio
                .push(spec.and_then(|i| i.allocation_ratio).unwrap_or(1.0));
            self.capacity.push(to_i64(s.capacity));
        }
    }

    fn children(&mut self, cluster: &Cluster, parent: &str, host: &str, kids: &[ProviderSpec]) {
        for k in kids {
            self.provider(cluster, &k.name, Some(parent), Some(host), &k.inventories);
            self.children(cluster, &k.name, host, &k.children);
        }
    }
}

/// Loads a cluster into the database, in one transaction: its description, one row per generation
/// owner (host tree or shared provider), provider and inventory (with its capacity), and its
/// server groups. The cluster is validated first, and nothing is written if it is invalid. A
/// cluster already loaded is replaced only when `replace` is set and it holds no allocation.
pub fn load_cluster(conninfo: &str, spec: &ClusterSpec, replace: bool) -> Result<(), PgStoreError> {
    let cluster = Cluster::from_spec(spec)?;
    let mut client = Target::parse(conninfo)?.connect()?;
    schema::check_version(&mut client)?;
    let mut tx = client
        .transaction()
        .map_err(PgStoreError::db("starting the load"))?;
    tx.batch_execute("LOCK TABLE keel_cluster, keel_consumers IN EXCLUSIVE MODE")
        .map_err(PgStoreError::db("locking the cluster tables"))?;
    let loaded: bool = tx
        .query_one("SELECT EXISTS (SELECT 1 FROM keel_cluster)", &[])
        .map_err(PgStoreError::db("reading the cluster"))?
        .get(0);
    if loaded {
        let consumers: i64 = tx
            .query_one("SELECT count(*) FROM keel_consumers", &[])
            .map_err(PgStoreError::db("counting allocations"))?
            .get(0);
        if !replace || consumers > 0 {
            return Err(PgStoreError::ClusterLoaded { consumers });
        }
        tx.batch_execute(
            "DELETE FROM keel_inventories; DELETE FROM keel_providers; DELETE FROM keel_owners;
             DELETE FROM keel_server_groups; DELETE FROM keel_cluster; DELETE FROM keel_changes;",
        )
        .map_err(PgStoreError::db("removing the old cluster"))?;
    }
    tx.execute(
        "INSERT INTO keel_cluster (id, spec) VALUES (1, $1)",
        &[&Json(spec)],
    )
    .map_err(PgStoreError::db("storing the cluster description"))?;
    let owner_ids: Vec<i32> = cluster
        .owner_ids()
        .map(|o| i32::try_from(o.index()).unwrap_or(i32::MAX))
        .collect();
    let owner_names: Vec<String> = cluster
        .owner_ids()
        .map(|o| cluster.owner_name(o).to_string())
        .collect();
    tx.execute(
        "INSERT INTO keel_owners (id, name) SELECT * FROM unnest($1::integer[], $2::text[])",
        &[&owner_ids, &owner_names],
    )
    .map_err(PgStoreError::db("storing the generation owners"))?;
    let mut rows = Rows::default();
    for h in &spec.hosts {
        rows.provider(&cluster, &h.name, None, Some(&h.name), &h.inventories);
        rows.children(&cluster, &h.name, &h.name, &h.children);
    }
    for s in &spec.shared_providers {
        rows.provider(&cluster, &s.name, None, None, &s.inventories);
    }
    // Parents before children: the hosts' trees are listed depth first.
    tx.execute(
        "INSERT INTO keel_providers (name, owner, parent, host)
         SELECT * FROM unnest($1::text[], $2::integer[], $3::text[], $4::text[])",
        &[&rows.provider, &rows.owner, &rows.parent, &rows.host],
    )
    .map_err(PgStoreError::db("storing the providers"))?;
    tx.execute(
        "INSERT INTO keel_inventories (provider, class, total, reserved, min_unit, max_unit,
                                       step_size, allocation_ratio, capacity)
         SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[],
                              $6::bigint[], $7::bigint[], $8::float8[], $9::bigint[])",
        &[
            &rows.inv_provider,
            &rows.class,
            &rows.total,
            &rows.reserved,
            &rows.min_unit,
            &rows.max_unit,
            &rows.step,
            &rows.ratio,
            &rows.capacity,
        ],
    )
    .map_err(PgStoreError::db("storing the inventories"))?;
    for g in cluster.initial_server_groups() {
        let (policy, max) = normal_group(g);
        tx.execute(
            "INSERT INTO keel_server_groups (name, policy, max_per_host) VALUES ($1, $2, $3)",
            &[&g.name, &policy, &max],
        )
        .map_err(PgStoreError::db("storing the server groups"))?;
    }
    tx.commit()
        .map_err(PgStoreError::db("committing the cluster"))?;
    log::info!(
        "loaded a cluster of {} hosts, {} providers, {} inventories",
        cluster.host_count(),
        rows.provider.len(),
        rows.inv_provider.len()
    );
    Ok(())
}

/// `(project, user)` as the quota table keys them (`""` for a project's own scope).
pub(crate) fn scope_key(scope: &QuotaScope) -> (String, String) {
    match scope {
        QuotaScope::Project(p) => (p.clone(), String::new()),
        QuotaScope::User { project, user } => (project.clone(), user.clone()),
    }
}

/// Sets (replaces) the limits of `scope`, with its usage counted from the allocations in the same
/// transaction (allocations wait meanwhile, so none is missed), and records the change for the
/// deciders. Classes must be known to the loaded cluster. `None` removes the limits.
pub(crate) fn set_quota(
    client: &mut Client,
    cluster: &Cluster,
    scope: &QuotaScope,
    limits: Option<&QuotaLimits>,
) -> Result<(), PgStoreError> {
    if let Some(l) = limits {
        for class in l.resources.keys() {
            if cluster.class_id(class).is_none() {
                return Err(PgStoreError::UnknownQuotaClass {
                    scope: scope.to_string(),
                    class: class.clone(),
                });
            }
        }
    }
    let (project, user) = scope_key(scope);
    let mut tx = client
        .transaction()
        .map_err(PgStoreError::db("starting the quota change"))?;
    // Quota rows first, then the allocations: the commit function takes them in the other
    // order only for rows of the quota table, which this lock waits for (see the schema).
    tx.batch_execute(
        "LOCK TABLE keel_quotas IN EXCLUSIVE MODE; LOCK TABLE keel_consumers IN SHARE MODE",
    )
    .map_err(PgStoreError::db("locking for the quota change"))?;
    tx.execute(
        "DELETE FROM keel_quotas WHERE project = $1 AND usr = $2",
        &[&project, &user],
    )
    .map_err(PgStoreError::db("removing the old limits"))?;
    let mut stored = serde_json::Value::Null;
    if let Some(l) = limits {
        let mut classes: Vec<String> = l.resources.keys().cloned().collect();
        let mut lims: Vec<i64> = l
            .resources
            .values()
            .map(|&v| i64::try_from(v).unwrap_or(i64::MAX))
            .collect();
        if let Some(i) = l.instances {
            classes.push("instances".into());
            lims.push(i64::try_from(i).unwrap_or(i64::MAX));
        }
        tx.execute(
            "INSERT INTO keel_quotas (project, usr, class, lim, used)
             SELECT $1, $2, q.class, q.lim,
                    coalesce((SELECT CASE WHEN q.class = 'instances' THEN count(*)
                                          ELSE sum((u->>1)::bigint) FILTER (WHERE u->>0 = q.class) END
                                FROM keel_consumers c LEFT JOIN LATERAL jsonb_array_elements(c.usage) u ON true
                               WHERE c.project = $1 AND ($2 = '' OR c.usr = $2)), 0)
               FROM unnest($3::text[], $4::bigint[]) AS q(class, lim)",
            &[&project, &user, &classes, &lims],
        )
        .map_err(PgStoreError::db("storing the limits"))?;
        stored = serde_json::to_value(l).unwrap_or_default();
    }
    let item = serde_json::json!([{
        "op": "quota", "project": project, "user": user, "limits": stored, "gens": []
    }]);
    tx.execute(
        "INSERT INTO keel_changes (items) VALUES ($1)",
        &[&Json(item)],
    )
    .map_err(PgStoreError::db("recording the quota change"))?;
    tx.commit()
        .map_err(PgStoreError::db("committing the quota change"))
}

/// Everything a replica is built from, read in one snapshot.
pub(crate) struct Snapshot {
    pub(crate) spec: ClusterSpec,
    pub(crate) owners: Vec<(i32, String, i64, bool)>,
    pub(crate) groups: Vec<(ServerGroupSpec, i64)>,
    pub(crate) consumers: Vec<(String, i64, serde_json::Value)>,
    pub(crate) quotas: HashMap<(String, String), QuotaLimits>,
    /// The snapshot's xmin: every transaction below it had finished.
    pub(crate) floor: i64,
}

pub(crate) fn decode_json<T: serde::de::DeserializeOwned>(
    what: impl Into<String>,
    v: serde_json::Value,
) -> Result<T, PgStoreError> {
    serde_json::from_value(v).map_err(|e| PgStoreError::Decode {
        what: what.into(),
        source: Arc::new(e),
    })
}

/// Reads the whole state in one repeatable-read snapshot.
pub(crate) fn snapshot(client: &mut Client) -> Result<Snapshot, PgStoreError> {
    let mut tx = client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(PgStoreError::db("starting the state read"))?;
    let floor: i64 = tx
        .query_one(
            "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
            &[],
        )
        .map_err(PgStoreError::db("reading the snapshot"))?
        .get(0);
    let Some(row) = tx
        .query_opt("SELECT spec::text FROM keel_cluster", &[])
        .map_err(PgStoreError::db("reading the cluster"))?
    else {
        return Err(PgStoreError::NoCluster);
    };
    let text: String = row.get(0);
    let spec: ClusterSpec = serde_json::from_str(&text).map_err(|e| PgStoreError::Decode {
        what: "cluster description".into(),
        source: Arc::new(e),
    })?;
    let owners = tx
        .query(
            "SELECT id, name, generation, disabled FROM keel_owners ORDER BY id",
            &[],
        )
        .map_err(PgStoreError::db("reading the owners"))?
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let mut groups = Vec::new();
    for r in tx
        .query(
            "SELECT name, policy, max_per_host, generation FROM keel_server_groups",
            &[],
        )
        .map_err(PgStoreError::db("reading the server groups"))?
    {
        let name: String = r.get(0);
        let policy: String = r.get(1);
        let max: Option<i32> = r.get(2);
        let spec = ServerGroupSpec {
            policy: policy.parse().map_err(|e: scheduling::ParseTextError| {
                PgStoreError::ServerGroup(format!("stored server group `{name}`: {e}"))
            })?,
            max_per_host: max.and_then(|m| u32::try_from(m).ok()),
            name,
        };
        groups.push((spec, r.get(3)));
    }
    let consumers = tx
        .query("SELECT id, generation, placement FROM keel_consumers", &[])
        .map_err(PgStoreError::db("reading the allocations"))?
        .into_iter()
        .map(|r| {
            let Json(v): Json<serde_json::Value> = r.get(2);
            (r.get(0), r.get(1), v)
        })
        .collect();
    let mut quotas: HashMap<(String, String), QuotaLimits> = HashMap::new();
    for r in tx
        .query("SELECT project, usr, class, lim FROM keel_quotas", &[])
        .map_err(PgStoreError::db("reading the quotas"))?
    {
        let key = (r.get::<_, String>(0), r.get::<_, String>(1));
        let class: String = r.get(2);
        let lim = u64::try_from(r.get::<_, i64>(3)).unwrap_or(0);
        let l = quotas.entry(key).or_default();
        if class == "instances" {
            l.instances = Some(lim);
        } else {
            l.resources.insert(class, lim);
        }
    }
    tx.commit()
        .map_err(PgStoreError::db("ending the state read"))?;
    Ok(Snapshot {
        spec,
        owners,
        groups,
        consumers,
        quotas,
        floor,
    })
}
