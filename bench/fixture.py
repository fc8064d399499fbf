"""`python -m bench.fixture`: expected /rank answers from the plain-numpy reference, for cargo test.

The Rust server's database tests compare its answers with these (artifacts/rank_fixture.json),
never with scores computed by the code under test. Requests: the verify step's generator (sizes 1 to
1000, duplicates, unknown ids, top_k below and above the candidates) plus one request over the seed's
twin items (exact ties under a real model). Format: {"tolerance", "cases": [{"request": {"user_id",
"item_ids", "top_k"}, "expected": {"user_id", "items": [{"item_id", "score"}]}}]}, items in the
contract's order (score desc, id asc), cut to top_k; an unknown user's expected is null.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rankbench import config

from bench import db, verify

CASES = 24
SEED = 20261201


def build(dsn: str, model_dir: Path) -> dict:
    from rankbench.reference import load_reference
    from seed.data import TWIN_ITEMS

    f = db.facts(dsn)
    requests = verify.make_requests(CASES, SEED, f.users.min, f.users.max, f.items.min, f.items.max)
    requests.append({"user_id": 4242, "item_ids": [i for pair in TWIN_ITEMS for i in reversed(pair)],
                     "top_k": 1000})
    users, items = db.fetch_features(dsn, sorted({r["user_id"] for r in requests}),
                                     sorted({i for r in requests for i in r["item_ids"]}))
    model = load_reference(model_dir)
    answers = verify.reference_answers(requests, users, items, model.scores)
    cases = []
    for request, answer in zip(requests, answers):
        expected = None if answer.scores is None else {
            "user_id": request["user_id"],
            "items": [{"item_id": i, "score": s} for i, s in answer.ranked(request["top_k"])]}
        cases.append({"request": request, "expected": expected})
    return {"tolerance": 1e-5, "seed": SEED, "cases": cases}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fixture", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=config.ARTIFACTS_DIR / "rank_fixture.json")
    args = parser.parse_args(argv)
    try:
        fixture = build(config.dsn(), config.ARTIFACTS_DIR)
    except (db.DatabaseError, OSError, ValueError) as exc:
        print(f"rank fixture: {exc} (run `make seed model`)", file=sys.stderr)
        return 1
    args.out.write_text(json.dumps(fixture, separators=(",", ":")) + "\n")
    print(f"rank fixture: {len(fixture['cases'])} cases -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
