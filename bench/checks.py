"""Prerequisites of a bench run. Each failure is one line that names the make target to run."""
from __future__ import annotations

import shutil
from pathlib import Path

from rankbench.config import ARTIFACTS_DIR, CANDLE_DIR, ROOT
from rankbench.servers import ServerSpec

from bench import wrk


class CheckError(RuntimeError):
    pass


MODEL_FILES = ("manifest.json", "ranknet.safetensors")


def make_target_for(path: Path) -> str:
    path = Path(path).resolve()
    if CANDLE_DIR.resolve() in path.parents:
        return "make build"
    if ARTIFACTS_DIR.resolve() in path.parents or path == ARTIFACTS_DIR.resolve():
        return "make model"
    return "make setup"


def missing_needs(spec: ServerSpec) -> list[Path]:
    return [Path(p) for p in spec.needs if not Path(p).exists()]


def select_servers(requested: tuple[str, ...] | None, registry: dict[str, ServerSpec]
                   ) -> tuple[list[str], dict[str, list[Path]]]:
    """Servers to run, and for the default set the servers left out with what they lack.
    An explicitly requested server that lacks a prerequisite is an error."""
    if requested is None:
        chosen, skipped = [], {}
        for name, spec in registry.items():
            missing = missing_needs(spec)
            if missing:
                skipped[name] = missing
            else:
                chosen.append(name)
        if not chosen:
            raise CheckError("no registered server has its prerequisites; run `make build` and "
                             "`make model`")
        return chosen, skipped
    unknown = [n for n in requested if n not in registry]
    if unknown:
        raise CheckError(f"unknown server(s) {', '.join(unknown)}; registered: {', '.join(registry)}")
    for name in requested:
        missing = missing_needs(registry[name])
        if missing:
            raise CheckError(f"{name} needs {missing[0].relative_to(ROOT) if ROOT in missing[0].parents else missing[0]}"
                             f", which is missing; run `{make_target_for(missing[0])}`")
    return list(requested), {}


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
