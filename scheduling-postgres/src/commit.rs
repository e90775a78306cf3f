//! Committing a batch of placements in one transaction, with a handful of statements whatever
//! the batch's size.
//!
//! 1. Lock every row the batch relies on, in the one order every writer uses (owners, server
//!    groups, quotas; see the schema), reading their current values: the owners' generations
//!    and disabled flags, the groups' definitions and generations, the quota limits and usage.
//!    Read which of the batch's consumers exist already.
//! 2. Judge the claims in order, here, against those values as the earlier claims of the batch
//!    change them: a claim commits only if every owner (and, for a claim that checked it, its
//!    server group) is at the generation its decision saw, its host is enabled, its consumer new,
//!    its group's definition the same, and its project's and user's quotas hold. A claim that
//!    fails marks its owners and its server group, so the claims decided on top of it fail too.
//! 3. Write what passed in one statement (generations, consumers, allocations, inventory usage,
//!    quota usage, the change row), and commit: one WAL flush for the batch.
//!
//! The locks make the values of step 1 the truth until the commit, so two deciders can never
//! both take the last slot or the last unit of a quota. Inventories also refuse usage over their
//! capacity (a `CHECK`), which would abort the whole batch: the last line of defence against a
//! replica that is wrong.

use postgres::types::Json;
use postgres::{Client, Statement};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};

/// One placement to commit, as decided on the replica.
pub(crate) struct PlaceItem {
    pub(crate) consumer: String,
    pub(crate) token: i64,
    pub(crate) host: String,
    /// The generation owner of the host's tree.
    pub(crate) host_owner: usize,
    /// Every owner the claim touches, with the generation the decision saw.
    pub(crate) check: Vec<(usize, i64)>,
    /// Server group: name, policy, max per host (normal form).
    pub(crate) group: Option<(String, String, Option<i32>)>,
    /// The group generation the decision saw, when it depends on the group's membership
    /// elsewhere (affinity, spread).
    pub(crate) group_gen: Option<i64>,
    pub(crate) project: Option<String>,
    pub(crate) user: Option<String>,
    /// Amounts per class, for quotas.
    pub(crate) usage: Vec<(String, i64)>,
    /// Amounts per (provider, class).
    pub(crate) alloc: Vec<(String, String, i64)>,
    pub(crate) placement: Value,
}

/// Why a claim of the batch did not commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A generation moved, or the host was disabled: decide again.
    Conflict,
    /// The consumer holds an allocation already.
    Duplicate,
    /// A quota would be exceeded.
    Quota,
    /// The server group exists with another definition.
    Group,
}

/// A claim's fate.
pub(crate) enum Verdict {
    /// Committed: the owners' and group's generations after it.
    Committed {
        gens: Vec<(usize, i64)>,
        group: Option<(String, i64)>,
    },
    /// Not committed.
    Refused(Refusal, String),
}

/// What the refused claims of a batch touched: later claims touching the same may not commit.
#[derive(Default)]
struct Tainted {
    owners: HashSet<usize>,
    groups: HashSet<String>,
}

/// `(project, user, class)` of a quota row.
type QuotaKey = (String, String, String);

const LOCK_OWNERS: &str =
    "SELECT id, generation, disabled, name FROM keel_owners WHERE id = ANY($1)
          ORDER BY id FOR UPDATE";

const INSERT_GROUPS: &str = "INSERT INTO keel_server_groups (name, policy, max_per_host)
             SELECT * FROM unnest($1::text[], $2::text[], $3::integer[])
             ON CONFLICT (name) DO NOTHING";

const LOCK_GROUPS: &str = "SELECT name, policy, max_per_host, generation FROM keel_server_groups
              WHERE name = ANY($1) ORDER BY name FOR UPDATE";

const LOCK_QUOTAS: &str =
    "SELECT project, usr, class, lim, used FROM keel_quotas WHERE project = ANY($1)
              ORDER BY project, usr, class FOR UPDATE";

const EXISTING: &str = "SELECT id FROM keel_consumers WHERE id = ANY($1)";

