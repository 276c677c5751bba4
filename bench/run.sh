#!/usr/bin/env bash
# One benchmark run of a SPIFFE implementation on this machine, the CA and
# agent as separate processes, E entries for this uid in one batch, measured
# with wlbench (go-spiffe). Prints JSON lines.
#
#   bench/run.sh signet 1000
#   bench/run.sh spire 1000      # needs bench/install-spire.sh first
#
# Interleave the two in one sitting and compare ratios: the machine is
# shared and noisy. bench/compare.sh does that.
set -euo pipefail
IMPL=${1:?usage: run.sh signet|spire E}
E=${2:?usage: run.sh signet|spire E}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SPIRE_BIN=${SPIRE_BIN:-$HOME/.cache/signet-bench/bin}
BIN=$ROOT/bin
(cd "$ROOT" && go build -o "$BIN/" ./cmd/signet ./cmd/signet-ca ./cmd/signet-agent ./bench/wlbench)
WL=$BIN/wlbench
TMP=$(mktemp -d /tmp/signet-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT

now_ns() { date +%s%N; }
ms_since() { echo $(( ($(now_ns) - $1) / 1000000 )); }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
kb() { awk -v k="$2" '$1==k":"{print $2}' "/proc/$1/status"; }
wait_for() { for _ in $(seq 600); do eval "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "timeout: $1" >&2; return 1; }
out() { printf '{"impl":"%s","E":%s,"phase":"%s","result":%s}\n' "$IMPL" "$E" "$1" "$2"; }

ASOCK=$TMP/agent.sock
export SPIFFE_ENDPOINT_SOCKET=unix://$ASOCK
PORT=$(free_port)
UIDN=$(id -u)

if [[ $IMPL == signet ]]; then
  "$BIN/signet-ca" --trust-domain example.org --data-dir "$TMP/ca" --listen 127.0.0.1:$PORT --health-addr 127.0.0.1:$(free_port) 2>"$TMP/ca.log" &
  SERVER_PID=$!; PIDS+=($SERVER_PID)
  export SIGNET_ADMIN_SOCKET=$TMP/ca/admin.sock
  wait_for "[ -S $SIGNET_ADMIN_SOCKET ] && $BIN/signet bundle show"
  "$BIN/signet" bundle show > "$TMP/bundle.pem"
  (umask 077; "$BIN/signet" token create --node bench > "$TMP/join-token")
  "$BIN/signet-agent" --ca-address 127.0.0.1:$PORT --join-token-file "$TMP/join-token" --trust-bundle "$TMP/bundle.pem" \
    --socket "$ASOCK" --data-dir "$TMP/agent" --health-addr 127.0.0.1:$(free_port) 2>"$TMP/agent.log" &
  AGENT_PID=$!; PIDS+=($AGENT_PID)
  wait_for "[ -S $ASOCK ]"
  PARENT=spiffe://example.org/signet/agent/join/bench
  entries_json() { # from to
    echo '{"entries":['
    for ((i = $1; i <= $2; i++)); do
      sep=','; (( i == $2 )) && sep=''
      printf '{"spiffe_id":"spiffe://example.org/w/%d","parent_id":"%s","selectors":["unix:uid:%s"]}%s\n' "$i" "$PARENT" "$UIDN" "$sep"
    done
    echo ']}'
  }
  register() { "$BIN/signet" entry create --file "$1" -o json > /dev/null; }
else
  SSOCK=$TMP/server.sock
  mkdir -p "$TMP/server-data" "$TMP/agent-data"
  cat > "$TMP/server.conf" <<CONF
server {
  bind_address = "127.0.0.1"
  bind_port = "$PORT"
  socket_path = "$SSOCK"
  trust_domain = "example.org"
  data_dir = "$TMP/server-data"
  log_level = "WARN"
  default_x509_svid_ttl = "1h"
}
plugins {
  DataStore "sql" { plugin_data { database_type = "sqlite3" connection_string = "$TMP/server-data/datastore.sqlite3" } }
  KeyManager "disk" { plugin_data { keys_path = "$TMP/server-data/keys.json" } }
  NodeAttestor "join_token" { plugin_data {} }
}
CONF
  "$SPIRE_BIN/spire-server" run -config "$TMP/server.conf" >"$TMP/server.log" 2>&1 &
  SERVER_PID=$!; PIDS+=($SERVER_PID)
  wait_for "$SPIRE_BIN/spire-server healthcheck -socketPath $SSOCK"
  "$SPIRE_BIN/spire-server" bundle show -socketPath "$SSOCK" -format pem > "$TMP/bundle.pem"
  TOKEN=$("$SPIRE_BIN/spire-server" token generate -socketPath "$SSOCK" -ttl 3600 | awk '/^Token:/{print $2}')
  cat > "$TMP/agent.conf" <<CONF
agent {
  data_dir = "$TMP/agent-data"
  log_level = "WARN"
  server_address = "127.0.0.1"
  server_port = "$PORT"
  socket_path = "$ASOCK"
  trust_bundle_path = "$TMP/bundle.pem"
  trust_domain = "example.org"
  join_token = "$TOKEN"
}
plugins {
  NodeAttestor "join_token" { plugin_data {} }
  KeyManager "disk" { plugin_data { directory = "$TMP/agent-data" } }
  WorkloadAttestor "unix" { plugin_data {} }
}
CONF
  "$SPIRE_BIN/spire-agent" run -config "$TMP/agent.conf" >"$TMP/agent.log" 2>&1 &
  AGENT_PID=$!; PIDS+=($AGENT_PID)
  wait_for "$SPIRE_BIN/spire-agent healthcheck -socketPath $ASOCK"
  PARENT=spiffe://example.org/spire/agent/join_token/$TOKEN
  entries_json() {
    echo '{"entries":['
    for ((i = $1; i <= $2; i++)); do
      sep=','; (( i == $2 )) && sep=''
      printf '{"parent_id":"%s","spiffe_id":"spiffe://example.org/w/%d","selectors":[{"type":"unix","value":"uid:%s"}]}%s\n' "$PARENT" "$i" "$UIDN" "$sep"
    done
    echo ']}'
  }
  register() { "$SPIRE_BIN/spire-server" entry create -socketPath "$SSOCK" -data "$1" -output json > /dev/null; }
fi

# All E SVIDs, registration included: the watcher starts first.
entries_json 1 "$E" > "$TMP/entries.json"
"$WL" all -want "$E" -timeout 10m > "$TMP/all.json" &
WPID=$!
sleep 0.2
t0=$(now_ns)
register "$TMP/entries.json"
register_ms=$(ms_since "$t0")
wait $WPID
done_ns=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["done_unix_ns"])' "$TMP/all.json")
out all "{\"register_ms\":$register_ms,\"all_ms\":$(( (done_ns - t0) / 1000000 ))}"

# A new entry while a workload watches: create to held.
entries_json $((E + 1)) $((E + 1)) > "$TMP/one.json"
"$WL" all -want $((E + 1)) -timeout 5m > "$TMP/one-all.json" &
WPID=$!
sleep 1
t0=$(now_ns)
register "$TMP/one.json"
wait $WPID
done_ns=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["done_unix_ns"])' "$TMP/one-all.json")
out new_entry "{\"ms\":$(( (done_ns - t0) / 1000000 ))}"

for r in 1 2 3; do out first "$("$WL" first)"; done
N=2000; (( E >= 1000 )) && N=400; (( E >= 5000 )) && N=200
out latency_c1 "$("$WL" latency -n $N -c 1)"
out latency_c8 "$("$WL" latency -n $N -c 8)"
out jwt_c1 "$("$WL" jwt -n 500 -c 1 -aud bench -id spiffe://example.org/w/1)"
out memory "{\"agent_rss_kb\":$(kb $AGENT_PID VmRSS),\"agent_hwm_kb\":$(kb $AGENT_PID VmHWM),\"server_rss_kb\":$(kb $SERVER_PID VmRSS)}"
