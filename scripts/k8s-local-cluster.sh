#!/usr/bin/env bash
# Starts a local Kubernetes cluster with Keel's Kubernetes layer for trying it with kubectl:
# the real etcd, kube-apiserver and kube-scheduler (built once from their Go modules and cached
# under ~/.cache/keel/, which takes several minutes the first time), Keel's CRDs, controller and
# node agents, and the test harness's kubelet stand-in for launcher pods (no kubelet can run
# here). It prints the KUBECONFIG to use; Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(k8s-adapter/testenv/build.sh)
export KEEL_K8S_BIN=$bin
cargo build --quiet -p keel --bin keel
export KEEL_BIN=$PWD/target/debug/keel
cargo build --quiet -p k8s-adapter --bins --example local-cluster
exec target/debug/examples/local-cluster
