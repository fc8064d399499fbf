"""What a run of the fault suite observed, as JSON lines for the report generator (report.py).

Active only when RANKBENCH_FAULTS_RECORD names a file; every test may add facts (a server's answer
to a corpus case, a measured recovery time) and conftest.py adds each test's outcome.
"""
from __future__ import annotations

import json
import os
import threading

_lock = threading.Lock()


def enabled() -> bool:
    return bool(os.environ.get("RANKBENCH_FAULTS_RECORD"))


def record(kind: str, **fields) -> None:
    path = os.environ.get("RANKBENCH_FAULTS_RECORD")
    if path:
        record_to(path, kind, **fields)


def record_to(path, kind: str, **fields) -> None:
    line = json.dumps({"kind": kind, **fields}, default=str, ensure_ascii=True)
    with _lock, open(path, "a") as handle:
        handle.write(line + "\n")


def read(path: str) -> list[dict]:
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]
