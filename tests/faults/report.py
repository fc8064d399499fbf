"""Run the fault suite and write docs/robustness.md from what the servers actually answered.

    .venv/bin/python -m tests.faults.report                      # every available server, `ci`
    .venv/bin/python -m tests.faults.report --servers py-onnx,candle --profile full
    .venv/bin/python -m tests.faults.report --records run.jsonl  # re-render a recorded run

The suite runs under pytest with RANKBENCH_FAULTS_RECORD pointing at a JSON-lines file; every test
records its outcome and the facts it observed (record.py). This module only reads those records
and formats them: nothing in the document is typed by hand. The exit status is pytest's, so a run
with failures still writes the document (that is when it matters most) and then fails.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from rankbench.config import ROOT

from . import record
from .corpus import CASES

DOC = ROOT / "docs" / "robustness.md"

TEST_TITLES = {
    "test_bad_input": "bad-input corpus case",
    "test_fuzz": "fuzzing (seeded mutator)",
    "test_slowloris": "slowloris + normal client",
    "test_concurrent_connections": "concurrent connections",
    "test_aborted_requests": "aborted requests (fds, RSS back)",
    "test_idle_connections_closed": "idle connections closed",
    "test_database_outage": "database stopped and restarted under wrk",
    "test_slow_database": "slow database (table locked)",
    "test_pool_exhaustion": "pool exhaustion (512 connections, pool 8)",
    "test_sigterm_under_load": "SIGTERM under load",
    "test_binds_loopback_by_default": "loopback bind by default",
    "test_api_key_flag": "API key via --api-key",
    "test_api_key_from_environment": "API key via RANKBENCH_API_KEY",
    "test_api_key_off_by_default": "API key off by default",
    "test_empty_api_key_refused": "empty --api-key refused",
    "test_sql_values_are_bound_parameters": "SQL values bound as parameters",
}


def cell(text) -> str:
    """Text safe inside a GitHub markdown table cell."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("`", "'")


def code(text, limit: int = 90) -> str:
    text = str(text)
    if len(text) > limit:
        text = text[:limit - 3] + "..."
    return "`" + text.replace("`", "'").replace("|", "\\|") + "`"


