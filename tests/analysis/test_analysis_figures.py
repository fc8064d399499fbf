"""Figures are written, are real PNGs of a sensible size with something drawn, carry axis labels
with units, and keep one colour per server."""
from __future__ import annotations

import re

import numpy as np
import pytest
from matplotlib.image import imread
from PIL import Image

from analysis import figures, write_report
from analysis.aggregate import summarize
from analysis.load import Config, load_results
from analysis_testlib import FIXTURES

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
UNIT = re.compile(r"µs|ms|responses/s|connections|items per request")


def check_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert 5_000 < len(data) < 400_000, (path, len(data))  # drawn, yet a small file
    width, height = Image.open(path).size
    assert 600 <= width <= 1000 and 300 <= height <= 750, (path, width, height)
    pixels = imread(path)[..., :3]
    drawn = np.mean(np.any(pixels < 0.9, axis=-1))  # share of pixels that are not white
    assert drawn > 0.03, (path, drawn)


def linked_images(report: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)


@pytest.mark.parametrize("fixture, expected", [
    ("bench", {"stages_rank_n10_c32.png", "stages_rank_n100_c32.png", "cpu_rank_n10_c32.png",
               "cpu_rank_n100_c32.png", "cpu_vs_items.png"}),
    ("sweep", {"throughput_vs_concurrency.png", "p99_vs_throughput.png", "cpu_vs_items.png",
               *(f"{kind}_rank_n{n}_c64.png" for kind in ("stages", "cpu")
                 for n in (1, 10, 100, 1000))}),
    ("hand", {"stages_rank_n10_c32.png", "cpu_rank_n10_c32.png"}),
])
def test_report_writes_and_links_every_figure(results_copy, fixture, expected):
    folder = results_copy(fixture)
    report = write_report(folder).read_text()
    written = {p.name for p in folder.glob("*.png")}
    assert written == expected
    assert set(linked_images(report)) == expected
    for name in sorted(written):
        check_png(folder / name)


def test_report_is_idempotent(results_copy):
    folder = results_copy("hand")
    first = write_report(folder).read_text()
    assert write_report(folder).read_text() == first


def axes_of(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


@pytest.fixture(scope="module")
def sweep():
    return summarize(load_results(FIXTURES / "sweep"))


def test_bar_figures_label_their_units(sweep):
    config = Config("rank", 10, 64)
    cells = sweep.servers_in(config)
    for fig in (figures.stage_figure(config, cells),
                figures.cpu_figure(config, cells + sweep.references_for(config))):
        for ax in axes_of(fig):
            assert UNIT.search(ax.get_xlabel()), ax.get_xlabel()
            assert ax.get_title()
        # one bar label per server, first server on top (the panels share the y axis)
        names = [t.get_text() for t in fig.axes[0].get_yticklabels()]
        assert names[-1] == "py-onnx" and "py-none (floor)" in names
        assert fig.legends, "stacked bars need a legend"


def test_sweep_figures_label_both_axes_with_units(sweep):
    palette = figures.colours(sweep)
    for build in (figures.throughput_figure, figures.p99_figure, figures.cpu_items_figure):
        fig = build(sweep, "rank", palette)
        panels = axes_of(fig)
        assert len(panels) == 4
        for ax in panels:
            assert UNIT.search(ax.get_xlabel()), (build.__name__, ax.get_xlabel())
            assert UNIT.search(ax.get_ylabel()), (build.__name__, ax.get_ylabel())
            assert ax.get_title()


def test_each_server_keeps_its_colour_across_figures(sweep):
    palette = figures.colours(sweep)
    assert len(set(palette.values())) == len(palette) == 5
    for build in (figures.throughput_figure, figures.cpu_items_figure):
        fig = build(sweep, "rank", palette)
        for ax in axes_of(fig):
            for line in ax.get_lines():
                server = line.get_label().removesuffix(" (floor)")
                if server in palette:
                    assert line.get_color() == palette[server], (build.__name__, server)
