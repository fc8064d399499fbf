"""Thresholds that both the harness (warnings in runs.jsonl) and the analysis (the report) apply.

One copy, so a run the harness flags is flagged by the report for the same reason.
"""
from __future__ import annotations

LOAD_SATURATED_CORES = 0.90     # a load generator thread above 90% of a core may be the bottleneck
OTHER_LOAD_SHARE = 0.10         # CPU of processes outside the run, as a share of the machine
FOREIGN_DB_SHARE = 0.01         # other database clients' CPU, as a share of the window
HISTOGRAM_COUNT_TOLERANCE = 0.01
SPREAD_WARNING = 0.10           # a repeat more than 10% from the median of its cell
RESPONSE_SIZE_TOLERANCE = 0.01  # mean response bodies of servers answering the same requests
POSITION_EFFECT = 0.05          # median ratio of a run to its cell's median, by position in the order
