"""analysis/profile_report.py on a hand-made profiling run: pairs from facets (the names here say
nothing), differences by category computed by hand, coverage, and one-line errors."""
from __future__ import annotations

import json

import pytest

from analysis import profile_report
from bench.profiling.rules import CATEGORIES

FACETS = {
    # name: (language, http, runtime, interpreter, role)
    "alpha": ("python", "uvloop-httptools", "none", "cpython-3.11", "floor"),
    "beta": ("rust", "actix", "none", None, "floor"),
    "gamma": ("python", "uvloop-httptools", "onnxruntime", "cpython-3.11", "model"),
    "delta": ("rust", "actix", "candle", None, "model"),
    "epsilon": ("python", "uvloop-httptools", "candle", "cpython-3.11", "model"),
}
# CPU per request by category (µs); the rest of each server's CPU is 0.
SPLITS = {
    "alpha": {"kernel": 100.0, "event_loop": 80.0, "db_driver": 60.0, "interpreter": 20.0},
    "beta": {"kernel": 70.0, "event_loop": 10.0, "db_driver": 10.0, "http": 10.0},
    "gamma": {"kernel": 110.0, "event_loop": 90.0, "db_driver": 60.0, "model": 100.0, "other": 60.0},
    "delta": {"kernel": 75.0, "model": 40.0, "http": 15.0},
    "epsilon": {"kernel": 105.0, "event_loop": 85.0, "db_driver": 60.0, "model": 50.0},
}


def describe(name):
    language, http, runtime, interpreter, role = FACETS[name]
    return {"name": name, "language": language, "http": http, "runtime": runtime,
            "interpreter": interpreter, "variant": "per-request", "role": role}


def window(cpu_us, rps):
    return {"client": {"rps": rps, "duration_s": 8.0},
            "resources": {"server": {"cpu_us_per_req": cpu_us, "user_s": 3.0, "system_s": 1.0},
                          "db": {"cpu_us_per_req": 200.0, "user_s": 1.0, "system_s": 1.0},
                          "load": {"cpu_us_per_req": 30.0, "user_s": 0.5, "system_s": 1.5}},
            "profilers": {"perf": {"cpu_s": 0.4}}}


def record(name):
    split = SPLITS[name]
    total = sum(split.values())
    categories = {c: {"label": label, "samples": split.get(c, 0.0) * 10,
                      "share": split.get(c, 0.0) / total, "cpu_us_per_req": split.get(c, 0.0),
                      "estimated_share": 0.0, "top": [[f"{c}-frame", 1.0]] if c in split else []}
                  for c, label in CATEGORIES.items()}
    facets = describe(name)
    return {"schema": 1, "kind": "profile", "server": name, "role": facets["role"],
            "facets": {k: facets[k] for k in ("language", "http", "runtime", "interpreter", "variant")},
            "items": 10, "concurrency": 32, "repeat": 0, "python_frames": "py-spy",
            "windows": {"unprofiled": window(total, 1000.0), "perf": window(total * 1.1, 900.0)},
            "profile": {"samples": int(total * 10), "named_share": 1 - split.get("other", 0.0) / total,
                        "sampled_vs_measured_cpu": 1.0, "categories": categories,
                        "pyspy": {"running_python": 120 if facets["interpreter"] else 0}},
            "flamegraphs": {"perf_svg": f"flame/{name}.perf.svg"}, "warnings": []}


@pytest.fixture
def run_folder(tmp_path):
    env = {"kind": "profile", "schema": 1, "started_at": "2026-12-01T00:00:00Z",
           "servers": {n: describe(n) for n in FACETS}, "settings": {}, "profiler": {}, "tools": {}}
    (tmp_path / "env.json").write_text(json.dumps(env))
    (tmp_path / "profile.jsonl").write_text("".join(json.dumps(record(n)) + "\n" for n in FACETS))
    return tmp_path


def test_pairs_come_from_facets(run_folder):
    servers = profile_report.configurations(profile_report.load(run_folder))[(10, 32)]
    chosen = [(p.python, p.native, p.kind, p.isolates) for p in profile_report.pairs(servers)]
    assert chosen == [("alpha", "beta", "floor", "language"),
                      ("epsilon", "delta", "model", "language"),
                      ("gamma", "delta", "model", "language and runtime")]


def test_differences_by_category(run_folder):
    servers = profile_report.configurations(profile_report.load(run_folder))[(10, 32)]
    floor = profile_report.pairs(servers)[0]
    assert profile_report.difference(floor, servers, "kernel") == 30.0
    assert profile_report.difference(floor, servers, "event_loop") == 70.0
    assert profile_report.difference(floor, servers, "http") == -10.0
    text = profile_report.render(profile_report.load(run_folder), figures=False)
    table = text.split("### Python minus Rust")[1].split("###")[0]
    assert "| category | alpha − beta | epsilon − delta | gamma − delta |" in table
    assert "| event loop / async runtime | +70 | +85 | +90 |" in table
    assert "| **total** | **+160** | **+170** | **+290** |" in table
    assert ("Largest Python-only categories in the floor (alpha − beta): event loop / async "
            "runtime +70 µs, database driver (protocol and decoding) +50 µs, kernel: networking "
            "and syscalls +30 µs, interpreter +20 µs.") in table


def test_coverage_flags_servers_below_the_target(run_folder):
    text = profile_report.render(profile_report.load(run_folder), figures=False)
    coverage = text.split("### Coverage")[1].split("###")[0]
    assert "| gamma | py-spy | 4200 | 120 | 100% | 85.7% | **no** | 0.0% |" in coverage
    assert "| alpha | py-spy | 2600 | 120 | 100% | 100.0% | yes | 0.0% |" in coverage


def test_user_system_split_and_flame_links(run_folder):
    text = profile_report.render(profile_report.load(run_folder), figures=False)
    assert "| beta | 100 µs/req, 75% user / 25% system | 200 µs/req, 50% user / 50% system | " \
           "30 µs/req, 25% user / 75% system |" in text
    assert "- delta (repeat 1): [perf (kernel + user)](flame/delta.perf.svg)" in text


def test_figure_and_file_written(run_folder):
    path = profile_report.write(run_folder)
    assert path.read_text().startswith("# Where the CPU goes")
    assert (run_folder / "profile_categories_i10_c32.png").stat().st_size > 1000


def test_unknown_schema_is_one_line(run_folder, capsys):
    (run_folder / "profile.jsonl").write_text(json.dumps({"schema": 99}) + "\n")
    assert profile_report.main([str(run_folder)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("profile_report: ") and "schema 99" in err and "\n" not in err
