"""POST /rank: top-k, scores against the plain-numpy reference, ordering and ties, unknown items
and users. Score checks run only for servers with real scores; the floors (no model) get the rest."""
from __future__ import annotations

import random

import pytest

from rankbench.config import ITEMS_PER_SCALE, USERS_PER_SCALE

TOLERANCE = 1e-5
UNKNOWN_ITEMS = [0, -3, ITEMS_PER_SCALE * 1000 + 7, 2**62]
UNKNOWN_USER = USERS_PER_SCALE * 1000 + 123


def assert_sorted_by_score_then_id(items: list[dict]) -> None:
    for a, b in zip(items, items[1:]):
        assert a["score"] > b["score"] or (a["score"] == b["score"] and a["id"] < b["id"]), \
            f"not sorted by score descending, id ascending: {a} before {b}"


def assert_ranked_like_reference(items: list[dict], reference: dict[int, float], top_k: int) -> None:
    """The server's items are the reference's top-k: same scores (1e-5) and the same order, where
    only items whose reference scores are within the tolerance may trade places."""
    assert len(items) == min(top_k, len(reference)), \
        f"expected {min(top_k, len(reference))} items, got {len(items)}"
    ids = [item["id"] for item in items]
    assert len(set(ids)) == len(ids), f"an item appears twice: {ids}"
    for item in items:
        assert item["id"] in reference, f"item {item['id']} was not requested or does not exist"
        assert abs(item["score"] - reference[item["id"]]) <= TOLERANCE, \
            f"item {item['id']}: score {item['score']} != reference {reference[item['id']]:.8f}"
    assert_sorted_by_score_then_id(items)
    expected = sorted(reference.items(), key=lambda kv: (-kv[1], kv[0]))
    for position, item in enumerate(items):
        want_id, want_score = expected[position]
        assert abs(reference[item["id"]] - want_score) <= TOLERANCE, \
            f"position {position}: got item {item['id']} (reference {reference[item['id']]:.8f}), " \
            f"expected item {want_id} (reference {want_score:.8f})"


def _check_shape(response, user_id: int) -> list[dict]:
    assert response.status == 200, response
    assert response.headers.get("content-type", "").startswith("application/json")
    data = response.json()
    assert set(data) >= {"user_id", "items"} and data["user_id"] == user_id, data
    for item in data["items"]:
        assert set(item) == {"id", "score"}, item
        assert type(item["id"]) is int and type(item["score"]) is float, item
    return data["items"]


# (user, number of candidates, top_k): sizes across the contract's range, top_k below, at and above.
CASES = [(1, 10, 10), (7, 10, 3), (200_000, 1, 1), (4242, 100, 20), (123_456, 100, 1000),
         (99_999, 1000, 1000), (31_337, 1000, 5)]


@pytest.mark.parametrize("user_id,candidates,top_k", CASES)
def test_scores_and_top_k_match_reference(server, oracle, user_id, candidates, top_k):
    if not server.real_scores:
        pytest.skip(f"{server.name} computes no model scores (a floor)")
    rng = random.Random(user_id * 1000 + candidates)
    item_ids = rng.sample(range(1, ITEMS_PER_SCALE + 1), candidates)
    with server.connect() as conn:
        items = _check_shape(conn.rank(user_id, item_ids, top_k), user_id)
    assert_ranked_like_reference(items, oracle.scores(user_id, item_ids), top_k)


def test_top_k_defaults_to_10(server, oracle):
    item_ids = list(range(500, 530))
    with server.connect() as conn:
        items = _check_shape(conn.rank(11, item_ids), 11)
    assert len(items) == 10
    if server.real_scores:
        assert_ranked_like_reference(items, oracle.scores(11, item_ids), 10)


def test_found_items_only_and_each_once(server, oracle):
    """Unknown ids are left out and duplicates are scored once."""
    known = [17, 4, 99_000, 17, 4, 17]
    item_ids = known + UNKNOWN_ITEMS
    with server.connect() as conn:
        items = _check_shape(conn.rank(5, item_ids, 1000), 5)
    assert sorted(item["id"] for item in items) == [4, 17, 99_000]
    if server.real_scores:
        assert_ranked_like_reference(items, oracle.scores(5, item_ids), 1000)


def test_no_item_found_gives_empty_list(server):
    with server.connect() as conn:
        response = conn.rank(5, UNKNOWN_ITEMS, 10)
    assert response.status == 200, response
    assert response.json() == {"user_id": 5, "items": []}


def test_unknown_user_is_404_with_contract_message(server):
    with server.connect() as conn:
        response = conn.rank(UNKNOWN_USER, [1, 2, 3], 10)
        assert response.status == 404, response
        assert response.json() == {"error": f"user {UNKNOWN_USER} not found"}
        # Also when the items are unknown too: the user is checked first.
        response = conn.rank(UNKNOWN_USER, UNKNOWN_ITEMS, 10)
        assert response.status == 404, response


def test_ties_are_broken_by_id_ascending(server, oracle):
    """Floors score every item the same, so their order is exactly ids ascending; real servers
    must order by score, ids breaking exact ties (checked on the scores they report)."""
    item_ids = [90_001, 12, 5_000, 77, 3, 64_000, 12_345, 8, 41_000, 250]
    with server.connect() as conn:
        items = _check_shape(conn.rank(321, item_ids, 6), 321)
    if server.real_scores:
        assert_ranked_like_reference(items, oracle.scores(321, item_ids), 6)
    else:
        assert len({item["score"] for item in items}) == 1, items
        assert [item["id"] for item in items] == sorted(item_ids)[:6]


@pytest.mark.parametrize("user_id", [321, 77_777])
def test_twin_items_tie_exactly_and_rank_by_id_ascending(server, oracle, user_id):
    """The seed's twin items have identical features, so every runtime must give both the very same
    score and list the smaller id first: the tie rule, exercised with real scores."""
    from seed.data import TWIN_ITEMS

    # Each twin pair with a few other items between them in the request, the larger id first.
    item_ids = [i for original, twin in TWIN_ITEMS for i in (twin, twin + 3, original)]
    with server.connect() as conn:
        items = _check_shape(conn.rank(user_id, item_ids, 1000), user_id)
    position = {item["id"]: k for k, item in enumerate(items)}
    score = {item["id"]: item["score"] for item in items}
    for original, twin in TWIN_ITEMS:
        assert score[original] == score[twin], (original, twin, score[original], score[twin])
        assert position[twin] == position[original] + 1, \
            f"twins {original} and {twin} must be adjacent, the smaller id first: {items}"
    if server.real_scores:
        assert_ranked_like_reference(items, oracle.scores(user_id, item_ids), 1000)


def test_many_concurrent_connections_get_their_own_answers(server, oracle):
    """No cross-talk between requests in flight on different connections."""
    import concurrent.futures

    rng = random.Random(99)
    requests = [(rng.randint(1, USERS_PER_SCALE), rng.sample(range(1, ITEMS_PER_SCALE + 1), 10))
                for _ in range(24)]

    def one(request):
        user_id, item_ids = request
        with server.connect() as conn:
            return conn.rank(user_id, item_ids, 10)

    with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
        responses = list(pool.map(one, requests))
    for (user_id, item_ids), response in zip(requests, responses):
        items = _check_shape(response, user_id)
        if server.real_scores:
            assert_ranked_like_reference(items, oracle.scores(user_id, item_ids), 10)
        else:
            assert [item["id"] for item in items] == sorted(oracle.found_items(item_ids))[:10]
