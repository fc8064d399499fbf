"""Percentiles across repeats come from merged histograms: checked against numpy on the raw
samples the histograms were built from, through the whole load -> aggregate -> format path.

Rank convention (wrk's, which the harness also uses): the p-th percentile of N requests is the
sample of rank floor(p/100 * N) + 1 in sorted order, capped at N."""
from __future__ import annotations

import copy
import math
from fractions import Fraction

import numpy as np
import pytest
from hdrh.histogram import HdrHistogram

from analysis import write_report
from analysis.aggregate import summarize
from analysis.summaries import PERCENTILES
from analysis.format import num
from analysis.load import Config, load_results
from analysis_testlib import FIXTURES, read_records, section, table_cell, write_records

# Three repeats that differ, as repeats do when one of them meets a noisy neighbour: the third
# is slower with a longer tail. Where p% of N is a whole number, floating point picks between two
# neighbouring ranks (in wrk as here); the sizes (N = 80,003) keep every percentile of the report
# away from such a tie, so the exact-arithmetic oracle below is unambiguous.
REPEATS = [  # (median latency us, log-normal sigma, requests)
    (8_000, 0.30, 20_001),
    (8_500, 0.35, 30_001),
    (14_000, 0.45, 30_001),
]
INFER = [(55, 0.20), (56, 0.25), (70, 0.40)]  # stage "infer": median us, sigma
CONFIG = Config("rank", 10, 32)


def pairs(samples: np.ndarray) -> list[list[int]]:
    """The harness's encoding: exact [[value_us, count], ...] sorted by value."""
    values, counts = np.unique(samples, return_counts=True)
    return [[int(v), int(c)] for v, c in zip(values, counts)]


def hdr(samples: np.ndarray, significant_figures: int = 3) -> str:
    histogram = HdrHistogram(1, 60_000_000, significant_figures)
    values, counts = np.unique(samples, return_counts=True)
    for value, count in zip(values.tolist(), counts.tolist()):
        histogram.record_value(value, count)
    return histogram.encode().decode("ascii")


def rank_of(p: float, n: int) -> int:
    exact = Fraction(str(p)) * n / 100
    assert exact.denominator != 1 or p == 100  # no tie, by the choice of sizes
    return min(math.floor(exact) + 1, n)


def truth(samples: np.ndarray, p: float) -> float:
    """numpy on the raw samples: the sample of wrk's rank."""
    return float(np.sort(samples)[rank_of(p, len(samples)) - 1])


def wrk_percentile(ordered: np.ndarray, p: float) -> float:
    return float(ordered[min(math.floor(p / 100 * len(ordered)) + 1, len(ordered)) - 1])


def build(tmp_path_factory, encode) -> tuple:
    """A results folder whose py-onnx runs carry histograms of known raw samples."""
    rng = np.random.default_rng(20261129)
    base = {r["repeat"]: r for r in read_records(FIXTURES / "hand") if r["server"] == "py-onnx"}
    client_samples, infer_samples, records = [], [], []
    for repeat, ((median, sigma, n), (i_median, i_sigma)) in enumerate(zip(REPEATS, INFER)):
        samples = np.maximum(np.rint(rng.lognormal(math.log(median), sigma, n)), 1).astype(np.int64)
        infer = np.maximum(np.rint(rng.lognormal(math.log(i_median), i_sigma, n)), 1).astype(np.int64)
        client_samples.append(samples)
        infer_samples.append(infer)
        ordered = np.sort(samples)
        record = copy.deepcopy(base[repeat])
        record["client"].update(
            requests=n, rps=n / 10.0, ok=n, goodput_rps=n / 10.0, histogram=encode(samples),
            latency_us={"mean": float(samples.mean()), "stdev": float(samples.std()),
                        "max": float(ordered[-1]),
                        **{f"p{p:g}": wrk_percentile(ordered, p)
                           for p in (50, 75, 90, 95, 99, 99.9, 99.99)}})
        for stage in record["stages"].values():
            stage["count"] = n
            stage["sum_us"] = stage["mean_us"] * n
        record["stages"]["infer"].update(
            sum_us=float(infer.sum()), mean_us=float(infer.mean()),
            p99_us=wrk_percentile(np.sort(infer), 99), histogram=encode(infer))
        records.append(record)
    folder = tmp_path_factory.mktemp("merge") / "results"
    write_records(folder, records)
    return folder, np.concatenate(client_samples), np.concatenate(infer_samples), records


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return build(tmp_path_factory, pairs)


@pytest.fixture(scope="module")
def raw_hdr(tmp_path_factory):
    return build(tmp_path_factory, hdr)


def test_merged_client_percentiles_equal_numpy_on_raw_samples(raw):
    folder, samples, _, _ = raw
    cell = summarize(load_results(folder)).cells[(CONFIG, "py-onnx")]
    assert cell.latency_merged
    for p in PERCENTILES:
        stat = cell.latency_us[p]
        # exact histograms: the merged percentile IS the sample of that rank among all requests
        assert stat.value == truth(samples, p), p
        # and it agrees with numpy's own percentile up to the choice of neighbouring rank
        assert stat.value == pytest.approx(
            np.percentile(samples, p, method="inverted_cdf"), rel=5e-3), p
    assert cell.latency_us[100].value == samples.max()


