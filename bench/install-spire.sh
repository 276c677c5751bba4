#!/usr/bin/env bash
# Builds SPIRE's server and agent (the peer Signet is measured against) from
# the Go module proxy into $BIN (default ~/.cache/signet-bench/bin). Takes
# about 12 minutes on 2 cores the first time; later runs return at once.
set -euo pipefail
VERSION=${SPIRE_VERSION:-v1.13.3}
BIN=${BIN:-$HOME/.cache/signet-bench/bin}
mkdir -p "$BIN"
if [[ -x $BIN/spire-server && -x $BIN/spire-agent && -f $BIN/.spire-$VERSION ]]; then echo "$BIN"; exit 0; fi
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cd "$work"
go mod init spire-build >/dev/null 2>&1
go get -tool "github.com/spiffe/spire/cmd/spire-server@$VERSION" "github.com/spiffe/spire/cmd/spire-agent@$VERSION" >&2
GOBIN=$BIN go install github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent >&2
touch "$BIN/.spire-$VERSION"
echo "$BIN"
