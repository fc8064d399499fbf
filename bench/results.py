"""The results folder of one bench run: results/<UTC stamp>/, its JSON files and `latest`.

env.json is written before the first run (so an interrupted study still says how it was made) and
completed at the end; runs.jsonl gets one line per finished run, appended as it finishes.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path


def utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ResultsFolder:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        path = root / stamp
        n = 1
        while path.exists():
            n += 1
            path = root / f"{stamp}-{n}"
        path.mkdir()
        self.root = root
        self.path = path
        self.logs = path / "logs"
        self.logs.mkdir()

    def write_json(self, name: str, data: dict) -> None:
        tmp = self.path / f".{name}.tmp"
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
        os.replace(tmp, self.path / name)

    def append_record(self, record: dict) -> None:
        with open(self.path / "runs.jsonl", "a") as handle:
            handle.write(json.dumps(record, separators=(",", ":")) + "\n")

    def relative(self, path: Path) -> str:
        return str(path.relative_to(self.path))

    def point_latest(self) -> None:
        link = self.root / "latest"
        tmp = self.root / f".latest-{os.getpid()}"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(self.path.name)
        os.replace(tmp, link)
