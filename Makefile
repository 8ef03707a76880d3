# rhizome — make targets are the interface; `make help` (the default goal) lists them. Each prints
# what it does and fails loudly.
#
# Where things go: tools built once from a pinned version (the Kubernetes binaries, staticcheck, the
# test VM's kernel, the reference CNI plugins) go into the per-user cache TOOLS_CACHE, one directory
# per tool and version, shared by every checkout on the machine (internal/toolcache finds them for
# the tests and the lab). What this checkout builds from its own source stays in it: bin/, and
# .cache/ for vmexec, the lab's state, the benchmark, image and lab-kernel builds.

SHELL       := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
GO          ?= go
CACHE       := $(CURDIR)/.cache
BIN         := $(CURDIR)/bin
BINARIES    := rhizome-node rhizome-cni rhizome-ipam rhizomectl
# The per-user tools cache; RHIZOME_TOOLS_CACHE in the environment moves it for make and go test alike.
TOOLS_CACHE ?= $(or $(RHIZOME_TOOLS_CACHE),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/rhizome)
export RHIZOME_TOOLS_CACHE := $(TOOLS_CACHE)
# The version stamped into the binaries (main.version): `rhizome-node --version`, `rhizomectl version`.
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
GOVERSION   := $(shell $(GO) env GOVERSION)
STATICCHECK_VERSION := v0.8.2
# Keyed by the Go version too: a staticcheck built by an older Go cannot load newer code.
STATICCHECK := $(TOOLS_CACHE)/staticcheck-$(STATICCHECK_VERSION)-$(GOVERSION)/staticcheck
# -race needs cgo; everything else builds static.
TEST_FLAGS  ?= -race -count=1 -timeout 25m
export GOFLAGS := -buildvcs=false

.PHONY: help all build clean version test test-unit test-short test-deps test-kernel kernel-deps kube-tools bgp-deps lint fuzz bench bench-ipam bench-cni bench-dataplane bench-bgp bench-agent bench-lab lab lab-up lab-down lab-bin lab-kernel lab-kernel-bin image

## help: this list: every target with the first line of its description (the default goal)
help:
	@echo "usage: make TARGET [VAR=value ...]   (tools cache: $(TOOLS_CACHE); version: $(VERSION))"
	@awk '{ doc = /^## / } doc && !prev && /^## [a-z][a-z0-9 \/-]*: / { sub(/^## /, ""); i = index($$0, ": "); \
	  printf "  %-20s %s\n", substr($$0, 1, i - 1), substr($$0, i + 2) } { prev = doc }' $(firstword $(MAKEFILE_LIST))

## all: the same as build
all: build

## build: all binaries into bin/ (static, no cgo), stamped with VERSION (default: git describe)
build:
	@echo "==> building $(BINARIES) $(VERSION) into $(BIN)"
	@mkdir -p $(BIN)
	@for b in $(BINARIES); do \
	  CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-X main.version=$(VERSION)' -o $(BIN)/$$b ./cmd/$$b; done

## version: the version make build stamps into the binaries
version:
	@echo $(VERSION)

## test: everything CI runs, installing what it needs first (root; apt, kube once into the tools cache)
## Set-up (test-deps), the IPIP tests under a qemu-booted kernel, every test with -race, then the
## IPAM fault runs at full length without -race (under it they run an eighth).
test: test-deps test-kernel
	@echo "==> go test $(TEST_FLAGS) ./..."
	$(GO) test $(TEST_FLAGS) ./...
	@echo "==> IPAM fault and linearizability runs, full length (20,000 operations each)"
	$(GO) test -count=1 -timeout 15m -run '^TestChaos' -v ./ipam/ | grep -E '^(---|ok|FAIL|PASS)|chaos_'

## test-unit: quick iteration: no root, apt, VM or -race; -short, no TestPrivileged/TestKernel
## Every package; tests that need what test-deps installs skip with the reason. Measured 1m40s
## warm on the shared 2-core machine (load 5-7; more while it is busy).
test-unit:
	@echo "==> go test -short, without TestPrivileged and TestKernel"
	$(GO) test -count=1 -short -skip '^(TestPrivileged|TestKernel)' ./...

