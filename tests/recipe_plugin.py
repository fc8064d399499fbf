"""The recipe for adding a server, as code: one registry entry and nothing else.

Loaded as a pytest plugin (`-p recipe_plugin`) or imported by tests/test_recipe.py's bench runner,
it registers RECIPE_NAME: py-none's stack under another name and port, the throwaway server that
proves the conformance suite, the bench plan and the report pick a new entry up with no other edit.
"""
from __future__ import annotations

from rankbench.servers import SERVERS, with_name

RECIPE_NAME = "recipe-floor"
RECIPE_PORT = 8099


def register() -> None:
    template = next(s for s in SERVERS.values() if s.language == "python" and s.role == "floor")
    SERVERS.setdefault(RECIPE_NAME, with_name(template, RECIPE_NAME, RECIPE_PORT))


register()
