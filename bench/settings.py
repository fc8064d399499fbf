"""Profiles and settings of a bench run: profile defaults < environment variables < flags.

Every setting that changes what is measured ends up in env.json and in each record, so a result
always says how it was made.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from rankbench.config import MAX_ITEMS, MAX_TOP_K, ROOT


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the flag/variable and the value."""


@dataclass(frozen=True)
class Profile:
    name: str
    items: tuple[int, ...]
    concurrency: tuple[int, ...]
    repeats: int
    duration_s: int
    warmup_s: int
    description: str
    study: str = "main"   # rankbench.servers' study whose servers run by default (SERVERS= overrides)
    accept_gzip: bool = False   # the wrk script sends Accept-Encoding: gzip (the study's clients did)


PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile("default", (10, 100), (32,), 3, 10, 5,
            "the main study's servers (make list-servers), 10 and 100 items, concurrency 32, 3 "
            "interleaved repeats, 10 s after 5 s warm-up"),
    Profile("quick", (10,), (32,), 1, 3, 1,
            "CI smoke test: one repeat, 10 items, concurrency 32, 3 s after 1 s warm-up"),
    Profile("sweep", (1, 10, 100, 1000), (1, 4, 16, 64), 1, 10, 3,
            "concurrency 1/4/16/64 x items 1/10/100/1000, one repeat, 10 s after 3 s warm-up"),
    Profile("ladder", (10, 100), (32, 10), 3, 10, 5,
            "the ladder study: the rungs from the published stack to Candle, 10 and 100 items, "
            "concurrency 32 and the study's load shape (10 closed-loop connections, like its 10 "
            "Locust users), 3 interleaved repeats, 10 s after 5 s warm-up; requests accept gzip "
            "like the study's clients", study="ladder", accept_gzip=True),
    Profile("batch", (10, 100), (1, 8, 32, 128), 2, 10, 5,
            "the batch study: per-request and micro-batching servers side by side, 10 and 100 "
            "items x concurrency 1, 8, 32, 128, 2 interleaved repeats, 10 s after 5 s warm-up",
            study="batch"),
    Profile("python", (10, 100), (32,), 3, 10, 5,
            "the python study: the Python floor and model servers on the project's interpreter and "
            "on every environment `make pythons` installed, 10 and 100 items, concurrency 32, 3 "
            "interleaved repeats, 10 s after 5 s warm-up", study="python"),
    Profile("slo", (10,), (32,), 1, 10, 5,
            "issue 16's open-loop study (make bench-slo, python -m bench.slo): each server's "
            "closed-loop maximum from one 10 s wrk run at concurrency 32 after 5 s warm-up, then "
            "open-loop runs at shares of it, each after 5 s warm-up at its rate; 10 items"),
)}

# Environment variable -> settings field. Flags with the same meaning win over these.
ENV_VARS = {
    "SERVERS": "servers", "ITEMS": "items", "CONCURRENCY": "concurrency", "DURATION": "duration_s",
    "WARMUP": "warmup_s", "REPEATS": "repeats", "WORKERS": "workers", "POOL": "pool_size",
    "PIN": "pin", "TOP_K": "top_k", "WRK_THREADS": "wrk_threads", "SCENARIO": "scenario",
    "SEED": "seed", "CEILING_CLIENTS": "ceiling_clients",
}


@dataclass(frozen=True)
class Settings:
    profile: str = "default"
    servers: tuple[str, ...] | None = None  # None: the study's servers whose prerequisites exist
    study: str = "main"
    accept_gzip: bool = False
    items: tuple[int, ...] = (10, 100)
    concurrency: tuple[int, ...] = (32,)
    repeats: int = 3
    duration_s: int = 10
    warmup_s: int = 5
    workers: int | None = None  # None: the number of cores given to the server (see pinning)
    pool_size: int = 8
    pin: bool = False
    top_k: int = 10
    wrk_threads: int = 1
    wrk_timeout_s: int = 10
    scenario: str = "rank"
    seed: int = 1
    ceiling: bool = True           # the database ceiling (rankbench-ceiling)
    pgbench: bool = True           # pgbench's reference beside it (text results)
    ceiling_clients: str = "pool"  # ceiling clients: min(concurrency, pool size), or "concurrency"
    verify: bool = True
    verify_requests: int = 200
    verify_tolerance: float = 1e-5
    results_root: Path = field(default=ROOT / "results")
    report: bool = True

    def as_json(self) -> dict:
        data = asdict(self)
        data["results_root"] = str(self.results_root)
        data["servers"] = list(self.servers) if self.servers is not None else None
        data["items"] = list(self.items)
        data["concurrency"] = list(self.concurrency)
        return data


def _ints(name: str, raw: str, low: int, high: int) -> tuple[int, ...]:
    parts = [p for p in raw.replace(",", " ").split() if p]
    if not parts:
        raise SettingsError(f"{name} is empty")
    values = []
    for part in parts:
        try:
            value = int(part)
        except ValueError:
            raise SettingsError(f"{name}: {part!r} is not an integer") from None
        if not low <= value <= high:
            raise SettingsError(f"{name}: {value} is outside {low}..{high}")
        values.append(value)
    return tuple(dict.fromkeys(values))  # order kept, duplicates dropped


def _int(name: str, raw: str, low: int, high: int) -> int:
    values = _ints(name, raw, low, high)
    if len(values) != 1:
        raise SettingsError(f"{name} takes one integer, got {raw!r}")
    return values[0]


def _seconds(name: str, raw: str, low: int) -> int:
    text = raw.strip().lower()
    text = text[:-1] if text.endswith("s") else text
    return _int(name, text, low, 24 * 3600)


