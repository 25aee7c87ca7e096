"""The project's own subcommands; each lives in its own module with a ``main(argv)``."""

from __future__ import annotations

import importlib

COMMANDS = {
    "demo": "recsys.commands.demo",
    "data": "recsys.commands.data",
    "evaluate": "recsys.commands.evaluate",
    "compare": "recsys.commands.compare",
    "recommend": "recsys.commands.recommend",
    "export": "recsys.commands.export",
}


def run(name: str, argv: list[str]) -> None:
    """Run subcommand ``name`` with its arguments."""
    importlib.import_module(COMMANDS[name]).main(argv)
