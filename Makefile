# inflight — the commands the README documents. `make test` is what CI runs.
SHELL := /bin/bash
GO    ?= go
CACHE := $(CURDIR)/.cache
CONTROLPLANE_BIN := $(CACHE)/controlplane/bin
export KUBEBUILDER_ASSETS := $(CONTROLPLANE_BIN)

.PHONY: test test-nested deps controlplane lint race fuzz bench build sim images

## test: everything CI checks (builds the test control plane once, cached in .cache/)
test: deps controlplane lint race test-nested
	INFLIGHT_REQUIRE_CONTROLPLANE=1 INFLIGHT_LONG=1 $(GO) test -count=1 -timeout 45m ./...

## test-nested: the nested test modules (their dependency graphs stay out of go.mod): test/helm (the Helm
## chart), test/keda (KEDA's own external-push scaler against the controller binary; compiling KEDA's
## scaler package builds every cloud SDK it carries: README "Use with KEDA" has the cost)
# go vet runs every analyzer first, so go test's own vet subset (a second pass
# over each dependency) is off.
NESTED := test/helm test/keda
test-nested: controlplane
	@for m in $(NESTED); do echo "== $$m"; (cd $$m && $(GO) vet ./... && INFLIGHT_REQUIRE_CONTROLPLANE=1 $(GO) test -vet=off -count=1 -timeout 20m ./...) || exit 1; done

## deps: the tools make test runs, from Debian's packages when missing (as root): prometheus and
## promtool (dashboard and alert checks), npm (dashboard type checks), gcc (the race detector's cgo), git
DEPS := prometheus:prometheus promtool:prometheus npm:npm gcc:gcc git:git
deps:
	@missing=$$(for d in $(DEPS); do command -v $${d%%:*} >/dev/null || echo $${d#*:}; done | sort -u | tr '\n' ' '); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "make test needs: $$missing — run 'sudo apt-get install $$missing'"; exit 1; fi; fi

## controlplane: build kube-apiserver and etcd from their Go modules into .cache/ (≈10 min cold, 0 s warm)
controlplane:
	./test/controlplane/build.sh

## lint: gofmt, go vet, staticcheck and a tidy go.mod/go.sum
# staticcheck is pinned and run with `go run pkg@version`: the same version
# everywhere, cached after the first build, and no lint-only module in the
# product's go.mod (a `tool` line would add staticcheck's dependencies to it).
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...
	@$(GO) mod tidy -diff || { echo "go.mod/go.sum are not tidy: run go mod tidy"; exit 1; }

## race: under the race detector, the hot path (mesh, extproc) and the controller: the collector, and
## scaling/kube's election loop and /scale write pool against the real API server (long tier on)
race: controlplane
	INFLIGHT_REQUIRE_CONTROLPLANE=1 INFLIGHT_LONG=1 $(GO) test -count=1 -race ./mesh/... ./extproc/... ./scaling/collect/... ./scaling/kube/...

## fuzz: each fuzz target for FUZZTIME (default 30s)
FUZZTIME ?= 30s
fuzz:
	$(GO) test -run XXX -fuzz FuzzResolve -fuzztime $(FUZZTIME) ./mesh
	$(GO) test -run XXX -fuzz FuzzLastXFCCElement -fuzztime $(FUZZTIME) ./mesh
	$(GO) test -run XXX -fuzz FuzzParseSPIFFE -fuzztime $(FUZZTIME) ./mesh
	$(GO) test -run XXX -fuzz FuzzProcess -fuzztime $(FUZZTIME) ./extproc

## build: the binaries into bin/
build:
	$(GO) build -o bin/ ./cmd/...

## images: the extproc and controller images as OCI layouts in out/images/ (no Docker); PIN=1 writes the digests into deploy/
images:
	$(GO) run ./cmd/inflight-images --out out/images --revision $$(git rev-parse HEAD 2>/dev/null || echo unknown) \
	  --source-date-epoch $$(git log -1 --format=%ct 2>/dev/null || echo 0) $(if $(PIN),--pin)

## bench: extproc against a CONTINUE-only null processor on the shipped modes of both profiles at 1, 50, 200 and 1,000 response chunks, same load, alternating rounds (≈ 8 min)
bench:
	$(GO) run ./test/loadgen -duration 5s -concurrency 64 -rounds 3 -profiles observe,control -chunks 1,50,200,1000
	$(GO) test -run XXX -bench . -benchtime 20000x ./extproc
	$(GO) test -run XXX -bench Decide ./scaling
	$(GO) test -run XXX -bench Tick -benchtime 20x ./scaling/kube

## sim: replay the traces through inflight and the baselines; writes scaling/sim/results/
sim:
	$(GO) run ./cmd/inflight-sim -readme README.md

# make demo (its own file, owned with the demo)
include test/demo/demo.mk
