//! Keel's Kubernetes layer: custom resources, a controller and a node agent.
//!
//! Not built yet. This crate reserves the name and its place in the layering (it sits on top of
//! `vmm-core` and `scheduling`); it exports nothing so that nothing depends on an unfinished API.
