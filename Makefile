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

# The heavier studies: each a bench profile whose servers are a study of the registry (make
# list-servers); SERVERS= and the other overrides as in make bench.
#   bench-ladder  the rungs from the published FastAPI stack to Candle, concurrency 32 and 10
#   bench-batch   per-request and micro-batching servers, concurrency 1/8/32/128 (about 55 min)
#   bench-python  the Python servers on every interpreter `make pythons` installed
#   bench-slo     open loop (oha at fixed rates): latency against offered load and each server's
#                 capacity under SLO_P99_MS (default 25); results/<UTC>/slo.md
.PHONY: bench-ladder bench-batch bench-python bench-slo pythons
bench-slo: seed model build
	@$(PY) -m bench.slo

# The open-loop candidates side by side against a trivial server: vegeta, oha, k6 (these two need Go).
.PHONY: loadgen-compare
loadgen-compare: build
	@bash scripts/install_loadgen.sh --all
	@$(PY) -m bench.loadgen_compare

bench-ladder: seed model build
	@$(PY) -m bench --profile ladder

bench-batch: seed model build
	@$(PY) -m bench --profile batch

bench-python: seed model build pythons
	@$(PY) -m bench --profile python $(if $(PYTHONS),--servers $$($(PY) -m rankbench.pythons servers))

# Other CPython versions: PYTHONS=3.12,3.13 (default: the project's own, .venv's) gives each version
# .venvs/py<version>/ with what the Python servers import (PYTHON_TORCH=1: torch too) and py-candle's
# extension; the registry then has their @<version> variants. A version not installed is skipped.
pythons: setup
	@$(PY) -m rankbench.pythons install

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