const WRITE: &str = "WITH o AS (UPDATE keel_owners k SET generation = d.gen
                      FROM unnest($1::integer[], $2::bigint[]) AS d(id, gen)
                     WHERE k.id = d.id RETURNING 1),
              g AS (UPDATE keel_server_groups k SET generation = d.gen
                      FROM unnest($3::text[], $4::bigint[]) AS d(name, gen)
                     WHERE k.name = d.name RETURNING 1),
              c AS (INSERT INTO keel_consumers (id, host, generation, token, project, usr,
                                                server_group, usage, placement)
                    SELECT d.id, d.host, 1, d.token, d.project, d.usr, d.grp, d.usage, d.placement
                      FROM unnest($5::text[], $6::text[], $7::bigint[], $8::text[], $9::text[],
                                  $10::text[], $11::jsonb[], $12::jsonb[])
                           AS d(id, host, token, project, usr, grp, usage, placement)
                    RETURNING 1),
              a AS (INSERT INTO keel_allocations (consumer, provider, class, amount)
                    SELECT * FROM unnest($13::text[], $14::text[], $15::text[], $16::bigint[])
                    RETURNING 1),
              i AS (UPDATE keel_inventories k SET used = k.used + d.amount
                      FROM unnest($17::text[], $18::text[], $19::bigint[]) AS d(provider, class, amount)
                     WHERE k.provider = d.provider AND k.class = d.class RETURNING 1),
              q AS (UPDATE keel_quotas k SET used = k.used + d.amount
                      FROM unnest($20::text[], $21::text[], $22::text[], $23::bigint[])
                           AS d(project, usr, class, amount)
                     WHERE k.project = d.project AND k.usr = d.usr AND k.class = d.class
                    RETURNING 1),
              ch AS (INSERT INTO keel_changes (items) VALUES ($24) RETURNING seq)
         SELECT (SELECT count(*) FROM i), (SELECT seq FROM ch)";

/// The statements of a commit, prepared once per connection: each call is then one round trip
/// and no parsing or planning from scratch.
pub(crate) struct Statements {
    lock_owners: Statement,
    insert_groups: Statement,
    lock_groups: Statement,
    lock_quotas: Statement,
    existing: Statement,
    write: Statement,
    /// The change feed's read (see `feed`).
    pub(crate) feed: Statement,
}

impl Statements {
    /// Prepares them on `client`.
    pub(crate) fn prepare(client: &mut Client) -> Result<Statements, postgres::Error> {
        Ok(Statements {
            lock_owners: client.prepare(LOCK_OWNERS)?,
            insert_groups: client.prepare(INSERT_GROUPS)?,
            lock_groups: client.prepare(LOCK_GROUPS)?,
            lock_quotas: client.prepare(LOCK_QUOTAS)?,
            existing: client.prepare(EXISTING)?,
            write: client.prepare(WRITE)?,
            feed: client.prepare(crate::feed::READ)?,
        })
    }
}

