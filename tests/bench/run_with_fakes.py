"""Run `python -m bench` with fake servers added to the registry (the way a new server joins).

    python tests/bench/run_with_fakes.py --servers fake-db --profile quick ...

fake-db      real scores: the contract's two statements + the plain-numpy reference model
fake-floor   a floor (real_scores=False) with synthetic data, no database access
fake-wrong   like fake-db, but from its 18th /rank request on one score is off by 1e-3
fake-crash   exits at start with a message on stderr
fake-stubborn  ignores SIGTERM and has a forked worker: the harness must escalate to SIGKILL
"""
from __future__ import annotations

import sys
from pathlib import Path

from rankbench.servers import SERVERS, ServerSpec

from bench.serverproc import free_port

FAKE = str(Path(__file__).with_name("bench_fake_server.py"))


def _fake(name: str, runtime: str, *flags: str, variant: str = "per-request") -> ServerSpec:
    """A registry entry like any other: facets, port, command (the way a new server joins)."""
    return ServerSpec(name, language="python", http="fake-http", runtime=runtime,
                      interpreter="cpython", backend="fake", default_port=free_port(),
                      variant=variant,
                      build_command=lambda common: [sys.executable, FAKE, *common, *flags],
                      startup_timeout_s=30.0, stop_timeout_s=10.0)


FAKES = {spec.name: spec for spec in (
    _fake("fake-db", "fake-model", "--data", "db"),
    _fake("fake-floor", "none", "--data", "synthetic"),
    _fake("fake-wrong", "fake-model", "--data", "db", "--wrong-score-from", "17",
          variant="wrong"),
    _fake("fake-crash", "fake-model", "--fail-at-start", "fake-crash: cannot load the model",
          variant="crash"),
    _fake("fake-stubborn", "none", "--data", "synthetic", "--ignore-sigterm", "--workers", "2",
          variant="stubborn"),
)}


def register() -> None:
    for name, spec in FAKES.items():
        SERVERS.setdefault(name, spec)


if __name__ == "__main__":
    register()
    from bench.cli import main
    sys.exit(main(sys.argv[1:]))
