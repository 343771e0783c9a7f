# make demo — included from the top-level Makefile (include test/demo/demo.mk).
# Builds what it needs (the test control plane through test/controlplane/build.sh,
# cached in .cache/; the binaries into .cache/demo/bin) and runs the end-to-end
# demo. Flags: make demo DEMO_FLAGS="-speed 40 -minutes 20 -prometheus".
DEMO_FLAGS ?=

.PHONY: demo
## demo: the whole loop on this machine (apiserver+etcd, 2 extprocs, 2 controllers, a simulated GPU fleet, the Azure LLM trace) — a few minutes
demo:
	$(GO) build -o .cache/demo/bin/demo ./test/demo
	.cache/demo/bin/demo $(DEMO_FLAGS)
