//! Leader election through a `coordination.k8s.io/v1` Lease, as Kubernetes' own controllers do:
//! the holder renews `renewTime` every `lease duration / 3`; anyone may take a Lease whose
//! `renewTime + leaseDurationSeconds` has passed. Every write carries the `resourceVersion` it
//! read, so two candidates racing for an expired Lease cannot both win: the API server refuses
//! the second write with 409 Conflict.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::Client;

/// A Lease-based lock.
#[derive(Clone)]
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

/// What an attempt found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// This candidate holds the Lease (acquired or renewed).
    Leader,
    /// Someone else holds it.
    Follower {
        /// The holder.
        holder: String,
    },
}

impl LeaseLock {
    /// A lock on the Lease `name` in `namespace` for the candidate `identity`.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        LeaseLock {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            duration,
        }
    }

    /// The lease duration.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    fn spec(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.duration.as_secs())
                    .unwrap_or(i32::MAX)
                    .max(1),
            ),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// One attempt to acquire or renew. A 409 (another candidate wrote first) is an answer, not
    /// an error: that candidate is the leader.
    pub async fn try_acquire_or_renew(&self) -> Result<Attempt, kube::Error> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(now, None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Leader),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Follower {
                    holder: "(another candidate, just now)".to_string(),
                }),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(renewed), Some(seconds)) => {
                renewed.0 + SignedDuration::from_secs(i64::from(seconds)) < now
            }
            _ => true,
        };
        if holder != self.identity && !holder.is_empty() && !expired {
            return Ok(Attempt::Follower { holder });
        }
        let (acquired, transitions) = if holder == self.identity {
            (
                spec.acquire_time.clone(),
                spec.lease_transitions.unwrap_or(0),
            )
        } else {
            (None, spec.lease_transitions.unwrap_or(0).saturating_add(1))
        };
        lease.spec = Some(self.spec(now, acquired, transitions));
        // `replace` sends the resourceVersion read above: a stale one is refused with 409.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Attempt::Leader),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Follower { holder }),
            Err(e) => Err(e),
        }
    }

    /// Waits until this candidate is the leader, trying every `duration / 3`.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Leader) => return,
                Ok(Attempt::Follower { holder }) => {
                    log::debug!("lease {} held by {holder}", self.name)
                }
                Err(err) => log::warn!("lease {}: {err}", self.name),
            }
            tokio::time::sleep(self.duration / 3).await;
        }
    }

    /// Renews every `duration / 3` and returns when leadership is lost (another holder, or no
    /// successful renewal for a whole lease duration).
    pub async fn hold(&self) {
        let mut last_success = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.duration / 3).await;
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Leader) => last_success = tokio::time::Instant::now(),
                Ok(Attempt::Follower { holder }) => {
                    log::warn!("lease {} taken by {holder}", self.name);
                    return;
                }
                Err(err) => {
                    log::warn!("lease {}: renewal failed: {err}", self.name);
                    if last_success.elapsed() >= self.duration {
                        return;
                    }
                }
            }
        }
    }

    /// Gives the Lease up (on a clean shutdown), so that a successor need not wait for it to
    /// expire.
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await {
            let ours = lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                == Some(self.identity.as_str());
            if ours {
                if let Some(spec) = lease.spec.as_mut() {
                    spec.holder_identity = None;
                    spec.renew_time = None;
                }
                let _ = self
                    .api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await;
            }
        }
    }
}
