#!/usr/bin/env bash
# Runs each fuzz target for FUZZTIME (default 30s). Seeds live in testdata/.
set -euo pipefail
cd "$(dirname "$0")/.."
t=${FUZZTIME:-30s}
go test -run '^$' -fuzz '^FuzzParse$' -fuzztime "$t" ./internal/selector/
go test -run '^$' -fuzz '^FuzzFromProto$' -fuzztime "$t" ./internal/entry/
go test -run '^$' -fuzz '^FuzzParseCSR$' -fuzztime "$t" ./ca/signer/
go test -run '^$' -fuzz '^FuzzLoad$' -fuzztime "$t" ./internal/config/
go test -run '^$' -fuzz '^FuzzEntriesFile$' -fuzztime "$t" ./cmd/signet/
go test -run '^$' -fuzz '^FuzzParseStartTime$' -fuzztime "$t" ./internal/peercred/
go test -run '^$' -fuzz '^FuzzParse$' -fuzztime "$t" ./agent/cgroup/
go test -run '^$' -fuzz '^FuzzRender$' -fuzztime "$t" ./ca/identityrule/
go test -run '^$' -fuzz '^FuzzParsePods$' -fuzztime "$t" ./agent/kubelet/
go test -run '^$' -fuzz '^FuzzPolicy$' -fuzztime "$t" ./sdk/authz/
go test -run '^$' -fuzz '^FuzzDecide$' -fuzztime "$t" ./sdk/authz/
go test -run '^$' -fuzz '^FuzzAdmissionReview$' -fuzztime "$t" ./ca/webhook/
go test -run '^$' -fuzz '^FuzzParseMountInfo$' -fuzztime "$t" ./agent/csi/
go test -run '^$' -fuzz '^FuzzNormalizeSerial$' -fuzztime "$t" ./ca/revocations/
go test -run '^$' -fuzz '^FuzzVerify$' -fuzztime "$t" ./ca/audit/
go test -run '^$' -fuzz '^FuzzParseBundle$' -fuzztime "$t" ./ca/federation/
go test -run '^$' -fuzz '^FuzzFromObject$' -fuzztime "$t" ./ca/clusterfederation/
