"""Loading a results folder: what is refused, with which message, and what is tolerated."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from analysis.load import ResultsError, load_results
from analysis_testlib import FIXTURES, ROOT, read_records, write_records


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "analysis", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("analysis: ")
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_unknown_schema_is_refused(results_copy):
    folder = results_copy("bad_schema")
    with pytest.raises(ResultsError, match=r"runs\.jsonl:1: schema 3 is not supported"):
        load_results(folder)
    result = run_cli("report", str(folder))
    assert_one_line_error(result, "schema 3 is not supported", "schema 1, 2")
    assert not (folder / "report.md").exists()


def test_unknown_schema_on_a_later_line_names_that_line(results_copy, tmp_path):
    records = read_records(FIXTURES / "hand")
    records[4]["schema"] = "1"  # a string is not the integer schema 1
    write_records(tmp_path / "r", records)
    with pytest.raises(ResultsError, match=r"runs\.jsonl:5: schema '1' is not supported"):
        load_results(tmp_path / "r")


def test_record_without_schema_is_refused(tmp_path):
    record = read_records(FIXTURES / "hand")[0]
    del record["schema"]
    write_records(tmp_path / "r", [record])
    with pytest.raises(ResultsError, match="no 'schema' key"):
        load_results(tmp_path / "r")


def test_missing_folder_fails_with_one_line(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ResultsError, match="does not exist"):
        load_results(missing)
    assert_one_line_error(run_cli("report", str(missing)), "does not exist")
    assert_one_line_error(run_cli("compare", str(FIXTURES / "hand"), str(missing)),
                          "does not exist")


def test_folder_without_runs_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResultsError, match="no runs.jsonl"):
        load_results(tmp_path / "empty")
    (tmp_path / "empty" / "runs.jsonl").write_text("\n")
    with pytest.raises(ResultsError, match="no runs recorded"):
        load_results(tmp_path / "empty")


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r["client"].pop("rps"), r":1: 'client.rps' is missing"),
    (lambda r: r.update(candidates=True), r":1: 'candidates' must be an integer >= 1"),
    (lambda r: r.update(concurrency=0), r":1: 'concurrency' must be an integer >= 1"),
    (lambda r: r["client"]["latency_us"].update(p99="30ms"), r"'client.latency_us.p99' must be"),
    (lambda r: r["stages"]["db"].update(sum_us=-1), r"'stages.db.sum_us' must be a finite number"),
    (lambda r: r["resources"].update(server=[1]), r"'resources.server' must be an object or null"),
    (lambda r: r["client"].update(histogram="bm90IGEgaGlzdG9ncmFt"),
     r"'client.histogram' is not a latency histogram: not a valid encoded HdrHistogram"),
    (lambda r: r["client"].update(histogram=[[8000, 2], [9000]]),
     r"'client.histogram' is not a latency histogram: entry 1 is \[9000\], not \[value_us, count\]"),
    (lambda r: r["client"].update(histogram=[[8000, 2.5]]),
     r"'client.histogram' .*count a whole number >= 0"),
    (lambda r: r["stages"]["infer"].update(histogram=12),
     r"'stages.infer.histogram' is not a latency histogram: expected \[\[value_us, count\], \.\.\.\]"),
    (lambda r: r.update(warnings="slow"), r"'warnings' must be a list of strings"),
])
def test_malformed_records_name_the_line_and_key(tmp_path, mutate, message):
    record = read_records(FIXTURES / "hand")[1]  # py-onnx, has every stage
    mutate(record)
    write_records(tmp_path / "r", [record])
    with pytest.raises(ResultsError, match=message):
        load_results(tmp_path / "r")


def test_malformed_json_line_is_refused_with_its_number(tmp_path):
    folder = tmp_path / "r"
    write_records(folder, read_records(FIXTURES / "hand")[:2])
    with (folder / "runs.jsonl").open("a") as out:
        out.write('{"schema": 1, "server": \n')
    with pytest.raises(ResultsError, match=r"runs\.jsonl:3: not valid JSON"):
        load_results(folder)


def test_duplicate_run_key_is_refused(tmp_path):
    record = read_records(FIXTURES / "hand")[0]
    write_records(tmp_path / "r", [record, record])
    with pytest.raises(ResultsError, match=r":2: duplicate run py-torch .*repeat 0.*first seen at"):
        load_results(tmp_path / "r")


def test_additions_to_the_schema_are_tolerated(tmp_path):
    """The contract lets the harness add keys; only the keys read here are type-checked."""
    record = read_records(FIXTURES / "hand")[1]
    record["pinning"] = {"server": [0], "db": [1]}
    record["resources"]["server"]["pids"] = [123, 124]
    record["client"]["latency_us"]["p99.999"] = 51000
    record["client"]["wrk_threads"] = 2
    write_records(tmp_path / "r", [record])
    (run,) = load_results(tmp_path / "r").runs
    assert run.record["pinning"] == {"server": [0], "db": [1]}
    assert run.resources["server"] == {"cpu_s": 9.2, "cpu_us_per_req": pytest.approx(368.0),
                                       "rss_peak_mb": 180.2, "cores_used": 0.92, "user_s": 7.36,
                                       "system_s": 1.84}


def test_runs_are_keyed_not_positional(results_copy):
    results = load_results(FIXTURES / "hand")
    keys = {run.key for run in results.runs}
    assert ("py-onnx", "rank", 10, 32, 2) in keys
    assert len(keys) == len(results.runs) == 21


def test_latest_symlink_reports_the_real_folder(results_copy, tmp_path):
    real = results_copy("hand")
    link = tmp_path / "latest"
    link.symlink_to(real, target_is_directory=True)
    results = load_results(link)
    assert results.path == real.resolve()
    assert results.name == "hand"


def test_missing_env_is_a_warning_not_an_error(results_copy):
    folder = results_copy("hand")
    (folder / "env.json").unlink()
    results = load_results(folder)
    assert results.env is None
    assert any("env.json" in note for note in results.notes)


def test_malformed_env_is_refused(results_copy):
    folder = results_copy("hand")
    (folder / "env.json").write_text(json.dumps(["not", "an", "object"]))
    with pytest.raises(ResultsError, match="env.json: expected a JSON object"):
        load_results(folder)


def test_results_without_any_http_server_are_refused(tmp_path):
    records = [r for r in read_records(FIXTURES / "recorded_quick") if r["server"] == "db-ceiling"]
    write_records(tmp_path / "r", records)
    assert_one_line_error(run_cli("report", str(tmp_path / "r")),
                          "nothing to report: no HTTP server was measured (runs of: db-ceiling)")


def test_facets_from_env_json_then_the_registry_then_unknown():
    from analysis.load import server_facts
    # schema 2: env.json's facets as written, even where the registry would say otherwise
    env = {"servers": {"py-onnx": {"name": "py-onnx", "language": "python", "http": "aiohttp",
                                   "runtime": "onnxruntime", "interpreter": "cpython-3.13",
                                   "variant": "per-request", "role": "model", "floor": "py-none",
                                   "real_scores": True}}}
    facts = server_facts("py-onnx", env)
    assert (facts.source, facts.get("http"), facts.get("interpreter")) == \
        ("env.json", "aiohttp", "cpython-3.13")
    # schema 1: env.json had language and backend only; the rest comes from the registry by name
    facts = server_facts("candle", {"servers": {"candle": {"language": "rust", "backend": "candle"}}})
    assert facts.source == "env.json + registry"
    assert (facts.get("runtime"), facts.get("floor"), facts.role) == \
        ("candle", "candle-no-model", "model")
    assert "language" not in facts.from_registry and "runtime" in facts.from_registry
    assert server_facts("candle", None).source == "registry"
    unknown = server_facts("py-experimental", None)
    assert not unknown.known and unknown.source == "unknown" and unknown.role is None


def test_open_loop_runs_are_left_to_the_slo_report(tmp_path):
    """make bench-slo's folder holds closed-loop and open-loop runs; the main report and compare
    read the closed-loop ones and say how many open-loop runs they left to slo.md."""
    import shutil

    from analysis import write_report

    records = read_records(FIXTURES / "hand")
    open_loop = [{**r, "scenario": "slo", "concurrency": 7,
                  "client": {**r["client"], "tool": "oha", "mode": "open-loop"}}
                 for r in records if r["server"] == "candle"]
    folder = tmp_path / "r"
    write_records(folder, records + open_loop)
    for name in ("env.json", "verify.json"):
        shutil.copy(FIXTURES / "hand" / name, folder / name)
    md = write_report(folder).read_text()
    assert "slo, 10 items/request" not in md and "concurrency 7" not in md
    assert (f"{len(open_loop)} open-loop run(s) at fixed arrival rates are not in this report: "
            "slo.md in this folder reports them") in md
    # without them, the report is the hand fixture's own
    plain = tmp_path / "plain"
    shutil.copytree(FIXTURES / "hand", plain)
    headline = write_report(plain).read_text()
    assert md[md.index("## Headline"):md.index("## Invalid runs")] == \
        headline[headline.index("## Headline"):headline.index("## Invalid runs")]
    compared = run_cli("compare", str(plain), str(folder))
    assert compared.returncode == 0, compared.stderr
    assert "concurrency 7" not in compared.stdout and "slo, " not in compared.stdout
