# rhizome — make targets are the interface. Each prints what it does and
# fails loudly. Tools are built once into .cache/ keyed by version.

SHELL       := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
GO          ?= go
CACHE       := $(CURDIR)/.cache
BIN         := $(CURDIR)/bin
BINARIES    := rhizomectl
STATICCHECK_VERSION := v0.8.2
STATICCHECK := $(CACHE)/staticcheck-$(STATICCHECK_VERSION)/staticcheck
# -race needs cgo; everything else builds static.
TEST_FLAGS  ?= -race -count=1 -timeout 25m
export GOFLAGS := -buildvcs=false

.PHONY: all build test test-short lint fuzz bench clean

all: build

## build: all binaries into bin/ (static, no cgo)
build:
	@echo "==> building $(BINARIES) into bin/"
	@mkdir -p $(BIN)
	@for b in $(BINARIES); do CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/$$b ./cmd/$$b; done

## test: everything CI runs — set-up, then every test with -race
test: test-deps
	@echo "==> go test $(TEST_FLAGS) ./..."
	$(GO) test $(TEST_FLAGS) ./...

## test-short: quick iteration (no -race, cached results allowed)
test-short:
	$(GO) test -short ./...

## test-deps: what the tests need on a fresh machine
test-deps:
	@echo "==> test dependencies: Go modules"
	@$(GO) mod download

## kube-tools: kube-apiserver and kubectl for the Kubernetes tests, built once from the module proxy
## into .cache/kube-$(KUBE_VERSION)/ (~8 min cold); under `make test` their absence fails the tests
KUBE_VERSION := v1.37.2
.PHONY: kube-tools
kube-tools:
	@KUBE_VERSION=$(KUBE_VERSION) GO=$(GO) hack/build-kube.sh $(CACHE)
test-deps: kube-tools
test: export RHIZOME_REQUIRE_KUBE := 1

## lint: gofmt, go vet, staticcheck (pinned)
lint: $(STATICCHECK)
	@echo "==> gofmt"
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	@echo "==> go vet"
	@$(GO) vet ./...
	@echo "==> staticcheck $(STATICCHECK_VERSION)"
	@$(STATICCHECK) ./...

$(STATICCHECK):
	@echo "==> building staticcheck $(STATICCHECK_VERSION) into $(@D)"
	@mkdir -p $(@D)
	@GOBIN=$(@D) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

## fuzz: run each fuzzer for FUZZTIME (default 30s); corpora in testdata/ run in every `make test`
FUZZTIME ?= 30s
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "==> fuzz $$pkg $$f for $(FUZZTIME)"; \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done

## bench: benchmarks with their baselines, printed as a table (filled by the IPAM, CNI, dataplane and BGP work)
bench:
	@echo "==> no benchmarks yet: the IPAM, CNI, dataplane and BGP issues add them"

clean:
	rm -rf $(BIN)
