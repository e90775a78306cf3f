//! Rate limits as a config writes them: a bandwidth and an ops token bucket per limited queue
//! (a disk's requests, a NIC's receive and transmit sides, the entropy device's requests), the
//! shape Firecracker's API uses. [`RateLimitUpdate`] changes them on a running VM
//! ([`VmHandle::set_rate_limit`](crate::VmHandle::set_rate_limit)).

use std::time::Duration;

use devices::rate_limiter::{BucketConfig, RateLimit, RateLimitTarget};
use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Longest `refill_time_ms`: one day (the devices' `MAX_REFILL_TIME`).
pub const MAX_REFILL_TIME_MS: u64 = 86_400_000;

/// One token bucket: it holds at most `size` tokens (bytes for a bandwidth bucket, operations
/// for an ops bucket) and refills completely in `refill_time_ms`, so it sustains
/// `size / refill_time_ms` tokens per millisecond and lets a burst of `size` through at once.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketConfig {
    /// Tokens the bucket holds; at least 1.
    pub size: u64,
    /// Extra tokens available once, at the start, never refilled (default 0).
    #[serde(default)]
    pub one_time_burst: u64,
    /// Milliseconds to refill an empty bucket; 1 to 86 400 000 (a day).
    pub refill_time_ms: u64,
}

/// The rate limit of one queue: a bandwidth bucket (bytes: a disk request's data, a frame with
/// its 12-byte virtio-net header, entropy asked for), an ops bucket (requests, frames), either
/// or both. A request waits in the queue until both allow it; nothing is dropped. An empty
/// limiter (`{}`) limits nothing.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    /// Bytes per refill time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucketConfig>,
    /// Operations per refill time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucketConfig>,
}

impl RateLimiterConfig {
    /// The limit the device applies.
    pub(crate) fn to_limit(self) -> RateLimit {
        let bucket = |config: Option<TokenBucketConfig>| {
            config.map(|config| BucketConfig {
                size: config.size,
                one_time_burst: config.one_time_burst,
                refill_time: Duration::from_millis(config.refill_time_ms),
            })
        };
        RateLimit {
            bandwidth: bucket(self.bandwidth),
            ops: bucket(self.ops),
        }
    }

