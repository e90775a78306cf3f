#!/usr/bin/env bash
# Builds the real control plane for Keel's Kubernetes tests from the published Go modules pinned
# in go.mod beside this script: kube-apiserver, kube-scheduler and kubectl (k8s.io/kubernetes)
# and etcd (go.etcd.io/etcd/server/v3). The binaries are cached by version under
# ${KEEL_CACHE:-~/.cache/keel}/k8s-<k8s>-etcd-<etcd>/bin, so a machine builds them once.
# Prints the bin directory on stdout; progress goes to stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
k8s=v1.37.2
etcd=v3.7.4
cache=${KEEL_CACHE:-$HOME/.cache/keel}
bin="$cache/k8s-$k8s-etcd-$etcd/bin"
tools=(kube-apiserver kube-scheduler kubectl etcd)

have_all() {
  for t in "${tools[@]}"; do [ -x "$bin/$t" ] || return 1; done
}
if have_all; then
  echo "$bin"
  exit 0
fi
command -v go > /dev/null || { echo "build.sh: Go is needed to build the test control plane" >&2; exit 1; }
mkdir -p "$bin"
start=$SECONDS
version="-X k8s.io/component-base/version.gitVersion=$k8s -X k8s.io/component-base/version.gitMajor=1"
version+=" -X k8s.io/component-base/version.gitMinor=37 -X k8s.io/component-base/version.gitTreeState=clean"
version+=" -X k8s.io/client-go/pkg/version.gitVersion=$k8s -X k8s.io/client-go/pkg/version.gitMajor=1"
version+=" -X k8s.io/client-go/pkg/version.gitMinor=37"
cd "$here"
export GOFLAGS=-mod=mod CGO_ENABLED=0
# One `go build` per binary, into a temporary name renamed at the end, so an interrupted build
# never leaves a half-written binary that looks cached.
build() {
  local name=$1 pkg=$2
  [ -x "$bin/$name" ] && return 0
  echo "build.sh: building $name ($pkg)" >&2
  go build -trimpath -ldflags "-s -w $version" -o "$bin/.$name.tmp" "$pkg"
  mv "$bin/.$name.tmp" "$bin/$name"
}
build etcd go.etcd.io/etcd/server/v3
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
build kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler
build kubectl k8s.io/kubernetes/cmd/kubectl
echo "build.sh: control plane built in $((SECONDS - start)) s into $bin" >&2
echo "$bin"