def test_hdr_encoded_histograms_merge_within_their_precision(raw_hdr):
    """HdrHistogram strings are accepted too: the merged value is the top of the 3-significant-
    figure bucket that holds the true percentile of all requests."""
    folder, samples, _, _ = raw_hdr
    cell = summarize(load_results(folder)).cells[(CONFIG, "py-onnx")]
    buckets = HdrHistogram(1, 60_000_000, 3)
    for p in PERCENTILES[:-1]:
        value, expected = cell.latency_us[p].value, truth(samples, p)
        assert buckets.get_lowest_equivalent_value(int(value)) <= expected <= value, p
        assert value == buckets.get_highest_equivalent_value(int(value))


def test_median_of_run_percentiles_would_have_failed_this_check(raw):
    """The fixture discriminates: the shortcut (median over repeats of each run's p99) is far
    from the p99 of all requests, so a merge replaced by that shortcut fails the test above."""
    folder, samples, _, records = raw
    shortcut = float(np.median([r["client"]["latency_us"]["p99"] for r in records]))
    truth_p99 = truth(samples, 99)
    assert abs(shortcut - truth_p99) / truth_p99 > 0.10
    cell = summarize(load_results(folder)).cells[(CONFIG, "py-onnx")]
    assert cell.latency_us[99].value == truth_p99
    # the spread still shows each repeat's own p99, from its own histogram: wrk's figure
    assert list(cell.latency_us[99].values) == [r["client"]["latency_us"]["p99"] for r in records]


def test_merged_stage_percentile_matches_numpy(raw):
    folder, _, infer, _ = raw
    cell = summarize(load_results(folder)).cells[(CONFIG, "py-onnx")]
    stat = cell.stage_p99_us["infer"]
    assert stat.how == "merged"
    assert stat.value == truth(infer, 99)
    # stages without histograms stay medians of the runs' p99
    assert cell.stage_p99_us["parse"].how == "median-of-runs"


def test_report_prints_merged_percentiles_including_66_80_98(raw):
    folder, samples, _, _ = raw
    md = section(write_report(folder).read_text(), "## Latency percentiles")
    for p in (66, 80, 98, 99):
        shown = table_cell(md, "py-onnx", f"{p}%")
        assert shown == num(truth(samples, p) / 1000)  # derived, not n/a, not marked
    assert table_cell(md, "py-onnx", "from") == "merged histograms, 3 runs"
    assert table_cell(md, "py-onnx", "100%") == num(samples.max() / 1000)


def test_a_repeat_without_histogram_falls_back_and_says_so(raw, tmp_path):
    _, _, _, records = raw
    partial = copy.deepcopy(records)
    del partial[1]["client"]["histogram"]
    write_records(tmp_path / "r", partial)
    summary = summarize(load_results(tmp_path / "r"))
    cell = summary.cells[(CONFIG, "py-onnx")]
    assert not cell.latency_merged
    assert cell.latency_us[99].how == "median-of-runs"
    assert cell.latency_us[66] is None  # wrk does not report it: n/a, never interpolated
    assert any("only 2 of 3 repeats carry a latency histogram" in w.text for w in summary.findings)


def test_histogram_count_must_match_the_requests(raw, tmp_path):
    _, _, _, records = raw
    inflated = copy.deepcopy(records)
    inflated[0]["client"]["requests"] = 30_000  # histogram holds 20,000: requests lost?
    inflated[0]["warnings"] = []  # (the harness would have warned itself)
    write_records(tmp_path / "r", inflated)
    summary = summarize(load_results(tmp_path / "r"))
    assert any("latency histogram holds 20001 requests but the run counted 30000" in w.text
               for w in summary.findings)


def test_stage_percentiles_come_from_merged_stage_histograms(tmp_path):
    """Schema 2 records carry each stage's histogram. Two repeats of 100 requests: infer took 10 us
    98 times and 100 us twice, then 20 us 100 times. The p99 of all 200 requests is the value of
    rank floor(0.99 * 200 + 1) = 199: 98 values of 10, 100 of 20, then 100: 100 us. The median of
    the runs' own p99s (100 and 20) would say 60 us, a latency no request had."""
    base = [r for r in read_records(FIXTURES / "hand") if r["server"] == "py-onnx"][:2]
    for record, histogram in zip(base, ([[10, 98], [100, 2]], [[20, 100]])):
        for stage in record["stages"].values():
            stage.update(count=100, sum_us=stage["mean_us"] * 100)
        record["stages"]["infer"].update(histogram=histogram, p99_us=histogram[-1][0],
                                         sum_us=sum(v * c for v, c in histogram))
    write_records(tmp_path / "r", base)
    cell = summarize(load_results(tmp_path / "r")).cells[(CONFIG, "py-onnx")]
    stat = cell.stage_p99_us["infer"]
    assert (stat.value, stat.how, stat.values) == (100, "merged", (100, 20))
    assert cell.stage_p99_us["db"].how == "median-of-runs"  # no histogram: marked as such
    md = section(write_report(tmp_path / "r").read_text(), "## Where the time goes")
    assert table_cell(md, "py-onnx", "infer", index=1) == "100"    # the p99 table, unmarked
    assert table_cell(md, "py-onnx", "db", index=1).endswith("*")


def test_a_stage_histogram_missing_in_one_repeat_is_said(tmp_path):
    base = [r for r in read_records(FIXTURES / "hand") if r["server"] == "py-onnx"][:2]
    base[0]["stages"]["infer"]["histogram"] = [[55, base[0]["stages"]["infer"]["count"]]]
    write_records(tmp_path / "r", base)
    summary = summarize(load_results(tmp_path / "r"))
    assert summary.cells[(CONFIG, "py-onnx")].stage_p99_us["infer"].how == "median-of-runs"
    assert any("only 1 of 2 repeats carry a histogram of stage infer" in f.text
               for f in summary.findings)