## test-short: every test -short keeps, root ones too (no -race, cached results allowed)
test-short:
	$(GO) test -short ./...

## test-deps: what the tests need on a fresh machine
test-deps:
	@echo "==> test dependencies: Go modules"
	@$(GO) mod download

## test-kernel: the TestKernel tests (IPIP) under a qemu-booted Debian kernel (part of test)
## The packages are KERNEL_TEST_PKGS and the lab; this machine's kernel lacks IPIP. See integration/vm.
KERNEL_TEST_PKGS  := ./integration/kernel/ ./dataplane/
KERNEL_TEST_FLAGS ?= -count=1 -timeout 10m
KERNEL_PACKAGE    ?= linux-image-cloud-amd64
VMEXEC            := $(CACHE)/vmexec/vmexec
test-kernel: kernel-deps lab-kernel-bin
	@echo "==> go test -exec vmexec -run '^TestKernel' $(KERNEL_TEST_PKGS)"
	CGO_ENABLED=0 $(GO) test $(KERNEL_TEST_FLAGS) -run '^TestKernel' \
	  -exec "$(VMEXEC) run -fail-on-skip -kernel-dir $$(cat $(CACHE)/vmexec/kernel-dir)" $(KERNEL_TEST_PKGS)
	@echo "==> go test -exec vmexec -run '^TestKernel' ./integration/lab/ (the lab in a 2-CPU guest)"
	RHIZOME_LAB_BIN_DIR=$(LAB_KERNEL_BIN) CGO_ENABLED=0 $(GO) test $(KERNEL_TEST_FLAGS) -run '^TestKernel' \
	  -exec "$(VMEXEC) run -fail-on-skip $(LAB_KERNEL_VM)" ./integration/lab/

## kernel-deps: qemu, busybox and kmod from apt; the Debian 12 cloud kernel into the tools cache
## The kernel is unpacked (never installed) into $(TOOLS_CACHE)/kernel-<release>/ with a base
## initramfs; this checkout's vmexec goes into .cache/vmexec/ with the path of the kernel it uses.
kernel-deps:
	@need=; for p in qemu-system-x86 busybox-static kmod; do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || need="$$need $$p"; \
	done; \
	if [ -n "$$need" ]; then \
	  echo "==> apt-get install$$need"; apt-get update -q; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$need; \
	fi
	@echo "==> building vmexec into $(dir $(VMEXEC))"
	@CGO_ENABLED=0 $(GO) build -trimpath -o $(VMEXEC) ./integration/vmexec
	@echo "==> kernel $(KERNEL_PACKAGE) and base initramfs"
	@$(VMEXEC) prepare -cache $(TOOLS_CACHE) -kernel-package $(KERNEL_PACKAGE) > $(CACHE)/vmexec/kernel-dir
	@echo "    $$(cat $(CACHE)/vmexec/kernel-dir)"

## kube-tools: kube-apiserver, controller manager, scheduler, kubectl, once into the tools cache
## For the Kubernetes tests and `make lab K8S=1`: built from the module proxy into
## $(TOOLS_CACHE)/kube-$(KUBE_VERSION)/ (~13 min cold on 2 cores; every later checkout finds them
## there). Under `make test` their absence fails the tests. KUBE_VERSION is toolcache.KubeVersion.
KUBE_VERSION := v1.37.2
KUBE_BIN     := $(TOOLS_CACHE)/kube-$(KUBE_VERSION)
export RHIZOME_KUBE_BIN := $(KUBE_BIN)
kube-tools:
	@KUBE_VERSION=$(KUBE_VERSION) GO=$(GO) hack/build-kube.sh $(TOOLS_CACHE)
test-deps: kube-tools
test: export RHIZOME_REQUIRE_KUBE := 1

## lint: gofmt, go vet, staticcheck (pinned; built once into the tools cache)
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

