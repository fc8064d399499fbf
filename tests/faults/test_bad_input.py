"""Issue 7, item 1: the bad-input corpus (corpus.py) against every server, one test per case.

Per case: the answer is one the contract allows; a 4xx is a short JSON error; a readable request
leaves the connection usable (a valid request on it gets 200); pipelined follow-ups are answered in
order; and afterwards the server is alive and answers a valid request on a new connection.
"""
from __future__ import annotations

import pytest

from . import record
from .checks import error_problems
from .conftest import assert_serves
from rankbench.servers import SERVERS

from .corpus import CASES, KNOWN_DEVIATIONS, VALID_REQUEST, check_valid_answer, shorten
from .rawhttp import Connection, Response


def _judge(case, response: Response, expect: frozenset[str]) -> list[str]:
    problems = []
    if response.label not in expect:
        problems.append(f"answer {response.label}, expected {' or '.join(sorted(expect))}")
    if response.outcome != "response":
        return problems
    if response.status >= 400:
        problems += error_problems(response, case.request)
    elif response.status == 200 and case.check is not None and response.label in expect:
        problem = case.check(response.body)
        if problem:
            problems.append(problem)
    return problems


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(server_name, server, case):
    deviation = KNOWN_DEVIATIONS.get((SERVERS[server_name].language, case.name))
    expect = frozenset({deviation[0]}) if deviation else case.expect
    keeps_connection = case.keeps_connection and deviation is None
    conn = Connection(server.host, server.port)
    answers: list[Response] = []
    try:
        conn.send(case.request)
        if case.half_close:
            conn.half_close()
        first = conn.read_response()
        answers.append(first)
        problems = _judge(case, first, expect)
        for index, label in enumerate(case.followups, start=2):
            follow = conn.read_response()
            answers.append(follow)
            problems += [f"answer #{index}: {p}" for p in
                         _judge(case, follow, frozenset({label}))]
        if keeps_connection and not problems:
            conn.send(VALID_REQUEST)
            again = conn.read_response()
            answers.append(again)
            if again.label != "200":
                problems.append(f"the connection did not survive the answer: a valid request on "
                                f"it got {again.label}")
            elif check_valid_answer(again.body):
                problems.append(f"valid request on the same connection: "
                                f"{check_valid_answer(again.body)}")
    finally:
        conn.close()
    record.record("answer", server=server_name, case=case.name, group=case.group,
                  expected=" or ".join(sorted(expect)), label=first.label, ok=not problems,
                  deviation=deviation[1] if deviation else None,
                  problems=problems, elapsed_s=round(first.elapsed_s, 4),
                  sent=shorten(case.request, 300),
                  received=[shorten(a.raw, 400) for a in answers])
    detail = "\n".join(f"  received: {a.raw[:400]!r}" for a in answers)
    assert not problems, (f"{server_name} / {case.name}: " + "; ".join(problems) +
                          f"\n  sent: {case.request[:300]!r}\n{detail}")
    assert_serves(server, f"after case {case.name}")
