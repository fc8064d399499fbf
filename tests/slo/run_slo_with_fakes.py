"""Run `python -m bench.slo` with the bench tests' fake servers in the registry
(tests/bench/run_with_fakes.py: fake-db, fake-floor, ...), the way a new server joins."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import run_with_fakes  # noqa: E402

if __name__ == "__main__":
    run_with_fakes.register()
    from bench.slo import main
    sys.exit(main(sys.argv[1:]))
