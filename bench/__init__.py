"""The rankbench harness behind `make bench`: `python -m bench [--profile default|quick|sweep]`.

Modules, in the order a run uses them:
  settings     profiles, environment variables and flags -> Settings
  checks, db   prerequisites (tools, artifacts, binaries, cluster, seeded id ranges)
  plan         interleaved run order (A B C ceiling, A B C ceiling, ...) and time estimates
  verify       200 fixed requests per server against the numpy reference, before any load
  runner       one run: start server, /health, warm-up, /stats/reset, measured wrk, /stats, stop
  procs        process groups, exact rusage of wrk/pgbench (wait4), stop-everything on Ctrl-C
  sampler      CPU seconds and RSS of the server tree and the cluster's postgres processes (10 Hz)
  wrk, pgbench command lines and parsing; histogram: exact latency histograms and percentiles
  pinning      PIN=1 cpu sets; environment: env.json

Each line of runs.jsonl is the contract's record (schema 1) plus:
  seed                      request-generator seed of this repeat (the same for every server)
  client.histogram          measured latencies [[value_us, count], ...], one count per response
                            (wrk's coordinated-omission correction undone; see histogram.py)
  client.latency_us         mean/stdev/max/percentiles of that histogram (wrk's percentile rule)
  client.latency_us_wrk_corrected, client.co_interval_us   wrk's own figures and how to redo them
  client.duration_s, bytes, threads, connections, script_config (wrk); clients, statements,
        array_pool, result_format, transactions_total (pgbench)
  resources.server          + pss_end_mb, threads_end; resources.db + pss_end_mb
  resources.db_foreign      backends of other clients of the cluster during the run (not in `db`)
  resources.load            wrk: CPU between the end of init() and done() (process_cpu_s = whole
                            life, from wait4); pgbench: CPU after the warm-up
  resources.harness, resources.machine   this process's CPU; the machine's process CPU (busy),
                            irq+softirq and steal CPU, and busy CPU of processes not in this run
  server_info               /health body, /stats server/backend/workers/requests/errors, port,
                            startup_s, stop_s, exit_code, log paths
  fairness                  workers, pool_size, wrk_threads, intra_op_threads, build, pinning
  db_statements             statement texts the server's backends last ran (pg_stat_activity)
"""
