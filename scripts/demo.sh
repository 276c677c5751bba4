#!/usr/bin/env bash
# make demo: starts signet-ca on its embedded SQLite store in ./.signet-demo,
# creates a join token and a few entries with the CLI, prints the trust
# bundle, and keeps the CA running until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=./bin
DATA=${SIGNET_DEMO_DIR:-./.signet-demo}
TD=example.org
export SIGNET_ADMIN_SOCKET="$DATA/admin.sock"

# Each demo starts from a fresh trust domain.
rm -rf "$DATA"
mkdir -p "$DATA"
"$BIN/signet-ca" --trust-domain "$TD" --data-dir "$DATA" --listen 127.0.0.1:8081 --health-addr 127.0.0.1:8082 2>"$DATA/ca.log" &
CA=$!
trap 'kill -INT $CA 2>/dev/null; wait $CA 2>/dev/null; echo; echo "signet-ca stopped."' EXIT
trap 'exit 0' INT TERM

for _ in $(seq 100); do
  [ -S "$SIGNET_ADMIN_SOCKET" ] && curl -sf http://127.0.0.1:8082/readyz >/dev/null 2>&1 && break
  kill -0 $CA 2>/dev/null || { cat "$DATA/ca.log"; exit 1; }
  sleep 0.1
done

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

echo "signet-ca is up (data in $DATA, log in $DATA/ca.log, audit in $DATA/audit.log)"
step "$BIN/signet" token create --node demo-node -o json
PARENT=spiffe://$TD/signet/agent/join/demo-node
cat > "$DATA/entries.json" <<JSON
{"entries": [
  {"spiffe_id": "spiffe://$TD/demo/server", "parent_id": "$PARENT", "selectors": ["unix:uid:$(id -u)", "unix:path:/usr/local/bin/demo-server"], "dns_names": ["server.demo.local"]},
  {"spiffe_id": "spiffe://$TD/demo/client", "parent_id": "$PARENT", "selectors": ["unix:uid:$(id -u)", "unix:path:/usr/local/bin/demo-client"], "x509_ttl": "30m"}
]}
JSON
step "$BIN/signet" entry create --file "$DATA/entries.json"
step "$BIN/signet" entry create --spiffe-id "spiffe://$TD/demo/batch-job" --parent-id "$PARENT" --selector unix:user:nobody --jwt-ttl 2m
step "$BIN/signet" entry list
step "$BIN/signet" bundle show
step "$BIN/signet" bundle show --format jwks
echo
echo "Last audit records:"
tail -n 4 "$DATA/audit.log"
echo
echo "signet-ca keeps running: try SIGNET_ADMIN_SOCKET=$SIGNET_ADMIN_SOCKET $BIN/signet agent list"
echo "Press Ctrl-C to stop."
wait $CA
