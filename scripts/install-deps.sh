#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian or Ubuntu machine: openssl
# (an independent X.509 verifier) and protoc (to check that the committed
# generated code is current). Go modules come through the module proxy.
set -euo pipefail

need=()
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing ${need[*]}; run as root or: sudo apt-get install -y ${need[*]}" >&2
  exit 1
fi
echo "install-deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${need[@]}" >/dev/null
