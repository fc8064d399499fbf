"""The registry of servers that speak the contract.

A server joins the benchmark, the conformance suite and the fault suite by adding one entry here;
nothing else names servers. Each entry knows how to build its command line from the contract's
common flags, and whether it computes real model scores (the `none`/`--no-model` floors do not).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from rankbench.config import ARTIFACTS_DIR, CANDLE_BINARY, ROOT


@dataclass(frozen=True)
class ServerSpec:
    name: str
    backend: str
    default_port: int
    real_scores: bool
    language: str
    build_command: Callable[..., list[str]] = field(repr=False)
    needs: tuple[Path, ...] = ()

    def command(self, *, host: str = "127.0.0.1", port: int | None = None, dsn: str,
                workers: int = 1, pool_size: int = 8,
                model_dir: Path | str = ARTIFACTS_DIR, extra: tuple[str, ...] = ()) -> list[str]:
        common = ["--host", host, "--port", str(port or self.default_port), "--dsn", dsn,
                  "--workers", str(workers), "--pool-size", str(pool_size),
                  "--model-dir", str(model_dir)]
        return self.build_command(common) + list(extra)


def _python(backend: str) -> Callable[[list[str]], list[str]]:
    return lambda common: [sys.executable, "-m", "py_servers", "--backend", backend, *common]


def _rust(*flags: str) -> Callable[[list[str]], list[str]]:
    return lambda common: [str(CANDLE_BINARY), *common, *flags]


SERVERS: dict[str, ServerSpec] = {
    spec.name: spec
    for spec in (
        ServerSpec("py-torch", "torch", 8001, True, "python", _python("torch")),
        ServerSpec("py-onnx", "onnx", 8002, True, "python", _python("onnx")),
        ServerSpec("py-none", "none", 8005, False, "python", _python("none")),
        ServerSpec("py-candle", "candle", 8004, True, "python", _python("candle")),
        ServerSpec("candle", "candle", 8003, True, "rust", _rust(), (CANDLE_BINARY,)),
        ServerSpec("candle-no-model", "none", 8006, False, "rust", _rust("--no-model"),
                   (CANDLE_BINARY,)),
    )
}


def get(name: str) -> ServerSpec:
    try:
        return SERVERS[name]
    except KeyError:
        known = ", ".join(SERVERS)
        raise SystemExit(f"unknown server {name!r}; known servers: {known}") from None


__all__ = ["ServerSpec", "SERVERS", "get", "ROOT"]