## fuzz: run each fuzzer for FUZZTIME (default 30s)
## Their seed corpora in testdata/ run in every `make test`.
FUZZTIME ?= 30s
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "==> fuzz $$pkg $$f for $(FUZZTIME)"; \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done

## bench: every benchmark report, each with its baseline measured in the same run
bench: bench-ipam bench-cni bench-dataplane bench-bgp bench-agent bench-lab

## bench-ipam: the IPAM report next to host-local
## The report is a test (TestReport -report) so it can start embedded etcd; it runs from a
## compiled test binary so only the table reaches stdout.
bench-ipam:
	@echo "==> building the IPAM benchmark (integration/ipambench) into $(CACHE)/bench"
	@mkdir -p $(CACHE)/bench
	@$(GO) test -c -o $(CACHE)/bench/ipambench.test ./integration/ipambench
	@echo "==> IPAM benchmark report (about 2 minutes)"
	@cd integration/ipambench && $(CACHE)/bench/ipambench.test -test.run '^TestReport$$' -test.count 1 -test.timeout 15m -report

## bench-lab: a 10-node lab up, then 1,000 pods through libcni (10 nodes at once), with pods/s (root)
bench-lab:
	@echo "==> lab: 10 nodes, 1,000 pods through libcni"
	$(GO) test -run '^$$' -bench LabPods -benchtime 1x ./integration/lab

## bench-dataplane: 10,000 routes installed and resynced by the reconciler, next to ip -batch (root)
bench-dataplane:
	@echo "==> dataplane: route programming next to ip -batch, same run"
	$(GO) test -run '^$$' -bench RouteProgramming -benchtime 1x ./dataplane/dpbench

## bench-bgp: convergence behind 2 rhizome route reflectors next to BIRD; speaker RSS (root)
## Both reflector kinds in the same run; the RSS of a speaker holding 10,000 prefixes from 1,000 nodes.
bench-bgp: bgp-deps
	@echo "==> BGP: convergence via rhizome route reflectors next to BIRD, speaker memory"
	$(GO) test -run '^$$' -bench 'Convergence|SpeakerMemory' -benchtime 1x -count=1 ./bgp/

## bench-agent: rhizome-node's resident memory idle and with 250 local pods (root)
bench-agent:
	@echo "==> agent: rhizome-node RSS with 250 local pods"
	$(GO) test -run '^$$' -bench AgentRSS -benchtime 1x -count=1 ./integration/agent/ | grep -E 'RSS|^ok|FAIL'

## bench-cni: CNI ADD/DEL through libcni, 200 pods, rhizome-cni next to ptp+host-local (root)
bench-cni:
	@echo "==> CNI ADD/DEL end to end, rhizome-cni next to the reference ptp + host-local"
	$(GO) test -run '^$$' -bench CNIAddDel -benchtime=1x -count=1 -v ./integration/cnibench/

## clean: remove bin/ (not .cache/, which may hold a running lab's state, nor the tools cache)
clean:
	rm -rf $(BIN)

## lab: seed 000's cluster in network namespaces: up, report, TCP between every pod pair, PASS/FAIL
## 4 nodes in 2 racks, a router that is the route reflector, 5 pods, the real binaries; then down.
## KEEP=1 leaves it up (then make lab-down). K8S=1 runs it on Kubernetes (kube-apiserver, controller
## manager, scheduler, a lab kubelet per node; kubectl session). LAB_FLAGS adds flags (--prefix P
## --state-dir D for a second lab). Needs root and iproute2; builds what it needs.
LAB_K8S_FLAGS = $(if $(K8S),--kubernetes --kube-bin-dir $(KUBE_BIN))
lab: lab-bin $(if $(K8S),kube-tools)
	@$(BIN)/rhizome-lab run --bin-dir $(BIN) $(LAB_K8S_FLAGS) $(if $(KEEP),--keep) $(LAB_FLAGS)

## lab-up / lab-down: bring the lab up and leave it; take it down (its processes by PID, its namespaces)
lab-up: lab-bin $(if $(K8S),kube-tools)
	@$(BIN)/rhizome-lab up --bin-dir $(BIN) $(LAB_K8S_FLAGS) $(LAB_FLAGS)