def run_suite(servers: str | None, profile: str, records: Path, pytest_args: list[str]) -> int:
    env = dict(os.environ, RANKBENCH_FAULTS_RECORD=str(records), RANKBENCH_FAULTS=profile)
    if servers:
        env["RANKBENCH_SERVERS"] = servers
    argv = [sys.executable, "-m", "pytest", str(ROOT / "tests" / "faults"), "-q",
            "-p", "no:cacheprovider", *pytest_args]
    print(f"report: {' '.join(argv)} (RANKBENCH_FAULTS={profile}"
          f"{', RANKBENCH_SERVERS=' + servers if servers else ''})", flush=True)
    started = time.monotonic()
    code = subprocess.run(argv, cwd=ROOT, env=env).returncode
    # Kept with the records, so that re-rendering them (--records) gives the same document.
    record.record_to(records, "run", exit_code=code, profile=profile, servers=servers or "",
                     seconds=round(time.monotonic() - started, 1), git=_git(),
                     finished_at=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    return code


def _git() -> str:
    def run(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else ""
    sha = run("rev-parse", "--short", "HEAD") or "unknown"
    changed = [line for line in run("status", "--porcelain").splitlines() if line.strip()]
    return f"{sha}{f' + {len(changed)} uncommitted or untracked paths' if changed else ''}"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def render(rows: list[dict], profile: str, exit_code: int | None = None) -> str:
    by_kind: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_kind[row["kind"]].append(row)
    tests = by_kind["test"]
    servers = list(dict.fromkeys(t["server"] for t in tests if t.get("server")))
    first = lambda kind, server: next((r for r in by_kind[kind] if r["server"] == server), None)  # noqa: E731
    wall = defaultdict(float)
    for phase in by_kind["phase"]:
        if phase.get("server"):
            wall[phase["server"]] += phase["duration_s"]

    out: list[str] = []
    add = out.append
    run = next((r for r in reversed(by_kind["run"])), {})
    finished = run.get("finished_at") or dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    add("# Robustness of the rankbench servers\n")
    add(f"Generated by `python -m tests.faults.report` from a run of the fault suite "
        f"(`tests/faults/`, issue 7) that finished {finished}: git {run.get('git') or _git()}, "
        f"profile `{profile}`, "
        f"{_cpu()}, {os.cpu_count()} cores, Python {platform.python_version()}. "
        f"Every figure below is what the servers answered in that run; do not edit by hand, "
        f"run the generator again.\n")
    exit_code = run.get("exit_code", exit_code)
    failures = sum(1 for t in tests if t["outcome"] == "failed")
    if failures or exit_code not in (None, 0):
        add(f"**The run had {failures} failing tests (pytest exit {exit_code}).** They are listed "
            f"per server under *Failures*.\n")
    add("What the suite does (details in each test module's docstring): a corpus of "
        f"{len(CASES)} bad or borderline requests sent over raw sockets; seeded fuzzing; "
        "slowloris, idle, concurrent and aborted connections; the database stopped and "
        "restarted under wrk load, a table locked, the pool starved; SIGTERM under load; "
        "loopback bind, API key and SQL parameter checks. Timing bounds are hang detectors "
        "(see `tests/faults/profile.py`), not performance targets.\n")

    # -- summary ----------------------------------------------------------------------------------
    add("## Summary\n")
    add("| server | tests run | passed | failed | skipped | corpus cases passed | fuzz cases "
        "(failed) | 503 while DB down (max answer time) | first 200 after DB restart | "
        "throughput back to 90 % after restart | suite time |")
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for server in servers:
        mine = [t for t in tests if t["server"] == server]
        count = lambda outcome: sum(1 for t in mine if t["outcome"] == outcome)  # noqa: E731
        corpus = [t for t in mine if t["test"] == "test_bad_input"]
        fuzz = first("fuzz", server)
        outage = first("db_outage", server)
        add("| " + " | ".join([
            server, str(len(mine)), str(count("passed")), str(count("failed")), str(count("skipped")),
            f"{sum(1 for t in corpus if t['outcome'] == 'passed')} / {len(corpus)}",
            f"{fuzz['cases']} ({fuzz['failed']})" if fuzz else "-",
            (f"{', '.join(outage['outage_labels'])} ({outage['outage_answer_max_s'] * 1000:.0f} ms)"
             if outage else "-"),
            (f"{outage['first_200_after_restart_s']:.2f} s"
             if outage and outage["first_200_after_restart_s"] is not None else "-"),
            (f"{outage['throughput_90pct_after_restart_s']:.1f} s"
             if outage and outage["throughput_90pct_after_restart_s"] is not None else "not reached"
             if outage else "-"),
            f"{wall[server]:.0f} s"]) + " |")
    add("")
    add("DB outage recovery: *first 200* is measured by a probe sending a valid request every "
        "50 ms, from the moment the restarted cluster accepts connections; *throughput back to "
        "90 %* is the end of the first whole second (wrk's per-second counts) with at least 90 % "
        "of the successful requests per second before the outage. The `ci` profile asserts the "
        "first (within 5 s) and only records the second; `full` asserts both.\n")

    # -- per-test outcomes -----------------------------------------------------------------------
    add("## Tests other than the corpus\n")
    add("| test | " + " | ".join(servers) + " |")
    add("|---|" + "---|" * len(servers))
    seen_tests = list(dict.fromkeys((t["test"], t.get("nodeid", "").split("[")[0])
                                    for t in tests if t["test"] != "test_bad_input" and t["server"]))
    for name, _ in seen_tests:
        cells = []
        for server in servers:
            results = [t for t in tests if t["test"] == name and t["server"] == server]
            if not results:
                cells.append("-")
                continue
            passed = sum(1 for t in results if t["outcome"] == "passed")
            label = "pass" if passed == len(results) else (
                "skip" if all(t["outcome"] == "skipped" for t in results) else "**FAIL**")
            cells.append(label if len(results) == 1 else f"{label} ({passed}/{len(results)})")
        add(f"| {cell(TEST_TITLES.get(name, name))} | " + " | ".join(cells) + " |")
    own = [t for t in tests if not t["server"]]
    if own:
        add(f"\nThe suite's own unit tests (no server, `test_suite_helpers.py`): "
            f"{sum(t['outcome'] == 'passed' for t in own)} of {len(own)} passed.")
    add("")

    # -- corpus table ----------------------------------------------------------------------------
    answers = {(a["server"], a["case"]): a for a in by_kind["answer"]}
    add("## Bad-input corpus: every server's answer\n")
    add("Each cell is the server's first answer (status, or `closed`/`reset`/`timeout` when there "
        "was none); **bold** marks a case the server failed (wrong status, an error body that is "
        "not short JSON, a kept-alive connection broken, or no 200 for a valid request afterwards; "
        "the reasons are under *Failures*).\n")
    add("| case | sent (start) | expected | " + " | ".join(servers) + " |")
    add("|---|---|---|" + "---|" * len(servers))
    for case in CASES:
        cells = []
        for server in servers:
            answer = answers.get((server, case.name))
            if answer is None:
                test = next((t for t in tests if t["server"] == server and t.get("case") == case.name),
                            None)
                cells.append("not run" if test is None else test["outcome"])
            else:
                label = answer["label"] if answer["ok"] else f"**{answer['label']}**"
                cells.append(f"{label} (deviation)" if answer.get("deviation") else label)
        add(f"| {case.name} | {code(case.excerpt(70), 60)} | {case.expected_label} | "
            + " | ".join(cells) + " |")
    deviations = sorted({(a["server"], a["case"], a["deviation"]) for a in by_kind["answer"]
                         if a.get("deviation")})
    if deviations:
        add("*(deviation)* marks a known deviation from the contract imposed by the server's HTTP "
            "stack (docs/contract.md); the case then expects that documented answer exactly:\n")
        for server, case_name, reason in deviations:
            add(f"- {server} / {case_name}: {reason}")
    add("")

    # -- figures ---------------------------------------------------------------------------------
    def figure_table(kind: str, title: str, columns: list[tuple[str, str]], intro: str = "") -> None:
        present = [r for r in by_kind[kind]]
        if not present:
            return
        add(f"## {title}\n")
        if intro:
            add(intro + "\n")
        add("| server | " + " | ".join(label for label, _ in columns) + " |")
        add("|---|" + "---:|" * len(columns))
        for r in present:
            values = []
            for _, key in columns:
                value = r
                for part in key.split("."):
                    value = value.get(part) if isinstance(value, dict) else None
                values.append(cell(value if value is not None else "-"))
            extra = f" ({r['table']})" if kind == "slow_db" else ""
            add(f"| {r['server']}{extra} | " + " | ".join(values) + " |")
        add("")

    figure_table("slowloris", "Slowloris", [
        ("slow conns held", "slow_connections"), ("opened in all", "opened"),
        ("normal requests", "normal_requests"), ("normal failures", "normal_failures"),
        ("p50 ms before", "normal_p50_ms_before"), ("p50 ms during", "normal_p50_ms_during"),
        ("max ms during", "normal_max_ms_during"),
        ("server cut slow conns after (median s)", "server_cut_after_s_median"),
        ("never cut", "survivors")])
    figure_table("idle", "Idle connections: closed by the server after (s)", [
        ("nothing sent", "closed_after_s.no_request"),
        ("idle after a response", "closed_after_s.after_response"),
        ("stalled mid-body", "closed_after_s.mid_body")],
        "`-` means still open when the bound ran out.")
    figure_table("concurrent", "Concurrent connections", [
        ("connections", "connections"), ("answered 200", "ok"), ("seconds", "seconds"),
        ("client sockets before", "client_sockets_before"),
        ("client sockets after", "client_sockets_after")])
    figure_table("aborted", "Aborted requests", [
        ("aborted", "aborted"), ("fds before", "fds_before"), ("fds after", "fds_after"),
        ("RSS MB before", "rss_mb_before"), ("RSS MB after", "rss_mb_after")],
        "Half abort mid-request (partial request line, head, body or chunk; FIN or RST), half "
        "mid-response (RST right after the request, after the first bytes of the answer, or "
        "during four pipelined answers).")
    figure_table("db_outage", "Database outage under wrk load", [
        ("rps before", "baseline_rps"), ("stop took s", "stop_s"), ("down s", "down_s"),
        ("answers while down", "outage_labels"), ("max answer while down s", "outage_answer_max_s"),
        ("first 200 after restart s", "first_200_after_restart_s"),
        ("90 % throughput after restart s", "throughput_90pct_after_restart_s"),
        ("wrk 503", "wrk_503"), ("wrk other 5xx", "wrk_other_5xx"),
        ("socket errors", "wrk_socket_errors")])
    figure_table("slow_db", "Slow database (table locked, 12 concurrent requests, pool 8)", [
        ("statement timeout s", "statement_timeout_s"), ("answers", "labels"),
        ("first 8 answered within s", "answer_s_first_8_max"), ("all answered within s", "answer_s_max"),
        ("after release", "after_release")])
    figure_table("pool_exhaustion", "Pool exhaustion (wrk -c512, pool 8)", [
        ("requests", "requests"), ("rps", "rps"), ("statuses", "statuses"),
        ("p50 ms", "p50_ms"), ("p99 ms", "p99_ms"), ("max ms", "max_ms")])
    figure_table("shutdown", "SIGTERM under load (2 workers)", [
        ("blocked in DB at SIGTERM", "lock_waiters_at_sigterm"),
        ("accepted before SIGTERM", "accepted_before_sigterm"),
        ("of those answered 200", "accepted_answered_200"),
        ("after SIGTERM", "after_sigterm"), ("exit code", "exit_code"),
        ("exit after s", "exit_after_s")])

    # -- failures --------------------------------------------------------------------------------
    failed = [t for t in tests if t["outcome"] == "failed"]
    add("## Failures\n")
    if not failed:
        add("None.\n")
    for server in servers:
        mine = [t for t in failed if t["server"] == server]
        if not mine:
            continue
        add(f"### {server}\n")
        for t in mine:
            title = t["case"] or TEST_TITLES.get(t["test"], t["test"])
            answer = answers.get((server, t["case"])) if t["case"] else None
            if answer:
                add(f"- **{t['case']}**: {cell('; '.join(answer['problems']))}  ")
                add(f"  sent {code(answer['sent'], 160)}  ")
                for received in answer["received"][:2]:
                    add(f"  received {code(received or '(nothing)', 240)}  ")
            else:
                lines = [line.strip() for line in (t.get("message") or "").splitlines() if line.strip()]
                text = lines[0] if lines else ""
                if len(lines) > 1 and text.endswith(":"):   # the reason is at the end (stderr tail)
                    text = f"{text} ... {lines[-1]}"
                add(f"- **{title}**: {cell(text)[:600]}")
        add("")
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.report",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--servers", help="comma list (default: RANKBENCH_SERVERS, else every "
                                          "server whose prerequisites exist)")
    parser.add_argument("--profile", choices=["ci", "full"],
                        default=os.environ.get("RANKBENCH_FAULTS", "ci") or "ci")
    parser.add_argument("--out", type=Path, default=DOC)
    parser.add_argument("--records", type=Path,
                        help="render this recorded run instead of running the suite")
    parser.add_argument("--keep-records", type=Path, help="where to keep the run's records")
    parser.add_argument("pytest_args", nargs="*", help="passed on to pytest (after --)")
    args = parser.parse_args(argv)
    exit_code = None
    if args.records:
        if not args.records.exists():
            print(f"report: no such records file: {args.records}", file=sys.stderr)
            return 1
        path = args.records
    else:
        path = args.keep_records or Path(tempfile.mkstemp(prefix="faults-", suffix=".jsonl")[1])
        path.write_text("")
        exit_code = run_suite(args.servers or os.environ.get("RANKBENCH_SERVERS"), args.profile,
                              path, args.pytest_args)
    rows = record.read(str(path))
    run = next((r for r in reversed(rows) if r["kind"] == "run"), None)
    profile = run["profile"] if run else args.profile
    if not any(r["kind"] == "test" for r in rows):
        print(f"report: the run recorded no test (pytest exit {exit_code}); {args.out} left as it is",
              file=sys.stderr)
        return exit_code or 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(rows, profile, exit_code))
    print(f"report: wrote {args.out} ({len(rows)} records from {path})")
    return exit_code or 0


if __name__ == "__main__":
    sys.exit(main())
