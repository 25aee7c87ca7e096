"""The ``recsys`` console script: the project's own commands (``demo``, ``data``, ``evaluate``,
``compare``, ``recommend``, ``export``) and LightningCLI's ``fit|validate|test|predict``.

Project errors (``RecsysError``) print one line and exit with code 2 on the console; called
from Python (``main([...])``: tests, notebooks) they are raised.
"""

from __future__ import annotations

import sys

from recsys.commands import COMMANDS, run
from recsys.errors import RecsysError

__all__ = ["main", "console"]

_IS_CONSOLE = False


def main(argv: list[str] | None = None) -> None:
    """Run ``recsys ARGV``: one of the project's commands, else a LightningCLI subcommand."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in COMMANDS:
            run(argv[0], argv[1:])
            return
        from recsys.train.cli import run_cli  # torch + Lightning only for the training commands

        run_cli(argv)
    except RecsysError as e:
        if not _IS_CONSOLE:  # called from Python (tests, notebooks): keep the exception
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def console() -> None:
    """The ``recsys`` console script: project errors print one line and exit with code 2."""
    global _IS_CONSOLE
    _IS_CONSOLE = True
    main()


if __name__ == "__main__":
    main()
