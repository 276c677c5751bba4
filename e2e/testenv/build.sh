#!/usr/bin/env bash
# build.sh: builds the Kubernetes pieces the end-to-end tests run (etcd,
# kube-apiserver, kubelet, helm and kustomize to render deploy/,
# local-kms, an AWS KMS emulator, and kwok, fake nodes and pods) from the Go module proxy into a cache directory, and
# prints that directory's bin/ on the last line. Binaries already present at the
# wanted version are kept, so a second run takes well under a second.
#
#   e2e/testenv/build.sh [CACHE]   (default ${XDG_CACHE_HOME:-$HOME/.cache}/signet-testenv)
#
# Kubernetes and etcd cannot be built with `go install pkg@version` (their
# go.mod files carry replace directives), so each is built from a small
# wrapper module: etcd's calls etcdmain.Main; Kubernetes' requires
# k8s.io/kubernetes and pins every staging module (k8s.io/api, client-go, ...)
# to the matching published v0.x version.
#
# A cold build takes about 10 minutes on two cores and ~4 GB of Go caches.
set -euo pipefail

KUBE_VERSION=${KUBE_VERSION:-1.37.2}
ETCD_VERSION=${ETCD_VERSION:-3.7.3}
CACHE=${1:-${SIGNET_TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/signet-testenv}}
BIN=$CACHE/bin
SRC=$CACHE/src
KUBE_CMDS=${KUBE_CMDS:-kube-apiserver kubelet kube-scheduler kube-controller-manager}

say() { echo "testenv build: $*" >&2; }
mkdir -p "$BIN" "$SRC"

export GOFLAGS="-mod=mod -trimpath -buildvcs=false" GOWORK=off CGO_ENABLED=0
minor=$(cut -d. -f2 <<<"$KUBE_VERSION")
staging=v0.${KUBE_VERSION#1.}

# version_ok BINARY WANT ARGS...: the binary exists and prints WANT as one line.
version_ok() {
  local bin=$1 want=$2; shift 2
  [[ -x $bin ]] && "$bin" "$@" 2>/dev/null | grep -qxF -- "$want"
}

etcd() {
  if version_ok "$BIN/etcd" "etcd Version: $ETCD_VERSION" --version; then return; fi
  local d=$SRC/etcd-$ETCD_VERSION
  rm -rf "$d" && mkdir -p "$d"
  printf 'module signettestenv/etcd\n\ngo 1.26.0\n\nrequire go.etcd.io/etcd/server/v3 v%s\n' "$ETCD_VERSION" >"$d/go.mod"
  cat >"$d/main.go" <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  say "building etcd $ETCD_VERSION"
  local t=$SECONDS
  (cd "$d" && go mod tidy && go build -ldflags='-s -w' -o "$BIN/etcd.new" .)
  mv "$BIN/etcd.new" "$BIN/etcd"
  say "etcd built in $((SECONDS - t)) s"
}

kube_module() {
  local d=$SRC/kubernetes-$KUBE_VERSION
  if [[ ! -f $d/go.sum ]]; then
    rm -rf "$d" && mkdir -p "$d"
    local gomod
    gomod=$(cd "$d" && go mod download -json "k8s.io/kubernetes@v$KUBE_VERSION" |
      sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')
    {
      printf 'module signettestenv/kubernetes\n\n'
      grep -E '^(go|godebug) ' "$gomod"
      printf '\nrequire k8s.io/kubernetes v%s\n\nreplace (\n' "$KUBE_VERSION"
      sed -n '/^replace (/,/^)/p' "$gomod" | awk '/=> \.\/staging\// {print $1}' |
        while read -r m; do printf '\t%s => %s %s\n' "$m" "$m" "$staging"; done
      printf ')\n'
    } >"$d/go.mod"
    touch "$d/go.sum"
  fi
  echo "$d"
}

kube() { # command name
  local name=$1
  if version_ok "$BIN/$name" "Kubernetes v$KUBE_VERSION" --version; then return; fi
  local d; d=$(kube_module)
  if ! grep -q "k8s.io/kubernetes/cmd/$name\$" "$d/go.mod"; then
    (cd "$d" && go get -tool "k8s.io/kubernetes/cmd/$name@v$KUBE_VERSION") >"$d/get-$name.log" 2>&1 ||
      { cat "$d/get-$name.log" >&2; exit 1; }
  fi
  local ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=v$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  say "building $name v$KUBE_VERSION (kube-apiserver: 6-9 min on a cold build cache)"
  local t=$SECONDS
  (cd "$d" && go build -ldflags="$ld" -o "$BIN/$name.new" "k8s.io/kubernetes/cmd/$name")
  mv "$BIN/$name.new" "$BIN/$name"
  say "$name built in $((SECONDS - t)) s"
}

# tool NAME PACKAGE@VERSION: a Go command the tests run (helm, kustomize).
tool() {
  local name=$1 pkg=$2
  if [[ -x $BIN/$name && "$(cat "$BIN/$name.version" 2>/dev/null)" == "$pkg" ]]; then return; fi
  say "building $pkg"
  local t=$SECONDS
  (cd "$SRC" && GOBIN=$BIN GOFLAGS=-trimpath go install "$pkg")
  echo "$pkg" >"$BIN/$name.version"
  say "$name built in $((SECONDS - t)) s"
}

etcd
for c in $KUBE_CMDS; do kube "$c"; done
tool helm helm.sh/helm/v3/cmd/helm@v3.22.0
tool kustomize sigs.k8s.io/kustomize/kustomize/v5@v5.8.1
# An AWS KMS emulator, for the tests of signet-ca --kms awskms:...
tool local-kms github.com/nsmithuk/local-kms@v0.0.0-20260228092603-2a5e92d09ab6
# kwok: fake nodes and pods on the real API server (the scale runs), and
# the stages it plays: nodes become Ready and keep a Lease; pods become
# Running, complete and go when deleted.
KWOK_VERSION=v0.8.0
tool kwok "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
if [[ "$(cat "$BIN/kwok-stages/version" 2>/dev/null)" != "$KWOK_VERSION" ]]; then
  kwok_dir=$(cd "$SRC" && go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')
  rm -rf "$BIN/kwok-stages" && mkdir -p "$BIN/kwok-stages"
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
    pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    cp "$kwok_dir/kustomize/stage/$f" "$BIN/kwok-stages/"
  done
  echo "$KWOK_VERSION" >"$BIN/kwok-stages/version"
fi
echo "$BIN"
