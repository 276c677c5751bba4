#!/usr/bin/env bash
# Re-issue after a CA key compromise, Signet beside SPIRE: one agent holds
# E SVIDs for one workload; the key that signed them is revoked, and
# wlbench (go-spiffe) measures revoke -> the workload holds E SVIDs none of
# which chains through that key. Prints JSON lines.
#
#   bench/reissue.sh signet 1000   # revocation create --ca-key <intermediate>;
#                                  # then ca rotate --now (the root)
#   bench/reissue.sh spire 1000    # localauthority x509 prepare, activate,
#                                  # then taint the old authority (timed)
set -euo pipefail
IMPL=${1:?usage: reissue.sh signet|spire E}
E=${2:?usage: reissue.sh signet|spire E}
. "$(dirname "$0")/start.sh"

entries_json 1 "$E" > "$TMP/entries.json"
register "$TMP/entries.json"
"$WL" all -want "$E" -timeout 10m > /dev/null

# reissued KEY CMD...: runs CMD and prints the ms until the workload holds
# E SVIDs not under KEY.
reissued() {
  local key=$1; shift
  "$WL" all -want "$E" -away "$key" -timeout 10m > "$TMP/reissue.json" &
  local w=$!
  sleep 0.5
  local t0; t0=$(now_ns)
  "$@" > "$TMP/cmd.out"
  wait $w
  local done_ns; done_ns=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["done_unix_ns"])' "$TMP/reissue.json")
  echo $(( (done_ns - t0) / 1000000 ))
}

if [[ $IMPL == signet ]]; then
  key() { "$BIN/signet" ca status -o json | python3 -c 'import json,sys; print([k["id"] for k in json.load(sys.stdin)["keys"] if k["kind"]==sys.argv[1] and k["state"]=="active"][0])' "$1"; }
  inter=$(key x509_intermediate)
  out intermediate_revoked "{\"ms\":$(reissued "$inter" "$BIN/signet" revocation create --ca-key "$inter")}"
  root=$(key x509_root)
  out root_rotated "{\"ms\":$(reissued "$root" "$BIN/signet" ca rotate --now --poll 100ms)}"
else
  authority() { "$SPIRE_BIN/spire-server" localauthority x509 show -socketPath "$SSOCK" -output json | python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]]["authority_id"])' "$1"; }
  old=$(authority active)
  "$SPIRE_BIN/spire-server" localauthority x509 prepare -socketPath "$SSOCK" > /dev/null
  # SPIRE has no acknowledgement: wait two of the agent's 5 s syncs for
  # the prepared authority to reach it before activating.
  sleep 12
  "$SPIRE_BIN/spire-server" localauthority x509 activate -socketPath "$SSOCK" -authorityID "$(authority prepared)" > /dev/null
  out authority_tainted "{\"ms\":$(reissued "$old" "$SPIRE_BIN/spire-server" localauthority x509 taint -socketPath "$SSOCK" -authorityID "$old")}"
fi
