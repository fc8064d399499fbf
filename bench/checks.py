"""Prerequisites of a bench run. Each failure is one line that names the make target to run."""
from __future__ import annotations

import shutil
from pathlib import Path

from rankbench.config import ARTIFACTS_DIR, CEILING_BINARY, ROOT
from rankbench.servers import ServerSpec

from bench import wrk


class CheckError(RuntimeError):
    pass


MODEL_FILES = ("manifest.json", "ranknet.safetensors")


def select_servers(requested: tuple[str, ...] | None, registry: dict[str, ServerSpec],
                   study: str | None = None) -> tuple[list[str], dict[str, list[str]]]:
    """Servers to run, and for the default set (the study's servers; every server when `study` is
    None) the servers left out with what they lack (from their registry prerequisites). An
    explicitly requested server that lacks one is an error."""
    if requested is None:
        chosen, skipped = [], {}
        for name, spec in registry.items():
            if study is not None and study not in spec.studies:
                continue
            missing = spec.missing()
            if missing:
                skipped[name] = [p.describe() for p in missing]
            else:
                chosen.append(name)
        if not chosen:
            raise CheckError(f"no server of the {study or 'registry'} study has its prerequisites; "
                             f"run `make build` and `make model`")
        return chosen, skipped
    unknown = [n for n in requested if n not in registry]
    if unknown:
        raise CheckError(f"unknown server(s) {', '.join(unknown)}; registered: {', '.join(registry)}")
    for name in requested:
        missing = registry[name].missing()
        if missing:
            raise CheckError(f"{name} needs {missing[0].describe()}, which is missing")
    return list(requested), {}


def ceiling_binary() -> None:
    if not CEILING_BINARY.exists():
        raise CheckError(f"{CEILING_BINARY.relative_to(ROOT)} is missing (the database ceiling "
                         f"client); run `make build`, or pass --no-ceiling")


def tools(need_pgbench: bool, need_taskset: bool) -> None:
    wanted = [("wrk", "make setup")]
    if need_pgbench:
        wanted.append(("pgbench", "make setup"))
    if need_taskset:
        wanted.append(("taskset", "make setup"))
    for tool, target in wanted:
        if shutil.which(tool) is None:
            raise CheckError(f"{tool} is not on PATH; run `{target}`")


def scenario(name: str) -> None:
    path = wrk.script_path(name)
    if not path.exists():
        available = sorted(p.stem for p in path.parent.glob("*.lua"))
        raise CheckError(f"no wrk scenario {path.relative_to(ROOT)}; available: {', '.join(available)}")


def model_artifacts(model_dir: Path = ARTIFACTS_DIR) -> None:
    for name in MODEL_FILES:
        if not (model_dir / name).exists():
            raise CheckError(f"{model_dir / name} is missing; run `make model`")
