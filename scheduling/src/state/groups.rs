//! Server group membership, counted per host, zone and rack for affinity and topology spread.

use crate::error::ModelError;
use crate::fasthash::IntMap;
use crate::model::{Cluster, HostId, RackId, ServerGroupPolicy, ServerGroupSpec, ZoneId};

/// Checks a server group definition.
pub(crate) fn validate_server_group(g: &ServerGroupSpec) -> Result<(), ModelError> {
    if g.name.is_empty() {
        return Err(ModelError::Empty {
            what: "server group".into(),
            field: "name",
        });
    }
    if g.max_per_host == Some(0) {
        return Err(ModelError::InvalidServerGroup {
            group: g.name.clone(),
            reason: "max_per_host must be >= 1".into(),
        });
    }
    if g.max_per_host.is_some() && g.policy != ServerGroupPolicy::AntiAffinity {
        return Err(ModelError::InvalidServerGroup {
            group: g.name.clone(),
            reason: "max_per_host only applies to anti-affinity".into(),
        });
    }
    Ok(())
}

/// Live membership of one server group.
#[derive(Clone, Debug)]
pub struct ServerGroupState {
    pub(crate) spec: ServerGroupSpec,
    /// Members per host (only hosts with members), keyed by host index.
    pub(crate) per_host: IntMap<u32, u32>,
    /// Members per zone id.
    pub(crate) per_zone: Vec<u32>,
    /// Members per rack id.
    pub(crate) per_rack: Vec<u32>,
    pub(crate) members: u32,
    pub(crate) epoch: u64,
}

impl ServerGroupState {
    pub(crate) fn new(spec: ServerGroupSpec, cluster: &Cluster) -> Self {
        Self {
            spec,
            per_host: IntMap::default(),
            per_zone: vec![0; cluster.zone_count()],
            per_rack: vec![0; cluster.rack_count()],
            members: 0,
            epoch: 0,
        }
    }

    /// The group's definition.
    pub fn spec(&self) -> &ServerGroupSpec {
        &self.spec
    }

    /// Total members.
    pub fn members(&self) -> u32 {
        self.members
    }

    /// Bumped on every membership change (claims on this group check it).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Members on `host`.
    #[inline]
    pub fn on_host(&self, host: HostId) -> u32 {
        if self.members == 0 {
            return 0;
        }
        self.per_host.get(&host.raw()).copied().unwrap_or(0)
    }

    /// Members in zone `z`.
    #[inline]
    pub fn in_zone(&self, z: ZoneId) -> u32 {
        self.per_zone.get(z.idx()).copied().unwrap_or(0)
    }

    /// Members in rack `r`.
    #[inline]
    pub fn in_rack(&self, r: RackId) -> u32 {
        self.per_rack.get(r.idx()).copied().unwrap_or(0)
    }

    /// Makes room for zones and racks added to the cluster since.
    pub(crate) fn grow(&mut self, cluster: &Cluster) {
        self.per_zone
            .resize(cluster.zone_count().max(self.per_zone.len()), 0);
        self.per_rack
            .resize(cluster.rack_count().max(self.per_rack.len()), 0);
    }

    pub(crate) fn add(&mut self, cluster: &Cluster, host: HostId) {
        *self.per_host.entry(host.raw()).or_insert(0) += 1;
        let h = cluster.host(host);
        if let Some(z) = h.zone {
            self.per_zone[z.idx()] += 1;
        }
        if let Some(r) = h.rack {
            self.per_rack[r.idx()] += 1;
        }
        self.members += 1;
        self.epoch += 1;
    }

    pub(crate) fn remove(&mut self, cluster: &Cluster, host: HostId) {
        if let Some(n) = self.per_host.get_mut(&host.raw()) {
            *n -= 1;
            if *n == 0 {
                self.per_host.remove(&host.raw());
            }
        }
        let h = cluster.host(host);
        if let Some(z) = h.zone {
            self.per_zone[z.idx()] = self.per_zone[z.idx()].saturating_sub(1);
        }
        if let Some(r) = h.rack {
            self.per_rack[r.idx()] = self.per_rack[r.idx()].saturating_sub(1);
        }
        self.members = self.members.saturating_sub(1);
        self.epoch += 1;
    }

    /// Members allowed per host under this group's policy (anti-affinity only).
    pub fn max_per_host(&self) -> u32 {
        match self.spec.policy {
            ServerGroupPolicy::AntiAffinity => self.spec.max_per_host.unwrap_or(1),
            _ => u32::MAX,
        }
    }
}