def _bool(name: str, raw: str) -> bool:
    text = raw.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise SettingsError(f"{name}: {raw!r} is not a boolean (use 1 or 0)")


def _choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    value = raw.strip().lower()
    if value not in choices:
        raise SettingsError(f"{name}: {raw!r} is not one of {', '.join(choices)}")
    return value


def _servers(name: str, raw: str) -> tuple[str, ...] | None:
    names = tuple(dict.fromkeys(p for p in raw.replace(",", " ").split() if p))
    if not names or names == ("all",):
        return None
    return names


FLAG_NAMES = {"duration_s": "--duration", "warmup_s": "--warmup", "pool_size": "--pool"}

PARSERS = {
    "servers": _servers,
    "items": lambda n, r: _ints(n, r, 1, MAX_ITEMS),
    "concurrency": lambda n, r: _ints(n, r, 1, 10_000),
    "duration_s": lambda n, r: _seconds(n, r, 1),
    "warmup_s": lambda n, r: _seconds(n, r, 0),
    "repeats": lambda n, r: _int(n, r, 1, 1000),
    "workers": lambda n, r: _int(n, r, 1, 1024),
    "pool_size": lambda n, r: _int(n, r, 1, 1000),
    "pin": _bool,
    "top_k": lambda n, r: _int(n, r, 1, MAX_TOP_K),
    "wrk_threads": lambda n, r: _int(n, r, 1, 256),
    "scenario": lambda n, r: r.strip(),
    "seed": lambda n, r: _int(n, r, 0, 2**31 - 1),
    "ceiling_clients": lambda n, r: _choice(n, r, ("pool", "concurrency")),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run the rankbench study: checks, verify step, interleaved wrk runs against every "
                    "server of the registry, the database ceilings, results and report.",
        epilog="Every option also reads an environment variable (flags win): " +
               ", ".join(f"{env}=" for env in ENV_VARS) + ". Lists take commas or spaces.")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="default",
                        help="; ".join(f"{p.name}: {p.description}" for p in PROFILES.values()))
    parser.add_argument("--servers", help="servers to run (default: every registered server whose "
                                          "prerequisites exist)")
    parser.add_argument("--items", help="candidate items per request, e.g. 10,100")
    parser.add_argument("--concurrency", help="wrk connections (and pgbench clients), e.g. 1,4,16")
    parser.add_argument("--duration", dest="duration_s", help="measured seconds per run")
    parser.add_argument("--warmup", dest="warmup_s", help="discarded warm-up seconds before each run")
    parser.add_argument("--repeats", help="interleaved repeats of every configuration")
    parser.add_argument("--workers", help="--workers for every server (default: cores given to the server)")
    parser.add_argument("--pool", dest="pool_size", help="--pool-size for every server (default 8)")
    parser.add_argument("--pin", help="1: pin the server to the first half of the cores, postgres and "
                                      "the load generator to the rest")
    parser.add_argument("--top-k", dest="top_k", help="top_k of every request (default 10)")
    parser.add_argument("--wrk-threads", dest="wrk_threads", help="wrk -t (default 1)")
    parser.add_argument("--scenario", help="wrk_scripts/<scenario>.lua (default rank)")
    parser.add_argument("--seed", help="base seed of the request generators (default 1)")
    parser.add_argument("--no-ceiling", dest="ceiling", action="store_false",
                        help="skip the database ceilings (rankbench-ceiling and pgbench)")
    parser.add_argument("--no-pgbench", dest="pgbench", action="store_false",
                        help="skip pgbench's reference beside the ceiling")
    parser.add_argument("--ceiling-clients", dest="ceiling_clients",
                        help="ceiling clients: `pool` (default) = min(concurrency, pool size), the "
                             "database concurrency every server is limited to; `concurrency` = the "
                             "HTTP concurrency")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="skip the verify step (results then say so)")
    parser.add_argument("--no-report", dest="report", action="store_false",
                        help="do not call `python -m analysis report` at the end")
    parser.add_argument("--results", dest="results_root", type=Path,
                        help="folder that receives <UTC timestamp>/ and latest (default results/)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan and the time estimate, then exit")
    return parser


def resolve(argv: list[str] | None = None, environ: dict[str, str] | None = None
            ) -> tuple[Settings, argparse.Namespace]:
    """Settings from profile defaults, then environment variables, then flags."""
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    profile = PROFILES[args.profile]
    settings = Settings(profile=profile.name, study=profile.study,
                        accept_gzip=profile.accept_gzip,
                        items=profile.items, concurrency=profile.concurrency,
                        repeats=profile.repeats, duration_s=profile.duration_s,
                        warmup_s=profile.warmup_s)
    changes: dict = {}
    for env, key in ENV_VARS.items():
        raw = environ.get(env)
        if raw is not None and raw.strip() != "":
            changes[key] = PARSERS[key](env, raw)
    for key, parse in PARSERS.items():
        raw = getattr(args, key, None)
        if raw is not None:
            changes[key] = parse(FLAG_NAMES.get(key, "--" + key.replace("_", "-")), str(raw))
    if args.results_root is not None:
        changes["results_root"] = args.results_root.resolve()
    changes.update(ceiling=args.ceiling, pgbench=args.pgbench, verify=args.verify,
                   report=args.report)
    settings = replace(settings, **changes)
    if settings.wrk_threads > min(settings.concurrency):
        raise SettingsError(f"wrk threads ({settings.wrk_threads}) must not exceed the lowest "
                            f"concurrency ({min(settings.concurrency)})")
    if not settings.scenario.replace("_", "").replace("-", "").isalnum():
        raise SettingsError(f"scenario {settings.scenario!r} is not a plain name")
    return settings, args