    /// Checks both buckets; `limiter` is where the limiter sits in the config (`disks` with
    /// `rate_limiter`, ...), `owner` names the device in the reason.
    pub(crate) fn check(&self, limiter: LimiterField, owner: &str) -> Result<(), ConfigError> {
        for (bucket, config) in [(Bucket::Bandwidth, self.bandwidth), (Bucket::Ops, self.ops)] {
            let Some(config) = config else { continue };
            if config.size == 0 {
                return Err(ConfigError::invalid(
                    limiter.field(bucket, "size"),
                    format!("{owner}: 0 tokens: a bucket holds at least 1"),
                ));
            }
            if config.refill_time_ms == 0 || config.refill_time_ms > MAX_REFILL_TIME_MS {
                return Err(ConfigError::invalid(
                    limiter.field(bucket, "refill_time_ms"),
                    format!(
                        "{owner}: {} ms: a bucket refills in 1 to {MAX_REFILL_TIME_MS} ms",
                        config.refill_time_ms
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Which bucket of a limiter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bucket {
    Bandwidth,
    Ops,
}

/// Where a limiter sits in a [`VmConfig`](super::VmConfig), to name its fields in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LimiterField {
    /// `disks[].rate_limiter`.
    Disk,
    /// `nets[].rx_rate_limiter`.
    NetRx,
    /// `nets[].tx_rate_limiter`.
    NetTx,
    /// `rng.rate_limiter`.
    Rng,
}

impl LimiterField {
    /// The full name of field `name` (`size` or `refill_time_ms`) of `bucket`.
    pub(crate) fn field(self, bucket: Bucket, name: &str) -> &'static str {
        use Bucket::{Bandwidth, Ops};
        use LimiterField::{Disk, NetRx, NetTx, Rng};
        let size = name == "size";
        match (self, bucket, size) {
            (Disk, Bandwidth, true) => "disks.rate_limiter.bandwidth.size",
            (Disk, Bandwidth, false) => "disks.rate_limiter.bandwidth.refill_time_ms",
            (Disk, Ops, true) => "disks.rate_limiter.ops.size",
            (Disk, Ops, false) => "disks.rate_limiter.ops.refill_time_ms",
            (NetRx, Bandwidth, true) => "nets.rx_rate_limiter.bandwidth.size",
            (NetRx, Bandwidth, false) => "nets.rx_rate_limiter.bandwidth.refill_time_ms",
            (NetRx, Ops, true) => "nets.rx_rate_limiter.ops.size",
            (NetRx, Ops, false) => "nets.rx_rate_limiter.ops.refill_time_ms",
            (NetTx, Bandwidth, true) => "nets.tx_rate_limiter.bandwidth.size",
            (NetTx, Bandwidth, false) => "nets.tx_rate_limiter.bandwidth.refill_time_ms",
            (NetTx, Ops, true) => "nets.tx_rate_limiter.ops.size",
            (NetTx, Ops, false) => "nets.tx_rate_limiter.ops.refill_time_ms",
            (Rng, Bandwidth, true) => "rng.rate_limiter.bandwidth.size",
            (Rng, Bandwidth, false) => "rng.rate_limiter.bandwidth.refill_time_ms",
            (Rng, Ops, true) => "rng.rate_limiter.ops.size",
            (Rng, Ops, false) => "rng.rate_limiter.ops.refill_time_ms",
        }
    }

    /// The limiter's own field name (`rate_limiter`, `rx_rate_limiter`, `tx_rate_limiter`).
    pub(crate) fn name(self) -> &'static str {
        match self {
            LimiterField::Disk | LimiterField::Rng => "rate_limiter",
            LimiterField::NetRx => "rx_rate_limiter",
            LimiterField::NetTx => "tx_rate_limiter",
        }
    }
}

/// A change of a running VM's rate limits (`PUT /api/v1/vm.rate-limit`): the device by id and
/// the limiters to replace. A limiter not given stays as it is; `{}` removes a limit. A disk and
/// the entropy device take `rate_limiter`, a NIC `rx_rate_limiter` and `tx_rate_limiter`. New
/// buckets start full.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitUpdate {
    /// The device's id (`disk0`, `net0`, `rng0`).
    pub id: String,
    /// A disk's or the entropy device's limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
    /// A NIC's limit on frames to the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// A NIC's limit on frames from the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

impl RateLimitUpdate {
    /// Checks the update for a device of `kind` (`block`, `net`, `rng`: the counters' kinds)
    /// and returns the limits to set. Errors name the update's own field (`rate_limiter`,
    /// `rx_rate_limiter.ops.size`, ...).
    pub(crate) fn check_for(
        &self,
        kind: &str,
    ) -> Result<Vec<(RateLimitTarget, RateLimit)>, ConfigError> {
        let given = [
            (self.rate_limiter, "rate_limiter"),
            (self.rx_rate_limiter, "rx_rate_limiter"),
            (self.tx_rate_limiter, "tx_rate_limiter"),
        ];
        // The fields a kind takes, and where each of the three goes (in `given`'s order).
        type Slots = [Option<(LimiterField, RateLimitTarget)>; 3];
        let (takes, fields): (&[&str], Slots) = match kind {
            "block" => (
                &["rate_limiter"],
                [Some((LimiterField::Disk, RateLimitTarget::Requests)), None, None],
            ),
            "rng" => (
                &["rate_limiter"],
                [Some((LimiterField::Rng, RateLimitTarget::Requests)), None, None],
            ),
            "net" => (
                &["rx_rate_limiter", "tx_rate_limiter"],
                [
                    None,
                    Some((LimiterField::NetRx, RateLimitTarget::Receive)),
                    Some((LimiterField::NetTx, RateLimitTarget::Transmit)),
                ],
            ),
            other => {
                return Err(ConfigError::invalid(
                    "id",
                    format!(
                        "`{}` is a {other} device, which has no rate limiter (disks, NICs and the entropy device do)",
                        self.id
                    ),
                ))
            }
        };
        let mut limits = Vec::new();
        for ((limiter, name), field) in given.into_iter().zip(fields) {
            let Some(limiter) = limiter else { continue };
            let Some((field, target)) = field else {
                return Err(ConfigError::invalid(
                    name,
                    format!(
                        "`{}` is a {kind} device: it takes {}",
                        self.id,
                        takes.join(" and ")
                    ),
                ));
            };
            limiter
                .check(field, &format!("`{}`", self.id))
                .map_err(|err| {
                    // The update's field: `rx_rate_limiter.ops.size`, not the config's path.
                    let local = err
                        .field
                        .split_once('.')
                        .map_or(err.field, |(_, rest)| rest);
                    ConfigError::invalid(local, err.reason)
                })?;
            limits.push((target, limiter.to_limit()));
        }
        if limits.is_empty() {
            return Err(ConfigError::invalid(
                takes[0],
                format!(
                    "no limiter given for `{}`: it takes {}",
                    self.id,
                    takes.join(" and ")
                ),
            ));
        }
        Ok(limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_parse_in_firecrackers_shape_and_refuse_unknown_fields() {
        let limiter: RateLimiterConfig = serde_json::from_str(
            r#"{"bandwidth": {"size": 1048576, "refill_time_ms": 100},
                "ops": {"size": 100, "one_time_burst": 500, "refill_time_ms": 1000}}"#,
        )
        .unwrap();
        let limit = limiter.to_limit();
        let bandwidth = limit.bandwidth.unwrap();
        assert_eq!(bandwidth.rate_per_second(), 10.0 * 1048576.0);
        assert_eq!(limit.ops.unwrap().one_time_burst, 500);
        let err = serde_json::from_str::<RateLimiterConfig>(
            r#"{"ops": {"size": 1, "refill_time": 1000}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("refill_time"), "{err}");
        assert!(RateLimiterConfig::default().to_limit().is_unlimited());
    }

    #[test]
    fn updates_fit_the_device_kind_and_name_their_own_fields() {
        let ops = RateLimiterConfig {
            bandwidth: None,
            ops: Some(TokenBucketConfig {
                size: 10,
                one_time_burst: 0,
                refill_time_ms: 100,
            }),
        };
        let disk = RateLimitUpdate {
            id: "disk0".into(),
            rate_limiter: Some(ops),
            ..Default::default()
        };
        let limits = disk.check_for("block").unwrap();
        assert_eq!(limits, vec![(RateLimitTarget::Requests, ops.to_limit())]);
        let err = disk.check_for("net").unwrap_err();
        assert_eq!(err.field, "rate_limiter");
        assert!(
            err.reason.contains("rx_rate_limiter and tx_rate_limiter"),
            "{err}"
        );
        assert_eq!(disk.check_for("vsock").unwrap_err().field, "id");
        let nic = RateLimitUpdate {
            id: "net0".into(),
            tx_rate_limiter: Some(RateLimiterConfig {
                bandwidth: Some(TokenBucketConfig {
                    size: 1,
                    one_time_burst: 0,
                    refill_time_ms: 0,
                }),
                ops: None,
            }),
            ..Default::default()
        };
        let err = nic.check_for("net").unwrap_err();
        assert_eq!(err.field, "tx_rate_limiter.bandwidth.refill_time_ms");
        let empty = RateLimitUpdate {
            id: "rng0".into(),
            ..Default::default()
        };
        assert_eq!(empty.check_for("rng").unwrap_err().field, "rate_limiter");
    }

    #[test]
    fn bad_buckets_name_their_field_and_device() {
        use devices::rate_limiter::MAX_REFILL_TIME;
        let bucket = |size, refill_time_ms| TokenBucketConfig {
            size,
            one_time_burst: 0,
            refill_time_ms,
        };
        let ops = |config| RateLimiterConfig {
            bandwidth: None,
            ops: Some(config),
        };
        let err = ops(bucket(0, 10))
            .check(LimiterField::NetTx, "nic `net0`")
            .unwrap_err();
        assert_eq!(err.field, "nets.tx_rate_limiter.ops.size");
        assert!(err.reason.contains("nic `net0`"), "{err}");
        for refill in [0, MAX_REFILL_TIME_MS + 1] {
            let err = RateLimiterConfig {
                bandwidth: Some(bucket(1, refill)),
                ops: None,
            }
            .check(LimiterField::Disk, "disk `d`")
            .unwrap_err();
            assert_eq!(err.field, "disks.rate_limiter.bandwidth.refill_time_ms");
        }
        ops(bucket(1, MAX_REFILL_TIME_MS))
            .check(LimiterField::Rng, "rng")
            .unwrap();
        assert_eq!(
            Duration::from_millis(MAX_REFILL_TIME_MS),
            MAX_REFILL_TIME,
            "the devices take what the config allows"
        );
    }
}
