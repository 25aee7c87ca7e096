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
TRAINING = ("fit", "validate", "test", "predict")  # LightningCLI's subcommands

USAGE = """usage: recsys <command> [options]

Training (LightningCLI; `recsys fit --help` lists every option, it imports Lightning):
  fit | validate | test | predict   --config configs/<dataset>/base.yaml --config configs/<dataset>/<head>.yaml

The project's commands (`recsys <command> --help`):
  demo       train on the embedded synthetic data and print a small results table
  data       stats | check SOURCE: a dataset, a table file or a YAML data source
  evaluate   full-catalogue metrics of a checkpoint (valid, test or cold_items)
  compare    every head x seed x baseline on identical data, one report
  recommend  top-k for a user, a new user's history, or a batch of users (from a checkpoint or export)
  export     a serving folder: embeddings, vocabularies, FAISS index, manifest
"""


def main(argv: list[str] | None = None) -> None:
    """Run ``recsys ARGV``: one of the project's commands, else a LightningCLI subcommand."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):  # answered without importing torch or Lightning
        print(USAGE, end="")
        return
    try:
        if argv[0] in COMMANDS:
            run(argv[0], argv[1:])
            return
        if not argv[0].startswith("-") and argv[0] not in TRAINING:
            from recsys.errors import ConfigError

            raise ConfigError(f"command {argv[0]!r} is unknown; valid: {[*TRAINING, *COMMANDS]}. Fix: pick one of "
                              "them (`recsys --help` lists what each does).")
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
