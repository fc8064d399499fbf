# rankbench: every target is a thin call into one entry point (scripts/, python -m ..., cargo).
# The two commands a user needs: `make bench` (the whole study) and `make test`.

PY      := .venv/bin/python
CARGO   ?= cargo
RESULTS ?= results/latest

export SCALE ?= 1

.PHONY: setup db-up db-down db-url db-status seed model test test-py clean-results

setup:
	@bash scripts/setup.sh

db-up: setup
	@$(PY) -m rankbench.pg up

db-down:
	@if [ -x $(PY) ]; then $(PY) -m rankbench.pg down; else echo "cluster not running (no .venv)"; fi

db-url:
	@$(PY) -m rankbench.pg url

db-status:
	@$(PY) -m rankbench.pg status

seed: db-up
	@$(PY) -m seed.data $(if $(FORCE),--force)

model: setup
	@$(PY) -m seed.model $(if $(FORCE),--force)

# The tests start and stop what they need; these prerequisites only make a first run from a clean
# clone take the same path a user takes.
test: seed model build
	@$(PY) -m pytest $(PYTEST_ARGS)
	@$(PY) -m bench.fixture
	@$(CARGO) test --quiet --manifest-path candle_server/Cargo.toml

# The Rust tests compare the server's answers with the plain-numpy reference's (artifacts/rank_fixture.json).
.PHONY: test-rust rank-fixture
rank-fixture: seed model
	@$(PY) -m bench.fixture

test-rust: rank-fixture
	@$(CARGO) test --quiet --manifest-path candle_server/Cargo.toml

# Reports from a results folder (default: the newest run).
.PHONY: report compare
report:
	@$(PY) -m analysis report $(RESULTS)

compare:
	@test -n "$(A)" -a -n "$(B)" || { echo "usage: make compare A=results/<old> B=results/<new>" >&2; exit 2; }
	@$(PY) -m analysis compare $(A) $(B)

# The Rust server and the py-candle extension (candle_server/pyext, installed into .venv), both with
# the release profile of their Cargo.toml (opt-level 3, fat LTO, one codegen unit).
.PHONY: build
build: setup
	@$(CARGO) build --release --quiet --manifest-path candle_server/Cargo.toml
	@bash candle_server/pyext/install.sh

# The study. Overrides: SERVERS= ITEMS= CONCURRENCY= DURATION= WARMUP= REPEATS= WORKERS= POOL= PIN=
# (also TOP_K= WRK_THREADS= SEED= CEILING_CLIENTS=pool|concurrency); make passes them as env vars.
.PHONY: bench bench-quick bench-sweep
bench: seed model build
	@$(PY) -m bench --profile default

bench-quick: seed model build
	@$(PY) -m bench --profile quick

bench-sweep: seed model build
	@$(PY) -m bench --profile sweep

# Where each server's CPU goes: perf (+ py-spy on CPython < 3.12) under the bench's wrk load,
# attributed to named categories; results/<UTC>-profile/. SERVERS= ITEMS= CONCURRENCY= DURATION=
# WARMUP= REPEATS= WORKERS= POOL= PIN= as in the bench.
.PHONY: bench-profile
bench-profile: seed model build
	@$(PY) -m bench.profile

# Fault suite with issue 7's full figures; rewrites docs/robustness.md (RANKBENCH_SERVERS selects).
.PHONY: faults soak
faults: seed model build
	@$(PY) -m tests.faults.report --profile full

# 5 minutes at 80% of each server's peak; results/<UTC>-soak/ (not in CI).
soak: seed model build
	@$(PY) -m tests.faults.soak

# One server in the foreground on its registry port: `make serve SERVER=py-onnx` (`make list-servers`
# names them). Ctrl-C stops it. WORKERS= and POOL= as in the bench.
WORKERS ?= 1
POOL ?= 8
.PHONY: serve list-servers
serve: db-up model
	@test -n "$(SERVER)" || { echo "usage: make serve SERVER=<name> (make list-servers names them)" >&2; exit 2; }
	@$(PY) -m rankbench.servers serve $(SERVER) --workers $(WORKERS) --pool-size $(POOL)

list-servers: setup
	@$(PY) -m rankbench.servers list
