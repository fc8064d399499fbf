"""The recipe for adding a server, as code: one registry entry and nothing else.

Loaded as a pytest plugin (`-p recipe_plugin`) or imported by tests/test_recipe.py's bench runner,
it registers RECIPE_NAME: py-none's stack under another name and port, the throwaway server that
proves the conformance suite, the bench plan and the report pick a new entry up with no other edit.
"""
from __future__ import annotations

from recipe_names import RECIPE_NAME, RECIPE_PORT

from rankbench.servers import SERVERS, with_name


def register() -> None:
    template = next(s for s in SERVERS.values() if s.language == "python" and s.role == "floor")
    SERVERS.setdefault(RECIPE_NAME, with_name(template, RECIPE_NAME, RECIPE_PORT))


register()   # on import: `-p recipe_plugin` loads it before the suites choose their servers
