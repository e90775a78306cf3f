//! Placement: load a cluster, decide where a request goes, commit or release the claim, read why
//! nothing fits.

use std::ffi::c_char;
use std::sync::{Arc, Mutex, PoisonError};

use scheduling::error::CommitError;
use scheduling::load::{self, Format};
use scheduling::{
    Claim, Cluster, ClusterSpec, DecideOptions, Placement, PlacementRequest, Policy, Profile,
    Scheduler, State,
};

use crate::handles::{self, with_object, Kind, Object};
use crate::status::{
    guard, keel_status, Failure, KEEL_ERR_CONFLICT, KEEL_ERR_NULL, KEEL_ERR_UNSCHEDULABLE,
};
use crate::strings::{self, copy_out};

/// A cluster description: a handle from `keel_cluster_load`, freed with `keel_cluster_free`.
pub type keel_cluster_t = u64;
/// A placer (a cluster's allocations plus a decider): from `keel_placer_new`, freed with
/// `keel_placer_free`.
pub type keel_placer_t = u64;
/// A decided, not yet committed placement: from `keel_placer_decide`, consumed by
/// `keel_claim_commit` or dropped by `keel_claim_free`.
pub type keel_claim_t = u64;

/// Documents in JSON.
pub const KEEL_FORMAT_JSON: i32 = 1;
/// Documents in YAML.
pub const KEEL_FORMAT_YAML: i32 = 2;

/// A loaded cluster.
pub(crate) struct ClusterObject(Arc<Cluster>);

impl ClusterObject {
    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        ClusterObject(Arc::new(
            Cluster::from_json(
                r#"{"hosts": [{"name": "a", "inventories": {"VCPU": {"total": 4}}}]}"#,
            )
            .expect("test cluster"),
        ))
    }
}

/// A placer: the allocations and the decider, and the last rejection's explanation.
pub(crate) struct PlacerObject {
    state: State,
    scheduler: Scheduler,
    last_rejection: Option<String>,
}

/// A claim and the placer it was decided by.
pub(crate) struct ClaimObject {
    placer: Arc<Object>,
    claim: Option<Claim>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn parse_format(code: i32) -> Result<Format, Failure> {
    match code {
        KEEL_FORMAT_JSON => Ok(Format::Json),
        KEEL_FORMAT_YAML => Ok(Format::Yaml),
        other => Err(Failure::invalid(format!(
            "format: {other} is neither KEEL_FORMAT_JSON nor KEEL_FORMAT_YAML"
        ))),
    }
}

/// Loads a cluster description (`text`, in `format`): hosts as provider trees with
/// inventories, traits, aggregates, taints.
///
/// # Safety
/// `text` is a NUL-terminated string; `out` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn keel_cluster_load(
    text: *const c_char,
    format: i32,
    out: *mut keel_cluster_t,
) -> keel_status {
    guard("keel_cluster_load", || {
        // SAFETY: the caller passes a NUL-terminated string (keel.h).
        let document = unsafe { strings::text(text, "text") }?;
        let spec: ClusterSpec = load::parse(document, parse_format(format)?)
            .map_err(|err| Failure::invalid(err.to_string()))?;
        let cluster = Cluster::from_spec(&spec).map_err(|err| Failure::invalid(err.to_string()))?;
        // SAFETY: the caller passes NULL or a pointer valid for a write (keel.h).
        unsafe { handles::publish(out, Object::Cluster(ClusterObject(Arc::new(cluster)))) }
    })
}

/// Frees a cluster. Placers made from it keep their own reference.
#[unsafe(no_mangle)]
pub extern "C" fn keel_cluster_free(cluster: keel_cluster_t) -> keel_status {
    guard("keel_cluster_free", || {
        handles::remove(cluster, Kind::Cluster).map(drop)
    })
}

