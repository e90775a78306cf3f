//! Built-in plugins: pre-filters and filters (feasibility) and scores (preference).

pub mod filters;
pub mod scores;
