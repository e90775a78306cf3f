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
start=$SECONDS

# The Go toolchain that go.mod asks for (its `go` line). A `go` on PATH that is at least that
# version builds; an older one (Debian 12's golang-go is 1.19, which predates toolchain
# switching) fetches that toolchain once as the Go module golang.org/toolchain from the module
# proxy (verified against the checksum database like any module) into $cache/go<version>.
want=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$here/go.mod")
version_at_least() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }
pick_go() {
  local have
  if command -v go > /dev/null; then
    have=$(cd / && GOTOOLCHAIN=local go env GOVERSION 2> /dev/null | sed 's/^go//')
    if version_at_least "${have:-0}" "$want"; then
      echo go
      return 0
    fi
  fi
  mkdir -p "$cache"
  local root="$cache/go$want"
  if [ -x "$root/bin/go" ]; then
    echo "$root/bin/go"
    return 0
  fi
  command -v go > /dev/null || {
    echo "build.sh: Go is needed to build the test control plane (any version, e.g. Debian's golang-go)" >&2
    return 1
  }
  echo "build.sh: go ${have:-?} is older than go.mod's $want; fetching go$want from the module proxy" >&2
  local module="golang.org/toolchain@v0.0.1-go$want.$(go env GOOS)-$(go env GOARCH)"
  local scratch dir
  scratch=$(mktemp -d)
  # Outside any module, with its own module cache, so nothing of the caller's setup applies.
  dir=$(cd "$scratch" && GOFLAGS= GOMODCACHE="$scratch/mod" GOTOOLCHAIN=local \
    go mod download -json "$module" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -n "$dir" ] && [ -f "$dir/bin/go" ] || {
    echo "build.sh: could not fetch $module" >&2
    chmod -R u+w "$scratch" && rm -rf "$scratch"
    return 1
  }
  rm -rf "$root.tmp"
  cp -r "$dir" "$root.tmp"
  # Module zips carry no file modes.
  chmod -R u+w "$root.tmp"
  chmod +x "$root.tmp"/bin/* "$root.tmp"/pkg/tool/*/*
  mv "$root.tmp" "$root"
  chmod -R u+w "$scratch" && rm -rf "$scratch"
  echo "$root/bin/go"
}
go=$(pick_go)
echo "build.sh: using $("$go" version) ($go)" >&2
mkdir -p "$bin"
version="-X k8s.io/component-base/version.gitVersion=$k8s -X k8s.io/component-base/version.gitMajor=1"
version+=" -X k8s.io/component-base/version.gitMinor=37 -X k8s.io/component-base/version.gitTreeState=clean"
version+=" -X k8s.io/client-go/pkg/version.gitVersion=$k8s -X k8s.io/client-go/pkg/version.gitMajor=1"
version+=" -X k8s.io/client-go/pkg/version.gitMinor=37"
cd "$here"
export GOFLAGS=-mod=mod CGO_ENABLED=0 GOTOOLCHAIN=local
# One `go build` per binary, into a temporary name renamed at the end, so an interrupted build
# never leaves a half-written binary that looks cached.
build() {
  local name=$1 pkg=$2
  [ -x "$bin/$name" ] && return 0
  echo "build.sh: building $name ($pkg)" >&2
  "$go" build -trimpath -ldflags "-s -w $version" -o "$bin/.$name.tmp" "$pkg"
  mv "$bin/.$name.tmp" "$bin/$name"
}
build etcd go.etcd.io/etcd/server/v3
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
build kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler
build kubectl k8s.io/kubernetes/cmd/kubectl
echo "build.sh: control plane built in $((SECONDS - start)) s into $bin" >&2
echo "$bin"
