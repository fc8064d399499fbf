"""Schema, deterministic data and the RankNet model: everything a benchmark run stands on."""
