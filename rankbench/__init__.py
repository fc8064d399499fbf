"""Shared pieces of rankbench: paths and defaults, the server registry, the reference model."""
