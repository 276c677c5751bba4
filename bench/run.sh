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
. "$(dirname "$0")/start.sh"

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