/// Commits `items` in one transaction (those that pass; see the module's notes). On an error
/// the transaction is rolled back and nothing was written.
pub(crate) fn commit_places(
    client: &mut Client,
    stmts: &Statements,
    items: &[PlaceItem],
) -> Result<Vec<Verdict>, postgres::Error> {
    let mut tx = client.transaction()?;

    // 1. Lock and read.
    let mut owner_ids: Vec<i32> = items
        .iter()
        .flat_map(|i| i.check.iter().map(|c| c.0))
        .map(|o| i32::try_from(o).unwrap_or(i32::MAX))
        .collect();
    owner_ids.sort_unstable();
    owner_ids.dedup();
    let mut owners: HashMap<usize, (i64, bool, String)> = HashMap::new();
    for r in tx.query(&stmts.lock_owners, &[&owner_ids])? {
        let id: i32 = r.get(0);
        owners.insert(
            usize::try_from(id).unwrap_or(usize::MAX),
            (r.get(1), r.get(2), r.get(3)),
        );
    }
    let mut groups: BTreeMap<String, (String, Option<i32>)> = BTreeMap::new();
    for i in items {
        if let Some((name, policy, max)) = &i.group {
            groups.entry(name.clone()).or_insert((policy.clone(), *max));
        }
    }
    let mut group_rows: HashMap<String, (String, Option<i32>, i64)> = HashMap::new();
    if !groups.is_empty() {
        let names: Vec<&str> = groups.keys().map(String::as_str).collect();
        let policies: Vec<&str> = groups.values().map(|g| g.0.as_str()).collect();
        let maxes: Vec<Option<i32>> = groups.values().map(|g| g.1).collect();
        tx.execute(&stmts.insert_groups, &[&names, &policies, &maxes])?;
        for r in tx.query(&stmts.lock_groups, &[&names])? {
            group_rows.insert(r.get(0), (r.get(1), r.get(2), r.get(3)));
        }
    }
    let mut projects: Vec<&str> = items.iter().filter_map(|i| i.project.as_deref()).collect();
    projects.sort_unstable();
    projects.dedup();
    let mut quotas: HashMap<QuotaKey, (i64, i64)> = HashMap::new();
    if !projects.is_empty() {
        for r in tx.query(&stmts.lock_quotas, &[&projects])? {
            quotas.insert((r.get(0), r.get(1), r.get(2)), (r.get(3), r.get(4)));
        }
    }
    let ids: Vec<&str> = items.iter().map(|i| i.consumer.as_str()).collect();
    let mut existing: HashSet<String> = tx
        .query(&stmts.existing, &[&ids])?
        .into_iter()
        .map(|r| r.get(0))
        .collect();

    // 2. Judge, in order.
    let mut gens: HashMap<usize, i64> = owners.iter().map(|(&o, v)| (o, v.0)).collect();
    let mut group_gens: HashMap<String, i64> =
        group_rows.iter().map(|(n, v)| (n.clone(), v.2)).collect();
    let mut tainted = Tainted::default();
    let mut verdicts = Vec::with_capacity(items.len());
    for item in items {
        let refusal = judge(
            item,
            &owners,
            &gens,
            &tainted,
            &existing,
            &group_rows,
            &group_gens,
            &quotas,
        );
        match refusal {
            Some((kind, detail)) => {
                tainted.owners.extend(item.check.iter().map(|c| c.0));
                if let Some((name, _, _)) = &item.group {
                    tainted.groups.insert(name.clone());
                }
                verdicts.push(Verdict::Refused(kind, detail));
            }
            None => {
                let mut after = Vec::with_capacity(item.check.len());
                for &(o, _) in &item.check {
                    let g = gens.entry(o).or_insert(0);
                    *g += 1;
                    after.push((o, *g));
                }
                let group = item.group.as_ref().map(|(name, _, _)| {
                    let g = group_gens.entry(name.clone()).or_insert(0);
                    *g += 1;
                    (name.clone(), *g)
                });
                for key in quota_keys(item) {
                    if let Some((_, used)) = quotas.get_mut(&key.0) {
                        *used += key.1;
                    }
                }
                existing.insert(item.consumer.clone());
                verdicts.push(Verdict::Committed { gens: after, group });
            }
        }
    }

    // 3. Write what passed, then commit.
    let passed: Vec<(&PlaceItem, &Verdict)> = items
        .iter()
        .zip(&verdicts)
        .filter(|(_, v)| matches!(v, Verdict::Committed { .. }))
        .collect();
    if passed.is_empty() {
        tx.commit()?;
        return Ok(verdicts);
    }
    write(
        &mut tx,
        stmts,
        &passed,
        &owners,
        &group_rows,
        &gens,
        &group_gens,
        &quotas,
    )?;
    tx.commit()?;
    Ok(verdicts)
}

/// The quota rows a claim counts towards, with the amount it adds to each.
fn quota_keys(item: &PlaceItem) -> Vec<(QuotaKey, i64)> {
    let Some(project) = &item.project else {
        return Vec::new();
    };
    let mut scopes = vec![String::new()];
    if let Some(u) = &item.user {
        scopes.push(u.clone());
    }
    let mut out = Vec::new();
    for usr in scopes {
        out.push(((project.clone(), usr.clone(), "instances".to_string()), 1));
        for (class, amount) in &item.usage {
            out.push(((project.clone(), usr.clone(), class.clone()), *amount));
        }
    }
    out
}

