#!/usr/bin/env bash
# make setup: the tools rankbench needs, then the project's venv. Idempotent and quiet when all is there.
# On Debian as root, missing system packages are installed with apt-get; elsewhere it stops with one
# line naming what to install.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "setup: $*" >&2; exit 1; }

have_pg_server() {
    local bindir
    if command -v pg_config >/dev/null 2>&1; then
        bindir=$(pg_config --bindir 2>/dev/null || true)
        [ -x "$bindir/pg_ctl" ] && [ -x "$bindir/initdb" ] && [ -x "$bindir/pgbench" ] && return 0
    fi
    for bindir in /usr/lib/postgresql/*/bin; do
        [ -x "$bindir/pg_ctl" ] && [ -x "$bindir/initdb" ] && [ -x "$bindir/pgbench" ] && return 0
    done
    return 1
}

missing=()
have_pg_server || missing+=(postgresql)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v perf >/dev/null 2>&1 || missing+=(linux-perf)      # make bench-profile
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing ${missing[*]} with apt-get"
        # The project runs its own private cluster: stop Debian from creating and starting a system one.
        mkdir -p /etc/postgresql-common
        [ -f /etc/postgresql-common/createcluster.conf ] || \
            echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq "${missing[@]}" >/dev/null
        have_pg_server || fail "PostgreSQL server binaries still missing after apt-get install postgresql"
    else
        fail "missing ${missing[*]}: install them (Debian/Ubuntu: apt-get install -y ${missing[*]}) and rerun make setup"
    fi
fi
command -v cargo >/dev/null 2>&1 || fail "cargo not found: install Rust stable (https://rustup.rs) and rerun make setup"
# Flame graphs of make bench-profile (a pinned release from crates.io).
command -v inferno-flamegraph >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/inferno-flamegraph" ] || {
    echo "setup: installing inferno (flame graphs)"
    cargo install --quiet --locked inferno --version 0.12.8 || fail "cargo install inferno failed"; }
# The open-loop load generator of make bench-slo (oha, pinned, into .bench/tools).
bash scripts/install_loadgen.sh

PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null \
    || fail "Python >= 3.10 is required (found: $("$PYTHON" --version 2>&1))"

# The venv, reinstalled only when pyproject.toml changed since the last install.
stamp=.venv/.rankbench-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$PYTHON" -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup: installing the project into .venv (first time: torch is large, this takes minutes)"
    log=.venv/pip-install.log
    if ! { .venv/bin/python -m pip install --upgrade pip && .venv/bin/python -m pip install -e '.[dev]'; } >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        fail "pip install failed (full log: $log)"
    fi
    echo "$want" > "$stamp"
fi
