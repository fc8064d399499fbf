"""The database ceiling asks for the very ids wrk's rank.lua sends: both implement Park-Miller's
generator; this runs the real Lua script in wrk against the fake server, which records the bodies,
and compares them with `rankbench-ceiling --print-requests`."""
from __future__ import annotations

import json
import subprocess

import pytest

from bench import wrk
from rankbench import config


@pytest.mark.parametrize("items, seed", [(10, 1), (3, 42)])
def test_wrk_script_and_ceiling_draw_the_same_requests(fake_server, tmp_path, items, seed):
    if not config.CEILING_BINARY.exists():
        pytest.fail(f"{config.CEILING_BINARY} is missing: run `make build`")
    bodies = tmp_path / "bodies.txt"
    port = fake_server("--record-bodies", str(bodies))
    script = {"items": items, "top_k": 5, "user_min": 1, "user_max": 200_000, "item_min": 1,
              "item_max": 100_000, "seed": seed}
    # One connection: requests leave in pool order.
    argv = wrk.command(f"http://127.0.0.1:{port}/rank", "rank", threads=1, connections=1,
                       duration_s=1, timeout_s=5, script_args=script)
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    sent = [json.loads(line) for line in bodies.read_text().splitlines()]
    assert len(sent) >= 20
    printed = subprocess.run(
        [str(config.CEILING_BINARY), "--print-requests", "20", "--items", str(items),
         "--seed", str(seed)], check=True, capture_output=True, text=True).stdout
    expected = [json.loads(line) for line in printed.splitlines()]
    # wrk calls request() once per thread before the first send (to build its first request), so
    # the pool's first request is drawn but the second is the first one sent: same pool, same order.
    assert [{"user_id": r["user_id"], "item_ids": r["item_ids"]} for r in sent[:19]] == expected[1:]
    assert all(len(set(r["item_ids"])) == items for r in expected)
