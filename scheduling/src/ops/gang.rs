//! Gang placement: all members of a group of VMs, or none.

use crate::error::{CommitError, PlacementRequestError};
use crate::explain::Explanation;
use crate::placement::Placement;
use crate::request::{CompiledRequest, PlacementRequest};
use crate::scheduler::{DecideOptions, Scheduler};
use crate::state::State;
use std::sync::Arc;

/// Why a gang could not be placed. Nothing of the gang remains allocated.
#[derive(Debug, thiserror::Error, Clone)]
pub enum GangError {
    /// A member request is invalid (nothing was placed).
    #[error(transparent)]
    Request(#[from] PlacementRequestError),
    /// Member `index` did not fit; the members placed before it were released.
    #[error("gang member {index} (`{id}`) does not fit, gang rolled back: {}", explanation.summary)]
    Unschedulable {
        /// Position in the gang.
        index: usize,
        /// Its id.
        id: String,
        /// Why.
        explanation: Box<Explanation>,
    },
    /// A commit failed; the gang was rolled back.
    #[error("gang rolled back: {0}")]
    Commit(#[from] CommitError),
}

/// Places all of `members` or none: on the first failure every member placed so far is released, so
/// usage and allocations are as before (generations, being counters, have advanced).
pub fn place_gang(
    state: &mut State,
    scheduler: &mut Scheduler,
    members: &[PlacementRequest],
) -> Result<Vec<Placement>, GangError> {
    let compiled: Vec<Arc<CompiledRequest>> = members
        .iter()
        .map(|m| state.compile(m))
        .collect::<Result<_, _>>()?;
    let mut placed: Vec<Placement> = Vec::with_capacity(members.len());
    let rollback = |state: &mut State, placed: &[Placement]| {
        for p in placed.iter().rev() {
            // The consumer was committed just above, so release cannot fail.
            let _ = state.release(&p.consumer);
        }
    };
    for (index, req) in compiled.iter().enumerate() {
        let decision = match scheduler.decide(state, req, &DecideOptions::default()) {
            Ok(d) => d,
            Err(u) => {
                let explanation = Box::new(u.explain(state.cluster()));
                rollback(state, &placed);
                return Err(GangError::Unschedulable {
                    index,
                    id: req.id().to_string(),
                    explanation,
                });
            }
        };
        let p = decision.claim.placement(state.cluster());
        if let Err(e) = scheduler.commit(state, decision.claim) {
            rollback(state, &placed);
            return Err(e.into());
        }
        placed.push(p);
    }
    Ok(placed)
}
