"""Issue 7, item 2: a seeded mutator (fuzz.py) over valid requests, a fixed number of cases.

No case may get a 5xx, a malformed answer or no answer at all (hang), or crash the server; JSON-level
cases (correct framing) must get 200, 400 or 404 and a JSON error; byte-level cases may also get the
other 4xx of the contract, or a close. The seed is RANKBENCH_FUZZ_SEED (default 7); a failing case
is reproduced from its index alone: `fuzz.mutated_request(seed, index)`.
"""
from __future__ import annotations

import os
from collections import Counter

from . import record
from .checks import error_problems
from .conftest import assert_serves, log_size, new_log_trouble
from .fuzz import mutated_request
from .rawhttp import exchange

JSON_ALLOWED = {"200", "400", "404"}
BYTES_ALLOWED = {"200", "400", "404", "405", "413", "414", "431", "closed", "reset"}


def test_fuzz(server_name, server, fault_profile):
    seed = int(os.environ.get("RANKBENCH_FUZZ_SEED", "7"))
    offset = log_size(server)
    counts: Counter = Counter()
    failures: list[str] = []
    for index in range(fault_profile.fuzz_cases):
        kind, data = mutated_request(seed, index)
        response = exchange(server.host, server.port, data, half_close=kind == "bytes")
        counts[f"{kind}:{response.label}"] += 1
        problems = []
        allowed = JSON_ALLOWED if kind == "json" else BYTES_ALLOWED
        if response.label not in allowed:
            problems.append(f"answer {response.label}")
        elif kind == "json" and response.status >= 400:
            problems += error_problems(response, data)
        if problems and len(failures) < 10:
            failures.append(f"case {index} ({kind}): {'; '.join(problems)}\n"
                            f"    sent: {data[:300]!r}\n    received: {response.raw[:300]!r}")
        elif problems:
            failures.append("")
        if server.process.poll() is not None:
            failures.append(f"case {index} ({kind}) killed the server (exit "
                            f"{server.process.returncode}); sent: {data[:300]!r}")
            break
    trouble = new_log_trouble(server, offset)
    record.record("fuzz", server=server_name, seed=seed, cases=sum(counts.values()),
                  failed=len(failures), counts=dict(sorted(counts.items())),
                  stderr_trouble=trouble[:5])
    assert not failures, (f"{server_name}: {len(failures)} of {fault_profile.fuzz_cases} fuzz "
                          f"cases failed (seed {seed}); first ones:\n" +
                          "\n".join(f for f in failures if f))
    assert not trouble, f"{server_name} logged unhandled errors during fuzzing: {trouble[:5]}"
    assert_serves(server, "after fuzzing")