lab-down:
	@$(BIN)/rhizome-lab down --bin-dir $(BIN) $(LAB_FLAGS)

## lab-bin: make build plus rhizome-lab into bin/
lab-bin: build
	@CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/rhizome-lab ./integration/lab/cmd/rhizome-lab

## lab-kernel: `make lab` with ipipMode: Always inside the qemu-booted kernel of test-kernel
## (this machine's has no ipip): the same report, tunl0 routes, PASS/FAIL. About 1.5 min on 2 cores (TCG).
## The guest gets the lab's binaries (static, stripped; -trimpath like every other build of the
## commands, so make test compiles their packages once) and the host's ip with its libraries.
LAB_KERNEL_BIN := $(CACHE)/lab-kernel/bin
LAB_KERNEL_VM   = -cpus 2 -memory 2G -host-programs ip -files $(LAB_KERNEL_BIN) -kernel-dir $$(cat $(CACHE)/vmexec/kernel-dir)
lab-kernel: kernel-deps lab-kernel-bin
	@echo "==> rhizome-lab run in the qemu-booted kernel (2 CPUs, no KVM)"
	@$(VMEXEC) run $(LAB_KERNEL_VM) -timeout 10m $(LAB_KERNEL_BIN)/rhizome-lab run --bin-dir $(LAB_KERNEL_BIN) --state-dir /tmp/rhizome-lab

## lab-kernel-bin: the lab's binaries for the guest of lab-kernel and test-kernel
lab-kernel-bin:
	@echo "==> building the lab's binaries for the guest into $(LAB_KERNEL_BIN)"
	@mkdir -p $(LAB_KERNEL_BIN)
	@for b in rhizome-node rhizome-cni rhizomectl; do \
	  CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w -X main.version=$(VERSION)' -o $(LAB_KERNEL_BIN)/$$b ./cmd/$$b; done
	@CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o $(LAB_KERNEL_BIN)/rhizome-lab ./integration/lab/cmd/rhizome-lab

## bgp-deps: BIRD 2 and FRR for the BGP interop tests (apt-get install when missing)
## Under make test and bench-bgp the interop tests fail, not skip, when they are missing.
test-deps: bgp-deps
test bench-bgp: export RHIZOME_REQUIRE_BGP_DAEMONS := 1
bgp-deps:
	@if dpkg-query -W -f='$${Status}\n' bird2 frr 2>/dev/null | grep -c '^install ok installed' | grep -qx 2; then \
	  echo "==> bgp-deps: bird2 and frr are installed"; \
	else \
	  echo "==> bgp-deps: apt-get install bird2 frr"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends bird2 frr; \
	fi

## image: the container image as bin/rhizome-image.tar, without docker (hack/image)
## `docker save` format (`docker load -i` or `ctr -n k8s.io image import`): the four static
## binaries, built reproducibly, in one layer on an empty base. Same commit and Go version, same digest.
IMAGE_VERSION ?= $(VERSION)
IMAGE_TAG     ?= rhizome/rhizome-node:$(IMAGE_VERSION)
IMAGE_BIN     := $(CACHE)/image/bin
image:
	@echo "==> building $(BINARIES) reproducibly into $(IMAGE_BIN)"
	@rm -rf $(IMAGE_BIN) && mkdir -p $(IMAGE_BIN) $(BIN)
	@for b in $(BINARIES); do CGO_ENABLED=0 GOOS=linux GOARCH=amd64 $(GO) build -trimpath -buildvcs=false \
	  -ldflags '-X main.version=$(IMAGE_VERSION)' -o $(IMAGE_BIN)/$$b ./cmd/$$b; done
	@echo "==> image $(IMAGE_TAG) into bin/rhizome-image.tar"
	@$(GO) run ./hack/image --bin-dir $(IMAGE_BIN) --out $(BIN)/rhizome-image.tar --tag $(IMAGE_TAG)
