"""Run order (interleaved repeats), time estimates, settings from profiles, env and flags."""
from __future__ import annotations

import pytest

from bench import plan
from bench.settings import PROFILES, SettingsError, resolve


def test_repeats_are_interleaved_rotated_and_the_ceiling_joins_every_round():
    runs = plan.build_plan(["A", "B", "C"], "rank", (10, 100), (32,), 2, ceiling=True)
    order = [(r.items, r.repeat, r.server) for r in runs]
    ceiling = plan.CEILING
    assert order == [
        (10, 0, "A"), (10, 0, "B"), (10, 0, "C"), (10, 0, ceiling),
        (10, 1, "B"), (10, 1, "C"), (10, 1, ceiling), (10, 1, "A"),
        (100, 0, "A"), (100, 0, "B"), (100, 0, "C"), (100, 0, ceiling),
        (100, 1, "B"), (100, 1, "C"), (100, 1, ceiling), (100, 1, "A"),
    ]
    assert [r.index for r in runs] == list(range(len(runs)))
    assert len({r.key for r in runs}) == len(runs)  # records are found by key, never by position
    assert [r.position for r in runs[:8]] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert runs[4].order == ("B", "C", ceiling, "A")


def test_rotation_is_a_latin_square_when_repeats_equal_participants():
    """Every server takes every position exactly once: a position effect cannot land on one server."""
    servers = ["A", "B", "C"]
    runs = plan.build_plan(servers, "rank", (10,), (32,), 4, ceiling=True, pgbench_ceiling=False)
    positions: dict[str, set[int]] = {}
    for r in runs:
        positions.setdefault(r.server, set()).add(r.position)
    assert all(p == {0, 1, 2, 3} for p in positions.values())


def test_sweep_covers_every_combination_once_per_server():
    p = PROFILES["sweep"]
    runs = plan.build_plan(["A", "B"], "rank", p.items, p.concurrency, p.repeats, ceiling=False)
    assert {(r.items, r.concurrency) for r in runs} == {(i, c) for i in (1, 10, 100, 1000)
                                                        for c in (1, 4, 16, 64)}
    assert len(runs) == 2 * 16


def test_estimates_add_up_and_scale_with_the_settings():
    runs = plan.build_plan(["py-x", "rs-y"], "rank", (10,), (32,), 3, ceiling=True)
    languages = {"py-x": "python", "rs-y": "rust"}
    total = plan.estimate_total_s(runs, 5, 10, languages, verify_servers=2)
    expected = 3 * ((4 + 15) + (1 + 15) + (15 + 1)) + 2 * plan.VERIFY_S_PER_SERVER
    assert total == pytest.approx(expected)


def test_default_profile_fits_the_time_budget():
    """`make bench` must stay near 15 minutes with the main study's servers and both ceilings."""
    from rankbench.servers import SERVERS, study

    p = PROFILES["default"]
    servers = {name: SERVERS[name].language for name in study(p.study)}
    runs = plan.build_plan(list(servers), "rank", p.items, p.concurrency, p.repeats, ceiling=True,
                           pgbench_ceiling=True)
    total = plan.estimate_total_s(runs, p.warmup_s, p.duration_s, servers,
                                  verify_servers=len(servers))
    assert total < 17 * 60  # near 15 minutes: 7 servers, 2 ceilings


def test_format_duration():
    assert plan.format_duration(42) == "42s"
    assert plan.format_duration(61) == "1m01s"
    assert plan.format_duration(3725) == "1h02m"


def test_profile_then_environment_then_flags():
    settings, _ = resolve(["--profile", "quick"], environ={})
    assert (settings.items, settings.concurrency, settings.repeats, settings.duration_s,
            settings.warmup_s) == ((10,), (32,), 1, 3, 1)
    env = {"ITEMS": "1, 10 100", "CONCURRENCY": "4", "DURATION": "7s", "WARMUP": "0", "REPEATS": "2",
           "WORKERS": "3", "POOL": "16", "PIN": "1", "SERVERS": "py-onnx,candle"}
    settings, _ = resolve(["--profile", "quick"], environ=env)
    assert settings.items == (1, 10, 100) and settings.concurrency == (4,)
    assert (settings.duration_s, settings.warmup_s, settings.repeats) == (7, 0, 2)
    assert (settings.workers, settings.pool_size, settings.pin) == (3, 16, True)
    assert settings.servers == ("py-onnx", "candle")
    settings, _ = resolve(["--items", "1000", "--pin", "0", "--servers", "all"], environ=env)
    assert settings.items == (1000,) and settings.pin is False and settings.servers is None
    assert settings.concurrency == (4,)  # from the environment, no flag given


def test_empty_environment_variables_are_ignored():
    settings, _ = resolve([], environ={"ITEMS": "", "SERVERS": " "})
    assert settings.items == PROFILES["default"].items and settings.servers is None


@pytest.mark.parametrize("env, message", [
    ({"ITEMS": "0"}, "ITEMS: 0 is outside 1..1000"),
    ({"ITEMS": "ten"}, "ITEMS: 'ten' is not an integer"),
    ({"DURATION": "0"}, "DURATION: 0 is outside"),
    ({"PIN": "maybe"}, "PIN: 'maybe' is not a boolean"),
    ({"REPEATS": "1,2"}, "REPEATS takes one integer"),
    ({"CONCURRENCY": "1", "WRK_THREADS": "2"}, "wrk threads (2) must not exceed"),
])
def test_bad_settings_name_the_variable(env, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve([], environ=env)


def _spec(name, needs=()):
    from rankbench.servers import Prerequisite, ServerSpec
    return ServerSpec(name, language="python", http="x", runtime="x", interpreter="x", backend="x",
                      default_port=1, build_command=lambda common: ["true"],
                      prerequisites=tuple(Prerequisite("file", str(p), "make build") for p in needs))


def test_default_server_set_skips_servers_whose_prerequisites_are_missing(tmp_path):
    from bench import checks
    present = tmp_path / "present"
    present.write_text("")
    registry = {"a": _spec("a"), "b": _spec("b", [tmp_path / "missing"]), "c": _spec("c", [present])}
    chosen, skipped = checks.select_servers(None, registry)
    assert chosen == ["a", "c"] and list(skipped) == ["b"]
    assert skipped["b"] == [f"{tmp_path / 'missing'} (file; run `make build`)"]
    with pytest.raises(checks.CheckError, match="b needs .*missing \\(file; run `make build`\\), "
                                                "which is missing"):
        checks.select_servers(("a", "b"), registry)
    with pytest.raises(checks.CheckError, match=r"unknown server\(s\) z; registered: a, b, c"):
        checks.select_servers(("z",), registry)


def test_a_missing_module_prerequisite_names_the_make_target():
    from rankbench.servers import Prerequisite
    missing = Prerequisite("module", "no_such_module_rankbench", "make build")
    assert missing.missing() and missing.describe() == "no_such_module_rankbench (module; run `make build`)"
    assert not Prerequisite("module", "json", "make build").missing()
