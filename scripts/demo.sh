#!/usr/bin/env bash
# make demo: the whole system locally. `signet dev` runs signet-ca (embedded
# SQLite) and signet-agent in ./.signet-demo; example services on the SDK
# (an HTTP pair and a gRPC pair), selected by their binaries' paths
# (unix:path), get SPIFFE identities from the agent, talk over mutual TLS
# and are authorized by central access policies: one call of each pair is
# allowed, one denied, and both decisions land in the CA's audit log.
# Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${SIGNET_BIN:-$PWD/bin}
DATA=${SIGNET_DEMO_DIR:-$PWD/.signet-demo}
TD=example.org
PARENT=spiffe://$TD/signet/agent/join/dev

# Each demo starts from a fresh trust domain.
rm -rf "$DATA"
mkdir -p "$DATA"
export SIGNET_ADMIN_SOCKET="$DATA/admin.sock"

# The processes the demo started. A non-interactive shell starts
# background jobs with SIGINT ignored, so Ctrl-C (which the terminal sends
# to the whole process group) reaches only this script: cleanup stops them
# with SIGTERM, and with SIGKILL what has not exited 5 s later.
pids=()
cleanup() {
  trap '' INT TERM
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 50); do
    alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo; echo "demo stopped."
}
trap cleanup EXIT
trap 'exit 0' INT
trap 'exit 0' TERM

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

"$BIN/signet" dev --data-dir "$DATA" --trust-domain "$TD" >"$DATA/dev.out" 2>"$DATA/dev.log" &
pids+=($!)
for _ in $(seq 300); do
  grep -q "Press Ctrl-C" "$DATA/dev.out" 2>/dev/null && break
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$DATA/dev.log"; exit 1; }
  sleep 0.1
done
grep -v "Press Ctrl-C" "$DATA/dev.out"
export SPIFFE_ENDPOINT_SOCKET=unix://$DATA/agent.sock

# One identity per example binary, selected by its path and our uid.
for svc in shop-http-server shop-http-client shop-grpc-server shop-grpc-client; do
  step "$BIN/signet" entry create --parent-id "$PARENT" --spiffe-id "spiffe://$TD/demo/$svc" \
    --selector "unix:uid:$(id -u)" --selector "unix:path:$BIN/$svc"
done
step "$BIN/signet" entry list

# Central policies: the HTTP client may GET /items (not DELETE); the gRPC
# client may call Health/Check (not List). The servers hold no rules of
# their own, so everything else is denied.
cat >"$DATA/http-policy.json" <<EOF
{"name": "shop-http", "target": "spiffe://$TD/demo/shop-http-server",
 "rules": [{"action": "allow", "peers": [{"id": "spiffe://$TD/demo/shop-http-client"}], "methods": ["GET /items"]}]}
EOF
cat >"$DATA/grpc-policy.json" <<EOF
{"name": "shop-grpc", "target": "spiffe://$TD/demo/shop-grpc-server",
 "rules": [{"action": "allow", "peers": [{"id": "spiffe://$TD/demo/shop-grpc-client"}], "methods": ["/grpc.health.v1.Health/Check"]}]}
EOF
step "$BIN/signet" policy create --file "$DATA/http-policy.json"
step "$BIN/signet" policy create --file "$DATA/grpc-policy.json"

for svc in shop-http-server shop-grpc-server; do
  printf '\n\033[1m$ %s &\033[0m\n' "$svc"
  "$BIN/$svc" >"$DATA/$svc.log" 2>&1 &
  srv=$!
  pids+=("$srv")
  # The log follower ends with its server.
  tail --pid="$srv" -n +1 -f "$DATA/$svc.log" | sed -u "s/^/  [$svc] /" &
  pids+=($!)
  for _ in $(seq 100); do
    grep -q listening "$DATA/$svc.log" && break
    sleep 0.1
  done
done
sleep 0.5 # the servers receive their policies from the agent
step "$BIN/shop-http-client" "GET /items" "DELETE /items"
step "$BIN/shop-grpc-client"
sleep 2.5 # decision records are delivered every 2 s

echo
echo "What the services decided, in the CA's audit log:"
grep -E '"authz\.(allow|deny)"' "$DATA/audit.log" | tail -n 6
echo
echo "What the CA issued (its audit log):"
grep '"svid.x509.issue"' "$DATA/audit.log" | tail -n 2
echo
echo "The system keeps running; in another shell:"
echo "  export SPIFFE_ENDPOINT_SOCKET=$SPIFFE_ENDPOINT_SOCKET SIGNET_ADMIN_SOCKET=$SIGNET_ADMIN_SOCKET"
echo "  $BIN/signet entry list; $BIN/signet policy list"
echo "Press Ctrl-C to stop."
wait "${pids[0]}"
