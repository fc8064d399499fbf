"""Batching vs language (issue 15): each micro-batching server beside the per-request server it
varies (the pair that differs in the variant facet only), and every Python batching server against
every Rust server of the configuration, batching or not.

The mean batch size is requests over batches, pooled over the valid repeats, from the server's
own /stats (`batching` in server_info, reset with the stages before each measured window).
"""
from __future__ import annotations

from dataclasses import dataclass

from rankbench.servers import differing_facets

from analysis.comparisons import comparable
from analysis.load import Config
from analysis.stats import Stat, ratio_stat
from analysis.summaries import ServerSummary, Summary

BATCHING = "micro-batching"
PER_REQUEST = "per-request"


@dataclass
class BatchPair:
    per_request: ServerSummary
    batching: ServerSummary
    goodput_factor: Stat | None     # batching / per-request
    p50_factor: Stat | None         # batching / per-request (client latency)
    p99_factor: Stat | None


@dataclass
class Batching:
    config: Config
    cells: list[ServerSummary]                                 # every server, report order
    pairs: list[BatchPair]
    across: list[tuple[ServerSummary, ServerSummary, Stat | None]]  # (python batching, rust, a/b)


def variant(cell: ServerSummary) -> str | None:
    return cell.facts.get("variant") if cell.facts else None


def mean_batch_size(cell: ServerSummary) -> float | None:
    """Requests per batch over the cell's runs; None for a per-request server or when not recorded."""
    requests = batches = 0
    for run in cell.runs:
        block = (run.record.get("server_info") or {}).get("batching")
        if not isinstance(block, dict) or not isinstance(block.get("batches"), (int, float)):
            return None
        requests += block.get("requests") or 0
        batches += block["batches"]
    return requests / batches if batches else None


def batching(summary: Summary, config: Config) -> Batching | None:
    """None unless the configuration has a micro-batching server."""
    cells = [c for c in summary.servers_in(config) if comparable(c)]
    batch = [c for c in cells if variant(c) == BATCHING]
    if not batch:
        return None
    pairs = []
    for b in batch:
        for a in cells:
            if variant(a) == PER_REQUEST and differing_facets(a.facts.facets,
                                                              b.facts.facets) == ["variant"]:
                pairs.append(BatchPair(a, b, ratio_stat(b.goodput, a.goodput),
                                       _latency_ratio(b, a, 50), _latency_ratio(b, a, 99)))
    across = [(b, r, ratio_stat(b.goodput, r.goodput)) for b in batch
              if b.language == "python" and b.role == "model"
              for r in cells if r.language == "rust" and r.role == "model"]
    return Batching(config, cells, pairs, across)


def _latency_ratio(a: ServerSummary, b: ServerSummary, p: float) -> Stat | None:
    la, lb = a.latency_us.get(p), b.latency_us.get(p)
    return ratio_stat(la, lb) if la is not None and lb is not None else None