/// Creates a placer over `cluster` (no allocations yet) with `policy` ("spread", "pack",
/// "balanced", "power_saving", "even_vm_count", "stranded_aware") and random `seed`.
///
/// # Safety
/// `policy` is a NUL-terminated string; `out` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn keel_placer_new(
    cluster: keel_cluster_t,
    policy: *const c_char,
    seed: u64,
    out: *mut keel_placer_t,
) -> keel_status {
    guard("keel_placer_new", || {
        // SAFETY: the caller passes a NUL-terminated string (keel.h).
        let name = unsafe { strings::text(policy, "policy") }?;
        let policy: Policy = serde_json::from_value(serde_json::Value::String(name.to_string()))
            .map_err(|_| {
                Failure::invalid(format!(
                    "policy: `{name}` is not one of spread, pack, balanced, power_saving, even_vm_count, stranded_aware"
                ))
            })?;
        let cluster = with_object!(cluster, Cluster, |object| Ok(object.0.clone()))?;
        let placer = PlacerObject {
            state: State::new(cluster),
            scheduler: Scheduler::new(Arc::new(Profile::for_policy(policy)), seed),
            last_rejection: None,
        };
        // SAFETY: the caller passes NULL or a pointer valid for a write (keel.h).
        unsafe { handles::publish(out, Object::Placer(Mutex::new(placer))) }
    })
}

/// Frees a placer. Claims it decided keep its allocations alive until they are freed.
#[unsafe(no_mangle)]
pub extern "C" fn keel_placer_free(placer: keel_placer_t) -> keel_status {
    guard("keel_placer_free", || {
        handles::remove(placer, Kind::Placer).map(drop)
    })
}

/// Decides where the request `request` (a `PlacementRequest` in JSON: `{"id": "vm-1",
/// "resources": {"VCPU": 2, "MEMORY_MB": 2048}, ...}`) goes, without changing the allocations,
/// and stores the claim through `out`. `KEEL_ERR_UNSCHEDULABLE` when no host fits: the last
/// error has the summary, `keel_placer_explain` the full explanation.
///
/// # Safety
/// `request` is a NUL-terminated string; `out` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn keel_placer_decide(
    placer: keel_placer_t,
    request: *const c_char,
    out: *mut keel_claim_t,
) -> keel_status {
    guard("keel_placer_decide", || {
        // SAFETY: the caller passes a NUL-terminated string (keel.h).
        let document = unsafe { strings::text(request, "request") }?;
        if out.is_null() {
            return Err(Failure::new(KEEL_ERR_NULL, "out is NULL"));
        }
        let request: PlacementRequest =
            load::parse(document, Format::Json).map_err(|err| Failure::invalid(err.to_string()))?;
        let owner = handles::get(placer, Kind::Placer)?;
        let claim = {
            let Object::Placer(object) = &*owner else {
                return Err(Failure::invalid("not a placer"));
            };
            let mut object = lock(object);
            let compiled = object
                .state
                .compile(&request)
                .map_err(|err| Failure::invalid(err.to_string()))?;
            let PlacerObject {
                state,
                scheduler,
                last_rejection,
            } = &mut *object;
            match scheduler.decide(state, &compiled, &DecideOptions::default()) {
                Ok(decision) => {
                    *last_rejection = None;
                    decision.claim
                }
                Err(unschedulable) => {
                    let explanation = unschedulable.explain(state.cluster());
                    *last_rejection = serde_json::to_string(&explanation).ok();
                    return Err(Failure::new(KEEL_ERR_UNSCHEDULABLE, explanation.summary));
                }
            }
        };
        let object = Object::Claim(Mutex::new(ClaimObject {
            placer: owner,
            claim: Some(claim),
        }));
        // SAFETY: the caller passes NULL or a pointer valid for a write (keel.h).
        unsafe { handles::publish(out, object) }
    })
}

/// Writes the explanation of the placer's last rejection as JSON (`{"summary": "0/2 hosts
/// available: 2 insufficient MEMORY_MB", ...}`) into `buf`; `KEEL_ERR_STATE` when the last
/// decision placed its request. Buffer rules as for `keel_config_to_json`.
///
/// # Safety
/// `buf` is NULL or valid for `len` bytes; `needed` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn keel_placer_explain(
    placer: keel_placer_t,
    buf: *mut c_char,
    len: usize,
    needed: *mut usize,
) -> keel_status {
    guard("keel_placer_explain", || {
        let json = with_object!(placer, Placer, |object| {
            lock(object)
                .last_rejection
                .clone()
                .ok_or_else(|| Failure::state("the last decision was not a rejection"))
        })?;
        // SAFETY: forwarded from the caller (keel.h).
        unsafe { copy_out(&json, buf, len, needed) }
    })
}

