"""Run `python -m bench` with fake servers added to the registry (the way a new server joins).

    python tests/bench/run_with_fakes.py --servers fake-db --profile quick ...

fake-db      real scores: the contract's two statements + the plain-numpy reference model
fake-floor   a floor (real_scores=False) with synthetic data, no database access
fake-wrong   like fake-db, but from its 18th /rank request on one score is off by 1e-3
fake-crash   exits at start with a message on stderr
fake-stubborn  ignores SIGTERM and has a forked worker: the harness must escalate to SIGKILL
"""
from __future__ import annotations

import socket
import sys
from pathlib import Path

from rankbench.servers import SERVERS, ServerSpec

FAKE = str(Path(__file__).with_name("bench_fake_server.py"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fake(*flags: str):
    return lambda common: [sys.executable, FAKE, *common, *flags]


FAKES = {
    "fake-db": ServerSpec("fake-db", "fake", _free_port(), True, "python", _fake("--data", "db")),
    "fake-floor": ServerSpec("fake-floor", "fake", _free_port(), False, "python",
                             _fake("--data", "synthetic")),
    "fake-wrong": ServerSpec("fake-wrong", "fake", _free_port(), True, "python",
                             _fake("--data", "db", "--wrong-score-from", "17")),
    "fake-crash": ServerSpec("fake-crash", "fake", _free_port(), True, "python",
                             _fake("--fail-at-start", "fake-crash: cannot load the model")),
    "fake-stubborn": ServerSpec("fake-stubborn", "fake", _free_port(), False, "python",
                                _fake("--data", "synthetic", "--ignore-sigterm", "--workers", "2")),
}


def register() -> None:
    for name, spec in FAKES.items():
        SERVERS.setdefault(name, spec)


if __name__ == "__main__":
    register()
    from bench.cli import main
    sys.exit(main(sys.argv[1:]))
