#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian or Ubuntu machine: openssl
# (an independent X.509 verifier), protoc (to check that the committed
# generated code is current), containerd + runc (the container runtime of
# the real test node), the CNI plugins of its pod network, and PostgreSQL
# (the shared store's tests start their own server with it). Go modules come
# through the module proxy; the Kubernetes binaries are built by
# e2e/testenv/build.sh.
set -euo pipefail

need=()
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v containerd >/dev/null 2>&1 || need+=(containerd)
command -v runc >/dev/null 2>&1 || need+=(runc)
# The test node's pod network: the bridge, host-local and loopback plugins.
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
# PostgreSQL's server binaries (the package's own cluster is not used).
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing ${need[*]}; run as root or: sudo apt-get install -y ${need[*]}" >&2
  exit 1
fi
echo "install-deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
# The tests start containerd themselves, with their own configuration: keep
# the package's maintainer scripts from starting the system service.
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e $policy ]; then
  printf '#!/bin/sh\nexit 101\n' >$policy && chmod +x $policy && own_policy=1
fi
trap '[ $own_policy = 1 ] && rm -f $policy' EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
