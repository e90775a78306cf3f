//! Shared helpers for Keel benchmarks.
