"""The contract's constants that every part of rankbench uses (docs/contract.md says what they mean).

One copy: the servers, the harness, the analysis and the tests import them from here.
"""
from __future__ import annotations

# In-process stages, in request order; `total` spans the whole request.
STAGES = ("parse", "db", "pre", "infer", "post", "total")
COMPUTE_STAGES = ("parse", "pre", "infer", "post")       # the CPU work between the db round trip
MEASURED_STAGES = STAGES[:-1]                             # every stage but the total
# Stages a variant adds (docs/contract.md): `queue`, arrival to batch start (micro-batching).
VARIANT_STAGES = ("queue",)
MICRO_BATCHING = "micro-batching"                          # the variant facet of batching servers

# Kinds of client-side errors, as wrk counts them.
ERROR_KINDS = ("connect", "read", "write", "status", "timeout")

# The results schema (runs.jsonl records, env.json) and what each version changed.
SCHEMA = 2
SCHEMA_HISTORY = {
    1: "the shared contract's record: client, stages, resources, warnings",
    2: "goodput (client.ok, client.goodput_rps) and validity (valid, invalid_reasons); run position in "
       "its repeat's rotated server order (position); cores_used per resource group over the load "
       "window; server user/system CPU split; runtime thread settings as the servers report them "
       "(fairness.runtime_threads); stage histograms; env.json: registry facets per server and a "
       "machine calibration; the ceiling from the servers' own database work (rankbench-ceiling)",
}
SUPPORTED_SCHEMAS = tuple(SCHEMA_HISTORY)

# The two statements of every request, as every server prepares them (one pooled connection).
USER_SQL = "SELECT features FROM users WHERE id = $1"
ITEMS_SQL = "SELECT id, features FROM items WHERE id = ANY($1)"
STATEMENTS = (USER_SQL, ITEMS_SQL)
# A micro-batching server widens the user statement to the batch's users.
BATCH_USERS_SQL = "SELECT id, features FROM users WHERE id = ANY($1)"
BATCH_STATEMENTS = (BATCH_USERS_SQL, ITEMS_SQL)


def statements_for(variant: str) -> tuple[str, ...]:
    """The statements a server of this variant may send."""
    return BATCH_STATEMENTS if variant == MICRO_BATCHING else STATEMENTS
