# p2pserver — build, run and test.
GO ?= go
BIN := bin/p2pserver
STATICCHECK_VERSION := v0.7.0

.PHONY: all help build run demo test test-postgres postgres-check lint bench spec clean fuzz

all: build

## help: the targets and what each does.
help:
	@sed -n -e 's/^## \([a-z-]*:\)/\1/p' -e 's/^## /    /p' $(MAKEFILE_LIST)

## build: the server and the development tools (p2p-devidp, p2p-mailsink, p2p-demo) into bin/.
build:
	$(GO) build -o bin/ ./cmd/p2pserver ./cmd/p2p-devidp ./cmd/p2p-mailsink ./cmd/p2p-demo

## run: build and start the server on the embedded default (bbolt file under data/);
## ARGS passes flags to it: make run ARGS='-addr 127.0.0.1:9090 -log-level debug'.
ARGS ?=
run: build
	mkdir -p data
	./$(BIN) $(ARGS)

## demo: the whole payer-to-payer exchange on this machine, each step printed as its HTTP call (README, "Your first exchange").
demo: build
	./bin/p2p-demo -bin bin -synthea testdata/synthea

# STORE_PKGS: the FHIR packages and cmd/p2pserver whose code or tests use
# the store (fhir/store or a package under it), which make test runs on
# PostgreSQL too.
STORE_PKGS = $(shell $(GO) list -f '{{.ImportPath}} {{join .Deps " "}} {{join .TestImports " "}} {{join .XTestImports " "}}' ./fhir/... ./cmd/p2pserver/ | awk '{for (i = 1; i <= NF; i++) if ($$i ~ /^github.com\/p2pserver\/p2pserver\/fhir\/store($$|\/)/) { print $$1; next }}')

## test: every test, with the race detector, on bbolt, and on PostgreSQL
## the store's contract suite (its tests run on both backends), the FHIR
## packages and the end-to-end tests of cmd/p2pserver. The tests start a
## private PostgreSQL server: Debian's postgresql package must be installed.
test: postgres-check
	$(GO) vet ./...
	@# The same FHIR and end-to-end tests on PostgreSQL run beside the race
	@# pass (which keeps the cores busy only part of the time), without the
	@# race detector: it runs over that code in the race pass (and over the
	@# PostgreSQL backend's own tests, which run on both backends there).
	@# Their output follows the race pass's.
	@# Only the packages whose code or tests use the store run again.
	@log=$$(mktemp); \
	P2P_TEST_DB=postgres $(GO) test -count=1 -timeout 15m $(STORE_PKGS) >$$log 2>&1 & pg=$$!; \
	$(GO) test -race -count=1 -timeout 15m ./...; race=$$?; \
	wait $$pg; pgrc=$$?; \
	echo "== P2P_TEST_DB=postgres go test $(STORE_PKGS)"; cat $$log; rm -f $$log; \
	[ $$race -eq 0 ] && [ $$pgrc -eq 0 ]

## test-postgres: every test on PostgreSQL.
test-postgres: postgres-check
	P2P_TEST_DB=postgres $(GO) test -race -count=1 -timeout 20m ./...

## postgres-check: PostgreSQL's server programs are installed (where internal/pgtest looks for them).
postgres-check:
	@if [ -n "$$P2P_PG_BIN" ]; then test -x "$$P2P_PG_BIN/initdb" || { echo "P2P_PG_BIN=$$P2P_PG_BIN holds no initdb" >&2; exit 1; }; \
	elif ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		echo "the tests need PostgreSQL's server programs (initdb, postgres): apt-get install postgresql (or set P2P_PG_BIN to their folder)" >&2; exit 1; fi

## fuzz: the non-interference proof with random requests for FUZZTIME
## (default 5m): no answer to one member may depend on another's data.
FUZZTIME ?= 5m
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzNonInterference$$' -fuzztime $(FUZZTIME) ./cmd/p2pserver/

## lint: gofmt, go vet and staticcheck.
lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); exit 1)
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

## bench: Go benchmarks (store, batch ingest of 20,000+ resources on bbolt and on PostgreSQL, Bulk Data export of 50,000 and 200,000 resources, a bulk exchange of 200,800 resources between two p2pserver processes, notifications), then a load run against a live server growing to each size of SCALE (figures side by side, with the ratio; loading stops after LOAD_TIME_LIMIT and measures at the size reached), on bbolt, then (when PostgreSQL is installed) the load run at COMPARE_RESOURCES on bbolt, on PostgreSQL with one process and on PostgreSQL with two processes sharing the database, side by side (p2pload -compare), then durable creates at 64 clients (50,000 resources), then what expensive requests cost the others (p2pload -limits).
SCALE ?= 100000,1000000
LOAD_TIME_LIMIT ?= 20m
COMPARE_RESOURCES ?= 100000
bench: build
	$(GO) test -run '^$$' -bench . -benchmem ./fhir/store/ ./fhir/fhirjson/
	$(GO) test -run '^$$' -bench Ingest -benchtime 1x ./batch/
	@if command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		echo "== the same batch ingest into a target on PostgreSQL (durable)"; \
		P2P_TEST_DB=postgres P2P_PG_DURABLE=1 $(GO) test -run '^$$' -bench Ingest -benchtime 1x ./batch/; fi
	$(GO) test -run '^$$' -bench Export -benchtime 1x ./bulk/
	$(GO) test -run '^$$' -bench BulkExchange -benchtime 1x -timeout 30m ./cmd/p2pserver/
	$(GO) test -run '^$$' -bench . -benchtime 300x ./notify/
	$(GO) run ./cmd/p2pload -server $(BIN) -scale $(SCALE) -time-limit $(LOAD_TIME_LIMIT)
	@if command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		$(GO) run ./cmd/p2pload -server $(BIN) -compare -resources $(COMPARE_RESOURCES) -time-limit $(LOAD_TIME_LIMIT); \
	else echo "PostgreSQL's server programs are not installed: the load runs on PostgreSQL are left out"; fi
	$(GO) run ./cmd/p2pload -server $(BIN) -creates -c 64 -resources 50000
	$(GO) run ./cmd/p2pload -server $(BIN) -limits -d 10s

## spec: regenerate the embedded FHIR R4 definitions from testdata/fhir-r4.
spec:
	$(GO) run ./fhir/spec/gen -in testdata/fhir-r4 -out fhir/spec/data

## clean: remove bin/ (the databases under data/ stay).
clean:
	rm -rf bin