/// Why `item` may not commit now, if it may not.
#[allow(clippy::too_many_arguments)]
fn judge(
    item: &PlaceItem,
    owners: &HashMap<usize, (i64, bool, String)>,
    gens: &HashMap<usize, i64>,
    tainted: &Tainted,
    existing: &HashSet<String>,
    group_rows: &HashMap<String, (String, Option<i32>, i64)>,
    group_gens: &HashMap<String, i64>,
    quotas: &HashMap<QuotaKey, (i64, i64)>,
) -> Option<(Refusal, String)> {
    // A claim decided after a refused one of the batch counted on its generation bumps (of the
    // owners and of the group it touched): its generations may now match the database's by
    // coincidence, for another change than the one its decider assumed (an ABA). Refuse it.
    let group_tainted = item
        .group
        .as_ref()
        .is_some_and(|(name, _, _)| tainted.groups.contains(name));
    if group_tainted || item.check.iter().any(|c| tainted.owners.contains(&c.0)) {
        return Some((
            Refusal::Conflict,
            "decided on top of an earlier claim of this batch that failed".into(),
        ));
    }
    for &(o, expected) in &item.check {
        let Some((_, _, name)) = owners.get(&o) else {
            return Some((Refusal::Conflict, format!("unknown generation owner #{o}")));
        };
        let now = gens.get(&o).copied().unwrap_or(0);
        if now != expected {
            return Some((
                Refusal::Conflict,
                format!("`{name}` is at generation {now}, the decision saw {expected}"),
            ));
        }
    }
    if owners.get(&item.host_owner).is_some_and(|o| o.1) {
        return Some((
            Refusal::Conflict,
            format!("host `{}` is disabled", item.host),
        ));
    }
    if existing.contains(&item.consumer) {
        return Some((
            Refusal::Duplicate,
            format!("consumer `{}` already holds an allocation", item.consumer),
        ));
    }
    if let Some((name, policy, max)) = &item.group {
        if let Some((have_policy, have_max, _)) = group_rows.get(name) {
            if have_policy != policy || have_max != max {
                return Some((
                    Refusal::Group,
                    format!(
                        "server group `{name}`: exists with policy {have_policy} (max_per_host {}), asked for {policy} (max_per_host {})",
                        have_max.map_or("None".into(), |m| m.to_string()),
                        max.map_or("None".into(), |m| m.to_string())
                    ),
                ));
            }
        }
        if let Some(expected) = item.group_gen {
            let now = group_gens.get(name).copied().unwrap_or(0);
            if now != expected {
                return Some((
                    Refusal::Conflict,
                    format!(
                        "server group `{name}` is at generation {now}, the decision saw {expected}"
                    ),
                ));
            }
        }
    }
    for ((project, usr, class), amount) in quota_keys(item) {
        let key = (project, usr, class);
        if let Some(&(lim, used)) = quotas.get(&key) {
            if used + amount > lim {
                let (project, usr, class) = key;
                let scope = if usr.is_empty() {
                    format!("project `{project}`")
                } else {
                    format!("user `{usr}` of project `{project}`")
                };
                return Some((
                    Refusal::Quota,
                    format!(
                        "quota of {scope} exceeded: {class} limit {lim}, used {used}, requested {amount}"
                    ),
                ));
            }
        }
    }
    None
}

