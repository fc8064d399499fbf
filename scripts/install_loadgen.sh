#!/usr/bin/env bash
# The open-loop load generator of `make bench-slo` (bench/openloop.py): oha, pinned, built from
# crates.io with cargo into .bench/tools/bin. Idempotent and quiet when the pinned version is there.
#
#   bash scripts/install_loadgen.sh          # oha only (what make bench-slo needs)
#   bash scripts/install_loadgen.sh --all    # also the other candidates that
#                                            # `python -m bench.loadgen_compare` measures: vegeta, k6
#
# A machine without the toolchain gets one line saying what to install, and exit 1.
set -euo pipefail
cd "$(dirname "$0")/.."

OHA_VERSION=1.16.0       # bench/openloop.py VERSION
VEGETA_VERSION=v12.13.0  # bench/loadgen_compare.py CANDIDATES
K6_VERSION=v1.8.1

ROOT_DIR=.bench/tools
BIN=$ROOT_DIR/bin
mkdir -p "$BIN"
fail() { echo "install_loadgen: $*" >&2; exit 1; }

have_version() {  # $1 binary, $2 version text its --version must contain
    [ -x "$BIN/$1" ] && "$BIN/$1" --version 2>/dev/null | grep -qF "$2"
}

if ! have_version oha "$OHA_VERSION"; then
    command -v cargo >/dev/null 2>&1 \
        || fail "cargo not found: install Rust stable (https://rustup.rs), then rerun (oha $OHA_VERSION is built from crates.io)"
    echo "install_loadgen: building oha $OHA_VERSION with cargo (a few minutes the first time)"
    log=$ROOT_DIR/oha-install.log
    if ! cargo install --locked --quiet --force oha --version "$OHA_VERSION" --root "$ROOT_DIR" >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        fail "cargo install oha $OHA_VERSION failed (full log: $log)"
    fi
fi

if [ "${1:-}" = "--all" ]; then
    command -v go >/dev/null 2>&1 \
        || fail "go not found: install Go >= 1.22 (https://go.dev/dl/), then rerun (vegeta and k6 are Go modules)"
    abs_bin=$(cd "$BIN" && pwd)
    go_has() {  # $1 binary, $2 module, $3 version: what `go version -m` says it was built from
        [ -x "$BIN/$1" ] && go version -m "$BIN/$1" 2>/dev/null | grep -qE "^\s+mod\s+$2\s+$3(\s|$)"
    }
    if ! go_has vegeta github.com/tsenart/vegeta/v12 "$VEGETA_VERSION"; then
        echo "install_loadgen: building vegeta $VEGETA_VERSION with go install"
        GOBIN=$abs_bin go install "github.com/tsenart/vegeta/v12@$VEGETA_VERSION"
    fi
    if ! go_has k6 go.k6.io/k6 "$K6_VERSION"; then
        echo "install_loadgen: building k6 $K6_VERSION with go install (several minutes)"
        GOBIN=$abs_bin go install "go.k6.io/k6@$K6_VERSION"
    fi
fi