/// Writes where the claim places its request (a `Placement` in JSON: host, and per provider
/// the amounts) into `buf`. Buffer rules as for `keel_config_to_json`.
///
/// # Safety
/// `buf` is NULL or valid for `len` bytes; `needed` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn keel_claim_placement(
    claim: keel_claim_t,
    buf: *mut c_char,
    len: usize,
    needed: *mut usize,
) -> keel_status {
    guard("keel_claim_placement", || {
        let json = with_object!(claim, Claim, |object| {
            let object = lock(object);
            let claim = object
                .claim
                .as_ref()
                .ok_or_else(|| Failure::state("the claim was committed already"))?;
            let Object::Placer(placer) = &*object.placer else {
                return Err(Failure::invalid("claim without a placer"));
            };
            let placement: Placement = claim.placement(lock(placer).state.cluster());
            serde_json::to_string(&placement).map_err(|err| Failure::invalid(err.to_string()))
        })?;
        // SAFETY: forwarded from the caller (keel.h).
        unsafe { copy_out(&json, buf, len, needed) }
    })
}

/// Commits the claim into its placer's allocations. `KEEL_ERR_CONFLICT` when the allocations
/// changed since the decision in a way that matters (decide again); the claim is spent either
/// way but its handle stays valid until `keel_claim_free`.
#[unsafe(no_mangle)]
pub extern "C" fn keel_claim_commit(claim: keel_claim_t) -> keel_status {
    guard("keel_claim_commit", || {
        with_object!(claim, Claim, |object| {
            let mut object = lock(object);
            let spent = object
                .claim
                .take()
                .ok_or_else(|| Failure::state("the claim was committed already"))?;
            let Object::Placer(placer) = &*object.placer else {
                return Err(Failure::invalid("claim without a placer"));
            };
            let mut placer = lock(placer);
            let PlacerObject {
                state, scheduler, ..
            } = &mut *placer;
            scheduler.commit(state, spent).map_err(|err| {
                let status = match err {
                    CommitError::GenerationConflict { .. } | CommitError::GroupChanged(_) => {
                        KEEL_ERR_CONFLICT
                    }
                    _ => crate::status::KEEL_ERR_INVALID,
                };
                Failure::new(status, err.to_string())
            })
        })
    })
}

/// Frees a claim; an uncommitted one is dropped (nothing was allocated for it).
#[unsafe(no_mangle)]
pub extern "C" fn keel_claim_free(claim: keel_claim_t) -> keel_status {
    guard("keel_claim_free", || {
        handles::remove(claim, Kind::Claim).map(drop)
    })
}

/// Releases the committed allocation of consumer `id` (the request's id), freeing its capacity.
///
/// # Safety
/// `id` is a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn keel_placer_release(
    placer: keel_placer_t,
    id: *const c_char,
) -> keel_status {
    guard("keel_placer_release", || {
        // SAFETY: the caller passes a NUL-terminated string (keel.h).
        let id = unsafe { strings::text(id, "id") }?;
        with_object!(placer, Placer, |object| {
            lock(object)
                .state
                .release(id)
                .map(drop)
                .map_err(|err| Failure::invalid(err.to_string()))
        })
    })
}

/// Writes every committed placement as a JSON array (what a manager persists to rebuild the
/// state after a restart). Buffer rules as for `keel_config_to_json`.
///
/// # Safety
/// `buf` is NULL or valid for `len` bytes; `needed` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn keel_placer_placements(
    placer: keel_placer_t,
    buf: *mut c_char,
    len: usize,
    needed: *mut usize,
) -> keel_status {
    guard("keel_placer_placements", || {
        let json = with_object!(placer, Placer, |object| {
            serde_json::to_string(&lock(object).state.placements())
                .map_err(|err| Failure::invalid(err.to_string()))
        })?;
        // SAFETY: forwarded from the caller (keel.h).
        unsafe { copy_out(&json, buf, len, needed) }
    })
}
