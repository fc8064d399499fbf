"""Helpers of the analysis tests: fixture folders copied to a temporary place (the report is
written into the results folder, never into the committed fixtures) and a Markdown table reader.
(A module of its own rather than conftest.py, so that importing it is unambiguous.)"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def results_copy(tmp_path):
    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(FIXTURES / name, target)
        return target
    return copy


def read_records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "runs.jsonl").read_text().splitlines() if line]


def write_records(folder: Path, records: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def section(markdown: str, heading: str) -> str:
    """The text of the section whose '## ' heading starts with `heading` (to the next '## ')."""
    start = markdown.index("\n" + heading) + 1
    end = markdown.find("\n## ", start + len(heading))
    return markdown[start:] if end < 0 else markdown[start:end]


def tables(text: str) -> list[tuple[list[str], dict[str, list[str]]]]:
    """Every Markdown table in `text` as (header, {first cell: row cells}); a row is also found
    as "first cell / second cell" when the first cell repeats."""
    found = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("| --"):
            header = _cells(lines[i])
            rows = {}
            i += 2
            while i < len(lines) and lines[i].startswith("| "):
                cells = _cells(lines[i])
                rows.setdefault(cells[0], cells)  # first row wins; "a / b" keys every row
                if len(cells) > 1:
                    rows[f"{cells[0]} / {cells[1]}"] = cells
                i += 1
            found.append((header, rows))
        else:
            i += 1
    return found


def table_cell(text: str, row: str, column: str, index: int = 0) -> str:
    """One cell of the index-th table in `text` that has this column and row."""
    matches = [(h, rows) for h, rows in tables(text) if column in h and row in rows]
    header, rows = matches[index]
    return rows[row][header.index(column)]


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split(" | ")]
