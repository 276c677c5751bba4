# Sourced by run.sh and reissue.sh with IMPL and E set: builds the
# binaries, starts the CA and the agent of IMPL (signet or spire) as
# separate processes in a temporary directory (removed on exit), and
# defines entries_json FROM TO and register FILE, which create entries
# for this uid in one batch. The agent's socket is SPIFFE_ENDPOINT_SOCKET.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
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

