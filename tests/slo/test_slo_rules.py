"""The capacity rule and the rate search (rankbench/slo.py) on synthetic measurements."""
from __future__ import annotations

import pytest

from rankbench import slo
from rankbench.slo import Point


def ok(rate: float, p99_ms: float) -> Point:
    return Point(offered_rps=rate, achieved_rps=rate, p99_ms=p99_ms)


def test_capacity_is_the_highest_passing_rate_below_the_first_failure():
    points = [ok(100, 2.0), ok(500, 4.0), ok(800, 12.0), ok(1000, 30.0), ok(1100, 400.0)]
    cap = slo.capacity(points, 25.0)
    assert (cap.rps, cap.bound, cap.lowest_failing) == (800, "bracketed", 1000)
    assert slo.capacity(points, 10.0).rps == 500
    assert slo.capacity(points, 50.0).rps == 1000


def test_a_pass_above_a_failure_does_not_raise_the_capacity_and_is_reported():
    points = [ok(100, 2.0), ok(500, 40.0), ok(800, 12.0), ok(1000, 60.0)]
    cap = slo.capacity(points, 25.0)
    assert cap.rps == 100 and cap.lowest_failing == 500
    assert cap.non_monotone == (800,)


@pytest.mark.parametrize("achieved, passes", [(990.0, True), (989.0, False), (1000.0, True)])
def test_the_achieved_rate_must_be_within_one_percent_of_the_offered_one(achieved, passes):
    assert Point(1000, achieved, 5.0).passes(25.0) is passes


def test_errors_or_no_latency_fail_a_rate_whatever_its_p99():
    assert not Point(1000, 1000, 5.0, errors=1).passes(25.0)
    assert not Point(1000, 1000, None).passes(25.0)
    assert Point(1000, 1000, 25.0).passes(25.0)          # "stays under": at most the objective
    assert not Point(1000, 1000, 25.001).passes(25.0)


def test_unbounded_capacities_say_which_side_they_are_on():
    everything = slo.capacity([ok(100, 1.0), ok(200, 1.0)], 25.0)
    assert (everything.rps, everything.bound, everything.describe()) == (200, "at least", ">= 200")
    nothing = slo.capacity([ok(100, 30.0), ok(200, 40.0)], 25.0)
    assert (nothing.rps, nothing.bound, nothing.describe()) == (None, "below", "< 100")
    assert slo.next_rate([ok(100, 1.0), ok(200, 1.0)], 25.0) is None
    # Nothing passed: halve the lowest rate, down to 1 req/s.
    assert slo.next_rate([ok(100, 30.0), ok(200, 40.0)], 25.0) == 50
    assert slo.next_rate([ok(1, 30.0)], 25.0) is None


def test_next_rate_bisects_the_bracket_and_stops_when_it_is_narrow():
    assert slo.next_rate([ok(800, 12.0), ok(1000, 30.0)], 25.0) == 900
    assert slo.next_rate([ok(990, 12.0), ok(1000, 30.0)], 25.0) is None  # 1% < 2% of 1000


def knee_server(knee_rps: float):
    """A synthetic server: p99 2 ms, rising steeply past `knee_rps`; it keeps up to 1.05x knee."""
    def measure(rate: float) -> Point:
        p99 = 2.0 if rate <= knee_rps else 2.0 + (rate - knee_rps) * 0.5
        achieved = min(rate, 1.05 * knee_rps)
        return Point(rate, achieved, p99)
    return measure


def test_ladder_then_refine_converges_on_the_knee():
    maximum, knee = 2000.0, 1234.0
    measure = knee_server(knee)
    points = [measure(rate) for rate in slo.ladder(maximum)]
    assert [p.offered_rps for p in points] == [200, 500, 1000, 1400, 1600, 1800, 2000, 2200]
    before = slo.capacity(points, 25.0)
    assert (before.rps, before.lowest_failing) == (1000, 1400)
    # p99 = 25 ms at knee + 46 = 1280 req/s: the true capacity.
    refined = slo.refine(points, 25.0, 3, measure)
    assert [p.offered_rps for p in refined[len(points):]] == [1200, 1300, 1250]
    after = slo.capacity(refined, 25.0)
    assert after.rps == 1250 and after.lowest_failing == 1300
    assert after.rps <= 1280 < after.lowest_failing
    # More runs narrow it further, and stop by themselves at the resolution.
    final = slo.refine(points, 25.0, 50, measure)
    cap = slo.capacity(final, 25.0)
    assert cap.lowest_failing - cap.rps <= slo.REFINE_RESOLUTION * cap.lowest_failing
    assert cap.rps <= 1280 < cap.lowest_failing
    assert len(final) - len(points) < 10


def test_the_refine_budget_is_a_bound():
    calls = []

    def measure(rate):
        calls.append(rate)
        return knee_server(1234.0)(rate)

    slo.refine([ok(1000, 2.0), ok(1400, 60.0)], 25.0, 2, measure)
    assert len(calls) == 2


def test_durations_hold_enough_requests_for_the_p99_within_bounds():
    assert slo.duration_s(100) == 60            # 10,000 requests would take 100 s
    assert slo.duration_s(400) == 25
    assert slo.duration_s(5000) == 10
    assert slo.duration_s(400) * 400 >= slo.MIN_REQUESTS


def test_servers_needed_rounds_up():
    assert slo.servers_needed(10_000, 3_000) == 4
    assert slo.servers_needed(10_000, 10_000) == 1
    assert slo.servers_needed(10_000, None) is None


def test_the_generator_warning_starts_above_its_share_of_the_limit():
    assert slo.generator_warning(7_900, 10_000, "oha") is None
    warning = slo.generator_warning(8_500, 10_000, "oha")
    assert warning and "85%" in warning and "10,000" in warning
    assert slo.generator_warning(50_000, None, "oha") is None


def test_point_of_reads_a_record_the_way_the_harness_writes_it():
    record = {"offered_rps": 1000.0, "client": {
        "goodput_rps": 995.0, "non2xx": 0, "latency_us": {"p99": 12_345},
        "errors": {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 3}}}
    point = slo.point_of(record)
    assert point == Point(1000.0, 995.0, 12.345, errors=3)
    assert not point.passes(25.0)  # three scheduled requests were never answered
