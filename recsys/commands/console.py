"""The ``recsys`` console script: the project's own commands (``demo``, ``data``, ``evaluate``,
``compare``, ``recommend``, ``export``) and LightningCLI's ``fit|validate|test|predict``.

Project errors (``RecsysError``) print one line and exit with code 2 on the console; called
from Python (``main([...])``: tests, notebooks) they are raised.

``recsys fit|validate|test|predict --help`` is LightningCLI's help, which needs Lightning and
every class signature (~5 s). Its text depends only on the installed code, so the console keeps
it in ``$RECSYS_CACHE`` (default ``~/.cache/recsys``) ``/help/<command>-<key>.txt``, the key a
hash of the recsys, Lightning, jsonargparse and torch versions and of every recsys source
file's size and mtime: the first call builds it, later ones print it (~0.1 s).
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
from contextlib import redirect_stdout
from pathlib import Path

from recsys.commands import COMMANDS, run
from recsys.errors import RecsysError

__all__ = ["main", "console", "help_cache_path"]

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
        if len(argv) == 2 and argv[1] in ("-h", "--help") and _cached_help(argv[0]):
            return
        from recsys.train.cli import run_cli  # torch + Lightning only for the training commands

        run_cli(argv)
    except RecsysError as e:
        if not _IS_CONSOLE:  # called from Python (tests, notebooks): keep the exception
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def help_cache_path(command: str) -> Path:
    """Where ``recsys COMMAND --help``'s text is kept for the installed code (see the module doc)."""
    from importlib.metadata import PackageNotFoundError, version

    h = hashlib.sha256()
    for pkg in ("recsys", "lightning", "jsonargparse", "torch"):
        try:
            h.update(f"{pkg}={version(pkg)};".encode())
        except PackageNotFoundError:
            h.update(f"{pkg}=none;".encode())
    root = Path(__file__).resolve().parent.parent
    for f in sorted(root.rglob("*.py")):
        st = f.stat()
        h.update(f"{f.relative_to(root)}:{st.st_size}:{st.st_mtime_ns};".encode())
    base = Path(os.environ.get("RECSYS_CACHE") or Path.home() / ".cache" / "recsys")
    return base / "help" / f"{command}-{h.hexdigest()[:16]}.txt"


def _cached_help(command: str) -> bool:
    """Print ``recsys COMMAND --help`` from the cache, building it on a miss; False when the
    cache cannot be used (the caller then runs the CLI as usual)."""
    try:
        path = help_cache_path(command)
        if path.is_file():
            sys.stdout.write(path.read_text())
            return True
    except OSError:
        return False
    from recsys.train.cli import run_cli

    buf = io.StringIO()
    try:
        with redirect_stdout(buf):
            run_cli([command, "--help"])
    except SystemExit as e:  # argparse's help exits 0 after printing
        if e.code not in (0, None):
            raise
    text = buf.getvalue()
    sys.stdout.write(text)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError:
        pass
    return True


def console() -> None:
    """The ``recsys`` console script: project errors print one line and exit with code 2."""
    global _IS_CONSOLE
    _IS_CONSOLE = True
    main()


if __name__ == "__main__":
    main()
