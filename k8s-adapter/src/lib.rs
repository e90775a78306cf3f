//! Keel's Kubernetes layer: VMs beside containers, run by Keel.
//!
//! - [`api`]: `VirtualMachineInstance` and `VirtualMachine` in `keel.dev/v1alpha1`, with
//!   KubeVirt's field names; [`crd`] generates their CRDs (committed as `deploy/crds.yaml`).
//! - [`controller`]: VM → VMI by run strategy, VMI → launcher pod (requests = guest + Keel's
//!   measured [`overhead`]), placement by kube-scheduler or, with `schedulerName: keel`, by
//!   Keel's own [`placement`] (the `scheduling` library, binding through `pods/binding`, its
//!   explanation in `PodScheduled`), phase and conditions ([`phase`]); finalizers, server-side
//!   apply, leader election through a Lease.
//! - [`agent`]: the node agent, which runs each VMI with the `keel` program and drives it
//!   through its API socket, reports it, stops it gracefully and re-adopts it after a restart.
//! - [`convert`]: KubeVirt manifests to Keel's, naming every field it cannot carry.
//!
//! Binaries: `keel-controller`, `keel-node-agent`, `keel-crdgen`, `keel-kubevirt-convert`.

pub mod agent;
pub mod api;
pub mod cli;
pub mod controller;
pub mod convert;
pub mod crd;
pub mod overhead;
pub mod phase;
pub mod placement;
pub mod pod;
pub mod quantity;
pub mod run_strategy;
