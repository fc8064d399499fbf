"""Record building as pure functions: cores used, goodput, validity, warning rules."""
from __future__ import annotations

import pytest

from bench import records
from bench.sampler import GroupResult, SamplerResult


def _client(requests=1000, non2xx=0, duration_s=10.0, **errors):
    errs = {"connect": 0, "read": 0, "write": 0, "status": non2xx, "timeout": 0}
    errs.update(errors)
    return {"requests": requests, "non2xx": non2xx, "errors": errs, "duration_s": duration_s,
            "histogram_count": requests}


def test_cores_used_divides_by_the_load_window_not_the_harness_window():
    """The sampler's window also covers wrk's start-up and its done() dump (seconds for a long-tailed
    server): 9 CPU seconds over a 10 s load are 0.9 cores, not 9 / 13."""
    sampled = SamplerResult(wall_s=13.0, samples=130,
                            groups={"server": GroupResult(cpu_s=9.0, user_s=6.0, system_s=3.0)})
    res = records.resources(sampled, requests=1000, harness_cpu_s=0.1, cores=2, load_window_s=10.0)
    assert res["server"]["cores_used"] == 0.9
    assert res["server"]["cpu_us_per_req"] == 9000.0
    assert (res["server"]["user_s"], res["server"]["system_s"]) == (6.0, 3.0)
    assert res["harness"]["window_s"] == 13.0 and res["harness"]["load_window_s"] == 10.0


def test_cores_used_is_missing_when_the_window_is_unknown():
    assert records.cores_used(1.0, None) is None and records.cores_used(None, 10.0) is None


def test_goodput_counts_only_2xx_and_any_error_makes_the_run_invalid():
    record = {"client": _client(requests=1000, non2xx=10)}
    records.finish(record)
    assert record["client"]["ok"] == 990
    assert record["client"]["goodput_rps"] == 99.0
    assert record["valid"] is False and record["invalid_reasons"] == ["10 non-2xx response(s)"]

    record = {"client": _client(requests=1000, read=2)}
    records.finish(record)
    assert record["client"]["goodput_rps"] == 100.0
    assert record["valid"] is False and "socket errors {'read': 2}" in record["invalid_reasons"][0]

    record = {"client": _client(requests=1000)}
    records.finish(record)
    assert record["valid"] is True and record["invalid_reasons"] == []


def test_a_run_without_requests_is_invalid_and_has_no_goodput_rate():
    record = {"client": _client(requests=0, duration_s=0.0)}
    records.finish(record)
    assert record["valid"] is False and record["client"]["goodput_rps"] is None


def _facts(**changes):
    base = dict(client=dict(_client(), histogram_count=1000), stats={"workers": 1, "backend": "onnx"},
                workers=1, backend="onnx", load_cpu_s=3.0, wrk_threads=1,
                statements=["SELECT 1"], contract_statements={"SELECT 1"}, exit_code=0)
    base.update(changes)
    return records.ServerRunFacts(**base)


def test_warning_rules():
    assert records.server_run_warnings(_facts()) == []
    assert any("wrk saturated" in w for w in records.server_run_warnings(_facts(load_cpu_s=9.5)))
    assert any("statements other than the contract's" in w
               for w in records.server_run_warnings(_facts(statements=["SELECT 2"])))
    assert any("backend 'torch'" in w
               for w in records.server_run_warnings(_facts(stats={"backend": "torch"})))
    assert any("exit code 1" in w for w in records.server_run_warnings(_facts(exit_code=1)))
    rebuilt = records.server_run_warnings(_facts(build_sha_now="b", build_sha_at_start="a",
                                                 binary="x"))
    assert any("changed since the study started" in w for w in rebuilt)


def test_summary_line_says_n_a_for_what_was_not_measured_and_flags_invalid_runs():
    record = {"client": dict(_client(non2xx=5), latency_us={}, rps=100.0),
              "resources": {"server": {"cpu_us_per_req": None}, "db": None, "load": None},
              "warnings": []}
    records.finish(record)
    line = records.summary_line(record)
    assert "p50 n/a" in line and "server n/a" in line and "INVALID: 5 non-2xx" in line
    assert " 0 " not in line.split(";")[1]  # no figure shown as 0 that was not measured


@pytest.mark.parametrize("foreign_cpu, expected", [(0.05, 0), (0.5, 1)])
def test_foreign_database_clients_are_flagged(foreign_cpu, expected):
    res = {"harness": {"window_s": 10.0}, "db_foreign": {"cpu_s": foreign_cpu, "processes": 1},
           "machine": {"cores": 2, "unattributed_cpu_s": 0.0}}
    warnings = records.foreign_warnings(res, db_measured=True)
    assert sum("other clients used the database" in w for w in warnings) == expected
