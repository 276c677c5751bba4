#!/usr/bin/env bash
# make demo: the whole system locally. `signet dev` runs signet-ca (embedded
# SQLite) and signet-agent in ./.signet-demo; two example services, selected
# by their binaries' paths (unix:path), get SPIFFE identities from the agent
# and talk over mTLS, each printing the other's SPIFFE ID. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/bin
DATA=${SIGNET_DEMO_DIR:-$PWD/.signet-demo}
TD=example.org
PARENT=spiffe://$TD/signet/agent/join/dev

# Each demo starts from a fresh trust domain.
rm -rf "$DATA"
mkdir -p "$DATA"
export SIGNET_ADMIN_SOCKET="$DATA/admin.sock"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  echo; echo "demo stopped."
}
trap cleanup EXIT
trap 'exit 0' INT TERM

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

"$BIN/signet" dev --data-dir "$DATA" --trust-domain "$TD" >"$DATA/dev.out" 2>"$DATA/dev.log" &
pids+=($!)
for _ in $(seq 300); do
  grep -q "Press Ctrl-C" "$DATA/dev.out" 2>/dev/null && break
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$DATA/dev.log"; exit 1; }
  sleep 0.1
done
cat "$DATA/dev.out"
export SPIFFE_ENDPOINT_SOCKET=unix://$DATA/agent.sock

step "$BIN/signet" entry create --parent-id "$PARENT" --spiffe-id "spiffe://$TD/demo/greeter-server" \
  --selector "unix:uid:$(id -u)" --selector "unix:path:$BIN/greeter-server" --dns localhost
step "$BIN/signet" entry create --parent-id "$PARENT" --spiffe-id "spiffe://$TD/demo/greeter-client" \
  --selector "unix:uid:$(id -u)" --selector "unix:path:$BIN/greeter-client" --x509-ttl 30m

printf '\n\033[1m$ greeter-server &\033[0m\n'
"$BIN/greeter-server" -addr 127.0.0.1:8443 >"$DATA/server.log" 2>&1 &
pids+=($!)
tail -n +1 -f "$DATA/server.log" | sed -u 's/^/  [server] /' &
pids+=($!)
for _ in $(seq 100); do
  grep -q listening "$DATA/server.log" && break
  sleep 0.1
done
step "$BIN/greeter-client" -url https://127.0.0.1:8443/hello -server-id "spiffe://$TD/demo/greeter-server" -count 2
sleep 0.2

echo
echo "What the agent answered (its audit log):"
tail -n 4 "$DATA/agent/audit.log"
echo
echo "What the CA issued (its audit log):"
grep '"svid.x509.issue"' "$DATA/audit.log" | tail -n 3
echo
echo "The system keeps running; in another shell:"
echo "  export SPIFFE_ENDPOINT_SOCKET=$SPIFFE_ENDPOINT_SOCKET SIGNET_ADMIN_SOCKET=$SIGNET_ADMIN_SOCKET"
echo "  $BIN/signet entry list"
echo "Press Ctrl-C to stop."
wait "${pids[0]}"
