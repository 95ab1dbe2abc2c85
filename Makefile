# Guardian. `make up` runs the stack on http://localhost:8080, `make test`
# runs every test against real servers. Both install what is missing.
GO      ?= go
# The Go that `make up` and `make test` install when the machine has none
# new enough (deploy/stack/gocheck.sh): every target uses it once it is there.
GO_TOOLCHAIN := $(shell sed -n 's/^GO_TOOLCHAIN=//p' deploy/stack/gocheck.sh)
GO_HOME      := $(or $(GUARDIAN_GO_HOME),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/guardian/go$(GO_TOOLCHAIN))
ifneq ($(wildcard $(GO_HOME)/bin/go),)
export PATH := $(GO_HOME)/bin:$(PATH)
endif
BIN     := bin
export CGO_ENABLED ?= 0

.PHONY: all build up down clean test test-race test-faults fmt vet bench bench-edge bench-functions bench-compare bench-flows bench-backup fuzz release release-verify

all: build

## build: the custom Caddy, guardianctl and every function binary into bin/
build:
	$(GO) build -o $(BIN)/caddy ./cmd/caddy
	$(GO) build -o $(BIN)/guardianctl ./cmd/guardianctl
	$(GO) build -o $(BIN)/functions/ ./functions/...

## up: install what is missing, start the whole stack, print the URL and demo login
up:
	deploy/stack/up.sh

## down: stop what `make up` started, keep the data
down:
	deploy/stack/down.sh

## clean: stop everything and remove the data and binaries
clean:
	deploy/stack/down.sh clean
	rm -rf $(BIN)

## test: go vet and go test ./... against private PostgreSQL, Redis and ClickHouse
test:
	deploy/stack/test.sh

## test-race: the same tests under Go's race detector (cgo and gcc; ~20 min on 2 CPUs; not part of make test)
test-race:
	@command -v gcc >/dev/null || { echo "make test-race needs gcc (apt-get install gcc)" >&2; exit 1; }
	CGO_ENABLED=1 deploy/stack/test.sh -race -p 1 -timeout 40m ./...

## fuzz: every go test -fuzz target for GUARDIAN_FUZZTIME each (default 3s; make test runs them for 1s)
fuzz:
	deploy/stack/fuzz.sh

## test-faults: the fault suite (faults/): Redis, PostgreSQL and ClickHouse stopped or slowed, a function killed, the audit spool filled, all under load; one summary line per scenario
test-faults:
	deploy/stack/deps.sh
	$(GO) test -count=1 -timeout 10m -v ./faults/

fmt:
	gofmt -w $$(git ls-files '*.go')

vet:
	$(GO) vet ./...

## bench: the edge beside bare Caddy (bench-edge); ~12 min on 2 cores. See BENCH.md
bench: bench-edge

## bench-edge: private servers, five edge configurations vs bare Caddy, closed and open loop, micro-benchmarks; updates BENCH.md; flags via BENCH_ARGS
bench-edge:
	deploy/stack/deps.sh
	$(GO) run ./bench/edge -md BENCH.md $(BENCH_ARGS)

## bench-functions: the function runtime against a bare reverse_proxy, and its cold start; flags via BENCH_ARGS
bench-functions:
	$(GO) run ./bench/functions $(BENCH_ARGS)

## bench-flows: whole flows through the full edge: ingest snapshots/s, /healthz p99 during a login flood; flags via BENCH_ARGS (e.g. -flows.d=20s)
bench-flows:
	deploy/stack/deps.sh
	$(GO) test -run '^$$' -bench . -benchtime 1x ./bench/flows/ $(BENCH_ARGS)

## bench-backup: ClickHouse backup pipeline vs curl|zstd|age + sftp put by hand, on private servers; flags via BENCH_ARGS (-mib 1024 -reps 3)
bench-backup:
	deploy/stack/deps.sh
	$(GO) run ./bench/backup $(BENCH_ARGS)

## bench-compare: micro-benchmarks of OLD (default HEAD~1) and NEW (default the working tree), 6 runs each, through benchstat
bench-compare:
	deploy/stack/deps.sh
	bench/compare.sh "$(or $(OLD),HEAD~1)" "$(NEW)"

## release: VERSION=x.y.z: reproducible linux/amd64+arm64 binaries, SBOM, signed SHA256SUMS into dist/VERSION (GUARDIAN_RELEASE_KEY, GUARDIAN_VULNCHECK=skip). See deploy/release/
release:
	GO="$(GO)" deploy/release/release.sh "$(VERSION)"

## release-verify: VERSION=x.y.z ALLOWED_SIGNERS=your copy of the release key: check dist/VERSION's signature and every artefact's SHA-256
release-verify:
	@test -n "$(VERSION)" || { echo "usage: make release-verify VERSION=x.y.z ALLOWED_SIGNERS=FILE" >&2; exit 2; }
	deploy/release/verify.sh "dist/$(VERSION)" $(ALLOWED_SIGNERS)
