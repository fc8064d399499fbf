"""The fault suite (issue 7): bad input, fuzzing, abusive clients, database faults, shutdown and
security, run against every server of `rankbench.servers.SERVERS`.

    RANKBENCH_SERVERS=py-onnx,candle RANKBENCH_FAULTS=ci .venv/bin/python -m pytest tests/faults
    .venv/bin/python -m tests.faults.report     # run the suite, write docs/robustness.md
    .venv/bin/python -m tests.faults.soak       # the soak profile behind `make soak`

The suite runs its servers against a throwaway PostgreSQL cluster of its own (cluster.py), never the
shared one in .bench/pg, because some cases stop the database.
"""
