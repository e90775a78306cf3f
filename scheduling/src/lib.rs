//! Placement library (see the scheduling issue).
