#!/usr/bin/env bash
# Signet and SPIRE, interleaved in one sitting, for each E given (default
# 1 100 1000 5000), ROUNDS times (default 1). JSON lines on stdout.
#   bench/install-spire.sh && bench/compare.sh 100 1000 | tee results.jsonl
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROUNDS=${ROUNDS:-1}
Es=("$@"); [[ ${#Es[@]} -gt 0 ]] || Es=(1 100 1000 5000)
for ((r = 1; r <= ROUNDS; r++)); do
  for e in "${Es[@]}"; do
    "$HERE/run.sh" signet "$e"
    "$HERE/run.sh" spire "$e"
  done
done
