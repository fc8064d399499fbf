#!/usr/bin/env bash
# Builds the rankbench_candle extension (py-candle's runtime) in release mode and installs it into
# a venv (default: the project's). Called by `make setup`/`make build`; safe to call again: it
# returns at once when the installed extension was built from the current sources (a fingerprint of
# both crates' sources and manifests, the workspace's one lock file, the toolchain and the Python
# interpreter).
#
#   candle_server/pyext/install.sh [--force] [VENV]
#
# VENV: the venv to install into, whose python the extension is built for (`make pythons` passes
# .venvs/py<version>); default .venv.
# Environment: PYTHON (default VENV/bin/python), CARGO_TARGET_DIR (default candle_server/target,
# shared with the server so that nothing is written under pyext/).
set -euo pipefail

pyext=$(cd "$(dirname "$0")" && pwd)
crate=$(dirname "$pyext")
root=$(dirname "$crate")
force=
venv=$root/.venv
for arg in "$@"; do
    case $arg in
        --force) force=1 ;;
        -*) echo "pyext: unknown option $arg (usage: install.sh [--force] [VENV])" >&2; exit 2 ;;
        *) venv=$(cd "$arg" 2>/dev/null && pwd) || { echo "pyext: no venv at $arg" >&2; exit 1; } ;;
    esac
done
PYTHON=${PYTHON:-$venv/bin/python}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$crate/target}
stamp=$venv/.rankbench-candle-installed
# Another venv's build keeps its own wheel and log, so that it never races .venv's `make build`.
suffix=
[ "$venv" = "$root/.venv" ] || suffix=-$(basename "$venv")
log=$CARGO_TARGET_DIR/rankbench_candle-build$suffix.log

fail() { echo "pyext: $*" >&2; exit 1; }

[ -x "$PYTHON" ] || fail "no Python at $PYTHON: run \`make setup\` first"
command -v cargo >/dev/null 2>&1 || fail "cargo not found: install Rust stable (https://rustup.rs)"
maturin=$(dirname "$PYTHON")/maturin
[ -x "$maturin" ] || maturin=$root/.venv/bin/maturin   # another venv: the project's maturin
[ -x "$maturin" ] || maturin=$(command -v maturin || true)
[ -n "$maturin" ] || fail "maturin not found: \`$PYTHON -m pip install 'maturin>=1.9.4'\` (in rankbench[dev])"

fingerprint() {
    {
        (cd "$crate" && find Cargo.toml Cargo.lock build.rs src \
            pyext/Cargo.toml pyext/build.rs pyext/pyproject.toml \
            pyext/rankbench_candle.pyi pyext/src -type f -print0 | sort -z | xargs -0 sha256sum)
        rustc -vV
        "$PYTHON" -c 'import sys; print(sys.executable, sys.version)'
        echo "RUSTFLAGS=${RUSTFLAGS:-} CARGO_ENCODED_RUSTFLAGS=${CARGO_ENCODED_RUSTFLAGS:-}"
    } | sha256sum | cut -d' ' -f1
}

want=$(fingerprint)
if [ -z "$force" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] \
        && "$PYTHON" -c 'import rankbench_candle' 2>/dev/null; then
    exit 0
fi

echo "pyext: building rankbench_candle (release, fat LTO; the first build takes minutes)"
mkdir -p "$CARGO_TARGET_DIR"
wheels=$CARGO_TARGET_DIR/wheels$suffix
rm -f "$wheels"/rankbench_candle-*.whl
start=$(date +%s)
# --locked: exactly the versions of the workspace's Cargo.lock, the very Candle and gemm the server
# runs (pyext is a member of the candle_server workspace: one lock file for both).
if ! "$maturin" build --release --locked --manifest-path "$pyext/Cargo.toml" -i "$PYTHON" \
        -o "$wheels" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    grep -q "lock file .* needs to be updated" "$log" \
        && fail "candle_server/Cargo.lock is out of date: run \`cargo update --workspace --manifest-path candle_server/Cargo.toml\` and commit it"
    fail "maturin build failed (full log: $log)"
fi
wheel=$(ls "$wheels"/rankbench_candle-*.whl)
if ! "$PYTHON" -m pip install --no-deps --no-index --force-reinstall "$wheel" >>"$log" 2>&1; then
    tail -n 20 "$log" >&2
    fail "pip install $wheel failed (full log: $log)"
fi
"$PYTHON" - <<'EOF' || fail "the installed rankbench_candle does not import as a release build"
import rankbench_candle
info = rankbench_candle.build_info()
assert info["profile"] == "release" and not info["debug_assertions"], info
assert rankbench_candle.compute_threads() == 1
EOF
echo "$want" > "$stamp"
echo "pyext: installed $(basename "$wheel") in $(( $(date +%s) - start )) s"
