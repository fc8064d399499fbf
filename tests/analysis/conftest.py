from analysis_testlib import results_copy  # noqa: F401  (registers the fixture)
