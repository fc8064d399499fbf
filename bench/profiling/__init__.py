"""Whole-process CPU profiles of every server under the bench's load (`python -m bench.profile`).

Modules, in the order a run uses them:
  settings    the bench's settings and variables, with defaults for short profiles
  tools       perf / py-spy / inferno: found, checked (one line when profiling is not permitted),
              command lines, recorders started and stopped around a window
  session     per server: start as the bench does, warm up, an unprofiled and a profiled window
  stacks      perf script and py-spy raw output parsed into one frame model; folded stacks
  rules       the categories and the one table of rules that attributes a stack to one of them
  attribute   perf's samples per category, pending Python samples split with py-spy's names
  records     profile.jsonl records (pure functions)
  dbside      `python -m bench.profiling.dbside`: PostgreSQL's side (protocol per request, CPU and
              wake-ups per request under load, asyncpg alone at a given rate)
The report is analysis/profile_report.py; docs/profiles.md explains the method and the findings.
"""
