"""Command line: ``recsys fit|validate|test|predict`` (LightningCLI) and the project's own
commands ``demo``, ``data stats``, ``evaluate``, ``compare``, ``recommend``, ``export``.
"""

from __future__ import annotations

import sys

from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from recsys.data.datamodule import InteractionDataModule
from recsys.errors import RecsysError
from recsys.module import TwoTowerModule

MONITOR = "val/ndcg@10"
TRAINER_DEFAULTS = {
    "default_root_dir": "runs",
    "max_epochs": 20,
    "log_every_n_steps": 50,
    "num_sanity_val_steps": 0,
    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
               "init_args": {"save_dir": "runs", "name": "recsys"}},
}


class RecsysCLI(LightningCLI):
    """LightningCLI with the data -> model schema link, best-NDCG@10 checkpointing, early
    stopping and a CSV logger; the resolved config is stored in every checkpoint."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("trainer_defaults", TRAINER_DEFAULTS)
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(TwoTowerModule, InteractionDataModule, *args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.schema", "model.schema", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": MONITOR, "checkpoint.mode": "max", "checkpoint.save_last": True,
            "checkpoint.filename": "best-{epoch:02d}",
        })
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.set_defaults({
            "early_stopping.monitor": MONITOR, "early_stopping.mode": "max", "early_stopping.patience": 3,
        })

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        self.model.recsys_config = self._parser(self.subcommand).dump(cfg, skip_link_targets=True)


OWN_COMMANDS = ("demo", "data", "evaluate", "compare", "recommend", "export")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``recsys`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in OWN_COMMANDS:
            from recsys import commands

            commands.run(argv[0], argv[1:])
            return
        RecsysCLI(args=argv)
    except RecsysError as e:
        if not _IS_CONSOLE:  # called from Python (tests, notebooks): keep the exception
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


_IS_CONSOLE = False


def console() -> None:
    """The ``recsys`` console script: project errors print one line and exit with code 2."""
    global _IS_CONSOLE
    _IS_CONSOLE = True
    main()


if __name__ == "__main__":
    main()
