# Signet. `make demo` runs the system locally; `make test` runs every test.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
TOOLS := $(CURDIR)/.bin
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
STATICCHECK_VERSION := v0.8.2
PROTOS := $(shell find proto -name '*.proto' | sort)

.PHONY: all build release demo test testenv deps lint proto proto-check fuzz bench clean images

all: build

build:
	$(GO) build -buildvcs=auto -o $(BIN)/ ./cmd/... ./examples/...

# release builds the three binaries without debug information or local paths.
release:
	$(GO) build -buildvcs=auto -trimpath -ldflags='-s -w' -o $(BIN)/release/ ./cmd/signet ./cmd/signet-ca ./cmd/signet-agent

# demo starts signet-ca on its embedded SQLite store under ./.signet-demo and
# drives it with the CLI; Ctrl-C stops it.
demo: build
	./scripts/demo.sh

# deps installs what the tests need on a fresh Debian machine (as root).
deps:
	./scripts/install-deps.sh

# Packages that run the real test node (a kubelet owns the host's
# /kubepods and port 10250): one at a time, after everything else.
NODE_PKGS := ./e2e/testenv/ ./e2e/node/ ./e2e/attack/

test: deps proto-check testenv
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 30m $$($(GO) list ./... | grep -v -e /e2e/testenv -e /e2e/node -e /e2e/attack)
	$(GO) test -count=1 -timeout 30m -p 1 $(NODE_PKGS)

# testenv builds etcd, kube-apiserver, kubelet, helm and kustomize from the Go module proxy
# into ~/.cache/signet-testenv (about 10-20 minutes the first time on two
# cores, under a second after), and SPIRE's server and agent (the federation
# test's peer) into ~/.cache/signet-bench/bin (about 12 minutes the first
# time), so that no test waits for a build.
testenv:
	./e2e/testenv/build.sh >/dev/null
	./bench/install-spire.sh >/dev/null

lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$unformatted" ]; then echo "gofmt would change:" $$unformatted; exit 1; fi
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

$(TOOLS)/protoc-gen-go:
	GOBIN=$(TOOLS) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)

$(TOOLS)/protoc-gen-go-grpc:
	GOBIN=$(TOOLS) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

# proto regenerates the committed Go code from proto/.
proto: $(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-grpc
	PATH=$(TOOLS):$$PATH protoc -I proto \
		--go_out=proto --go_opt=paths=source_relative \
		--go-grpc_out=proto --go-grpc_opt=paths=source_relative \
		$(patsubst proto/%,%,$(PROTOS))

# proto-check fails when the committed generated code is stale.
proto-check: $(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-grpc
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	PATH=$(TOOLS):$$PATH protoc -I proto \
		--go_out=$$tmp --go_opt=paths=source_relative \
		--go-grpc_out=$$tmp --go-grpc_opt=paths=source_relative \
		$(patsubst proto/%,%,$(PROTOS)); \
	for f in $$(cd $$tmp && find . -name '*.go'); do \
		cmp -s $$tmp/$$f proto/$$f || { echo "proto/$$f is stale: run make proto"; exit 1; }; \
	done; \
	extra=$$(cd proto && find . -name '*.pb.go' | while read f; do [ -f $$tmp/$$f ] || echo $$f; done); \
	[ -z "$$extra" ] || { echo "generated files without a .proto: $$extra"; exit 1; }; \
	echo "generated code is current"

fuzz:
	./scripts/fuzz.sh

# images writes bin/images/signet-ca.tar and signet-agent.tar (image
# tarballs of static binaries, built without a container engine); load
# them with `docker load -i` or `ctr images import`. Nothing is pushed.
images:
	CGO_ENABLED=0 $(GO) build -buildvcs=auto -trimpath -ldflags='-s -w' -o $(BIN)/static/ ./cmd/signet-ca ./cmd/signet-agent
	$(GO) run ./cmd/signet-image -bin $(BIN)/static -out $(BIN)/images

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./ca/signer/ ./ca/server/ ./agent/

clean:
	rm -rf $(BIN) $(TOOLS) .signet-demo
