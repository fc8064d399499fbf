"""env.json: the machine, the software and the settings a result was made with."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import psutil

from rankbench.config import CANDLE_BINARY, CANDLE_DIR, ROOT


def _run(argv: list[str], cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_state() -> dict:
    sha = _run(["git", "rev-parse", "HEAD"], cwd=ROOT)
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT)
    return {"sha": sha, "dirty": bool(status) if status is not None else None}


def project_dependencies() -> dict[str, str | None]:
    """Installed versions of the dependencies declared in pyproject.toml."""
    try:
        project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return {}
    names = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        names += extra
    versions = {}
    for spec in names:
        name = re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0]
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def rust_build() -> dict:
    """rustc version, the release profile of candle_server/Cargo.toml, and the locked versions of
    its direct dependencies."""
    info: dict = {"rustc": _run(["rustc", "--version"]), "cargo": _run(["cargo", "--version"]),
                  "binary": str(CANDLE_BINARY), "binary_present": CANDLE_BINARY.exists(),
                  "RUSTFLAGS": os.environ.get("RUSTFLAGS")}
    try:
        manifest = tomllib.loads((CANDLE_DIR / "Cargo.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return info
    info["profile_release"] = manifest.get("profile", {}).get("release", {})
    direct = set(manifest.get("dependencies", {}))
    try:
        lock = tomllib.loads((CANDLE_DIR / "Cargo.lock").read_text())
        info["crates"] = {p["name"]: p["version"] for p in lock.get("package", [])
                          if p["name"] in direct or p["name"].startswith("candle-")}
        info["crates_locked_total"] = len(lock.get("package", []))
    except (OSError, tomllib.TOMLDecodeError):
        info["crates"] = None
    return info


def collect(settings_json: dict, pinning: dict, db_version: str | None, tool_versions: dict,
            servers: dict[str, dict]) -> dict:
    freq = psutil.cpu_freq()
    return {
        "schema": 1,
        "host": platform.node(),
        "cpu_model": cpu_model(),
        "cores_logical": psutil.cpu_count(logical=True),
        "cores_physical": psutil.cpu_count(logical=False),
        "cores_usable": len(os.sched_getaffinity(0)),
        "cpu_mhz": round(freq.current) if freq else None,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "postgresql": db_version,
        "tools": tool_versions,
        "packages": project_dependencies(),
        "rust": rust_build(),
        "git": git_state(),
        "settings": settings_json,
        "pinning": pinning,
        "servers": servers,
        "environment": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS",
                                                   "MKL_NUM_THREADS", "DATABASE_URL", "SCALE")
                        if k in os.environ},
        "taskset": shutil.which("taskset"),
    }
