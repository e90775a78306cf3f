//! Operations beyond single placement: gang placement, preemption, evacuation, rebalancing and the HA
//! reservation check. Each works on a [`State`] with a [`crate::Scheduler`] and reuses the decision
//! pipeline.
//!
//! They are deliberately simple, sequential algorithms (one decision per VM); none persists anything.
//!
//! One module per operation: [`place_gang`], [`preempt`], [`evacuate`], [`plan_rebalance`] and
//! [`ha_check`].

mod evacuate;
mod gang;
mod ha;
mod preempt;
mod rebalance;

pub use evacuate::{evacuate, Evacuation};
pub use gang::{place_gang, GangError};
pub use ha::{ha_check, HaReport};
pub use preempt::{preempt, PreemptError, Preemption};
pub use rebalance::{plan_rebalance, Move, RebalanceGoal};

use crate::model::{HostId, SlotAllocation};
use crate::request::CompiledRequest;
use crate::state::{Claim, State};
use std::sync::Arc;

/// A claim for `allocations` on `host`, valid against `state` as it is now.
fn claim_for(
    state: &State,
    request: Arc<CompiledRequest>,
    host: HostId,
    allocations: Vec<SlotAllocation>,
) -> Claim {
    let group_epoch = request
        .server_group
        .and_then(|g| state.group(g.id))
        .map(|g| g.epoch());
    Claim::current(state, request, host, allocations, group_epoch)
}