/// Writes the claims that passed, in one statement.
#[allow(clippy::too_many_arguments)]
fn write(
    tx: &mut postgres::Transaction<'_>,
    stmts: &Statements,
    passed: &[(&PlaceItem, &Verdict)],
    owners: &HashMap<usize, (i64, bool, String)>,
    group_rows: &HashMap<String, (String, Option<i32>, i64)>,
    gens: &HashMap<usize, i64>,
    group_gens: &HashMap<String, i64>,
    quotas: &HashMap<QuotaKey, (i64, i64)>,
) -> Result<(), postgres::Error> {
    // Generations: the new values, for the owners and groups that moved.
    let (mut owner_ids, mut owner_gens) = (Vec::new(), Vec::new());
    for (&o, &(before, _, _)) in owners {
        let after = gens.get(&o).copied().unwrap_or(before);
        if after != before {
            owner_ids.push(i32::try_from(o).unwrap_or(i32::MAX));
            owner_gens.push(after);
        }
    }
    let (mut group_names, mut group_new) = (Vec::new(), Vec::new());
    for (name, (_, _, before)) in group_rows {
        let after = group_gens.get(name).copied().unwrap_or(*before);
        if after != *before {
            group_names.push(name.clone());
            group_new.push(after);
        }
    }
    // Consumers.
    let mut c_id = Vec::new();
    let mut c_host = Vec::new();
    let mut c_token = Vec::new();
    let mut c_project = Vec::new();
    let mut c_user = Vec::new();
    let mut c_group = Vec::new();
    let mut c_usage = Vec::new();
    let mut c_placement = Vec::new();
    // Allocations, summed per (consumer, provider, class); usage per inventory.
    let mut allocs: BTreeMap<(&str, &str, &str), i64> = BTreeMap::new();
    let mut inventory: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    let mut changes = Vec::with_capacity(passed.len());
    for (item, verdict) in passed {
        c_id.push(item.consumer.as_str());
        c_host.push(item.host.as_str());
        c_token.push(item.token);
        c_project.push(item.project.as_deref());
        c_user.push(item.user.as_deref());
        c_group.push(item.group.as_ref().map(|g| g.0.as_str()));
        c_usage.push(Json(json!(item.usage)));
        c_placement.push(Json(&item.placement));
        for (p, c, a) in &item.alloc {
            *allocs
                .entry((item.consumer.as_str(), p.as_str(), c.as_str()))
                .or_insert(0) += a;
            *inventory.entry((p.as_str(), c.as_str())).or_insert(0) += a;
        }
        if let Verdict::Committed { gens, group } = verdict {
            changes.push(json!({
                "op": "place", "consumer": item.consumer, "gens": gens, "group": group,
                "cgen": 1, "placement": item.placement,
            }));
        }
    }
    allocs.retain(|_, a| *a > 0);
    let a_consumer: Vec<&str> = allocs.keys().map(|k| k.0).collect();
    let a_provider: Vec<&str> = allocs.keys().map(|k| k.1).collect();
    let a_class: Vec<&str> = allocs.keys().map(|k| k.2).collect();
    let a_amount: Vec<i64> = allocs.values().copied().collect();
    let i_provider: Vec<&str> = inventory.keys().map(|k| k.0).collect();
    let i_class: Vec<&str> = inventory.keys().map(|k| k.1).collect();
    let i_amount: Vec<i64> = inventory.values().copied().collect();
    // Quota usage: the rows whose usage moved.
    let mut q_delta: BTreeMap<QuotaKey, i64> = BTreeMap::new();
    for (item, _) in passed {
        for (key, amount) in quota_keys(item) {
            if quotas.contains_key(&key) {
                *q_delta.entry(key).or_insert(0) += amount;
            }
        }
    }
    let q_project: Vec<&str> = q_delta.keys().map(|k| k.0.as_str()).collect();
    let q_user: Vec<&str> = q_delta.keys().map(|k| k.1.as_str()).collect();
    let q_class: Vec<&str> = q_delta.keys().map(|k| k.2.as_str()).collect();
    let q_amount: Vec<i64> = q_delta.values().copied().collect();
    let changes = Json(Value::Array(changes));
    let row = tx.query_one(
        &stmts.write,
        &[
            &owner_ids,
            &owner_gens,
            &group_names,
            &group_new,
            &c_id,
            &c_host,
            &c_token,
            &c_project,
            &c_user,
            &c_group,
            &c_usage,
            &c_placement,
            &a_consumer,
            &a_provider,
            &a_class,
            &a_amount,
            &i_provider,
            &i_class,
            &i_amount,
            &q_project,
            &q_user,
            &q_class,
            &q_amount,
            &changes,
        ],
    )?;
    let updated: i64 = row.get(0);
    if usize::try_from(updated).ok() != Some(i_provider.len()) {
        log::error!(
            "{} of {} inventories to charge exist; the batch is rolled back",
            updated,
            i_provider.len()
        );
        // Dropping the transaction rolls it back. A replica naming an inventory the database
        // lacks is out of step: report it as a refused statement of this batch.
        return tx.batch_execute("SELECT 1/0 AS missing_inventory");
    }
    Ok(())
}
