"""The training command line: ``recsys fit|validate|test|predict`` (LightningCLI). The
``recsys`` console script itself, which also dispatches the project's own commands, is
``recsys.commands.console``.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import warnings
from argparse import ArgumentError
from pathlib import Path

import torch
import yaml
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO

from recsys.data.datamodule import InteractionDataModule
from recsys.errors import ConfigError, RecsysError
from recsys.model.module import TwoTowerModule
from recsys.train.callbacks import EpochClock, NoValidationWarning, RngState
from recsys.train.checkpoint_io import AtomicCheckpointIO, RecsysCheckpoint
from recsys.train.resume import resolve_last

logger = logging.getLogger(__name__)

MONITOR = "val/ndcg@10"
TRAINER_DEFAULTS = {
    "default_root_dir": "runs",
    "max_epochs": 20,
    "log_every_n_steps": 50,
    "num_sanity_val_steps": 0,
    "logger": {"class_path": "recsys.train.resume.AppendingCSVLogger",
               "init_args": {"save_dir": "runs", "name": "recsys"}},
}


def follow_root_dir(cfg) -> None:
    """``--trainer.default_root_dir=DIR`` moves the logs and checkpoints under DIR: the default
    logger's ``save_dir`` (``runs``) follows it unless it was set on its own."""
    trainer = cfg.get("trainer") or {}
    root = trainer.get("default_root_dir")
    log = trainer.get("logger")
    args = log.get("init_args") if hasattr(log, "get") and log.get("class_path") else None
    default = TRAINER_DEFAULTS["logger"]["init_args"]["save_dir"]
    if root and args is not None and args.get("save_dir") == default and str(root) != default:
        args["save_dir"] = str(root)


def warn_without_data(cfg) -> str | None:
    """Warn (and return the message) when config files were given but none of them sets
    ``data``: a head file used without its base (``--config configs/ml-1m/inbatch.yaml``
    alone) would otherwise train on the default synthetic dataset without a word."""
    paths = [getattr(p, "absolute", None) or str(p) for p in (cfg.get("config") or [])]
    if not paths or any("data" in (yaml.safe_load(Path(p).read_text()) or {}) for p in paths):
        return None
    msg = (f"none of the config files {paths} sets `data`: training on the default dataset "
           f"'{cfg.get('data', {}).get('dataset', 'synthetic')}'. A head file holds only model.head; compose it "
           "with its base: --config configs/<dataset>/base.yaml --config configs/<dataset>/<head>.yaml.")
    logger.warning(msg)
    return msg


class RecsysCLI(LightningCLI):
    """LightningCLI with the data -> model schema link, best-NDCG@10 checkpointing, early
    stopping and a CSV logger; the resolved config is stored in every checkpoint."""

    def __init__(self, *args, **kwargs):
        # a fit without validation is explained once by NoValidationWarning; Lightning's per-save
        # warning about the missing monitor would repeat it (with validation run, it raises instead)
        warnings.filterwarnings("ignore", message=r".*could not find the monitored key.*")
        kwargs.setdefault("trainer_defaults", TRAINER_DEFAULTS)
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(TwoTowerModule, InteractionDataModule, *args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.schema", "model.schema", apply_on="instantiate")
        parser.add_lightning_class_args(RecsysCheckpoint, "checkpoint")  # last.ckpt = latest state
        parser.set_defaults({
            "checkpoint.monitor": MONITOR, "checkpoint.mode": "max", "checkpoint.save_last": True,
            "checkpoint.filename": "best-{epoch:02d}",
        })
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.set_defaults({
            "early_stopping.monitor": MONITOR, "early_stopping.mode": "max", "early_stopping.patience": 3,
            # a run that ends before its first validation (max_steps, limit_val_batches=0) warns, not crashes
            "early_stopping.strict": False,
        })

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        warn_without_data(cfg)
        follow_root_dir(cfg)
        if self.subcommand == "fit":  # --ckpt_path last: the newest last.ckpt of earlier runs
            resolve_last(self.config.fit)

    def _instantiate_trainer(self, config: dict, callbacks: list):
        # --trainer.enable_checkpointing=false: leave out the CLI's own checkpoint callback, which
        # Lightning would otherwise refuse beside it
        if config.get("enable_checkpointing") is False:
            callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
        return super()._instantiate_trainer(config, callbacks)

    def instantiate_trainer(self, **kwargs):
        """Crash-safe checkpoints: atomic writes and the RNG states in every checkpoint."""
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        for cls in (RngState, NoValidationWarning, EpochClock):
            if not any(isinstance(c, cls) for c in trainer.callbacks):
                trainer.callbacks.append(cls())
        return trainer

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        self.model.recsys_config = self._parser(self.subcommand).dump(cfg, skip_link_targets=True)


def fit_best(cli: RecsysCLI) -> tuple[float, str]:
    """``cli.trainer.fit`` on its model and data, then the best validation checkpoint's weights
    loaded back into the model (kept as trained when there is none, e.g. no validation).
    Returns (fit seconds, the best checkpoint's path or "")."""
    t = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    secs = time.perf_counter() - t
    best = cli.trainer.checkpoint_callback.best_model_path if cli.trainer.checkpoint_callback else ""
    if best:
        cli.model.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"])
    return secs, best


def _class_choices(key: str) -> list[str]:
    """Valid class paths for a ``head`` or ``sampler`` key (empty for other keys)."""
    from recsys.model import candidates, heads

    if key.endswith("head"):
        return [f"recsys.model.heads.{c.__name__}" for c in heads.HEADS.values()]
    if key.endswith("sampler"):
        return [f"recsys.model.candidates.{c.__name__}" for c in candidates.SAMPLERS.values()]
    return []


def config_error(e: BaseException) -> RecsysError | None:
    """The project error behind ``e``: a ``RecsysError`` that jsonargparse wrapped while
    instantiating (e.g. a bad temperature inside ``model.head``), or a ``ConfigError`` for a
    command-line / YAML value the parser rejected (unknown class_path, wrong type, unknown
    option), naming the key, the value, the requirement and the fix."""
    c = e
    while c is not None:  # a project error raised inside jsonargparse's instantiation
        if isinstance(c, RecsysError):
            return c
        c = c.__cause__ or c.__context__
    if not isinstance(e, ArgumentError):
        return None
    text = str(e)
    key = ".init_args.".join(re.findall(r'Parser key "([^"]+)"', text)) or "command line"
    missing = [(cp, why) for cp, why in re.findall(r"Problem with given class_path '([^']+)':\s*\n\s*(.+)", text)
               if not why.startswith("Parser key")]
    if missing:  # an unknown head / sampler / tower class
        cp, why = missing[-1]
        choices = _class_choices(key)
        fix = f"use one of {', '.join(choices)}" if choices else "check the module and class name"
        return ConfigError(f"{key}: class_path '{cp}' cannot be imported ({why.strip()}); it must name an "
                           f"importable class of the right kind. Fix: {fix}.")
    given = re.search(r"Given value: (.+)$", text, re.M)
    need = sorted(set(re.findall(r"Expected a <class '([^']+)'>", text)) - {"NoneType"})
    if given:
        value = given.group(1).strip()
        nested = re.fullmatch(r"NestedArg\(key='[^']*', val=(.*)\)", value)  # --a.b.c=value
        value = nested.group(1).strip("'\"") if nested else value
        req = f"must be of type {' or '.join(need)}" if need else "is not a valid value"
        return ConfigError(f"{key}={value!r} {req}. Fix: give a value of that type "
                           "(`recsys fit --help` lists every option and its type).")
    return ConfigError(f"{' '.join(text.split())}. Fix: check the option names and values "
                       "(`recsys fit --help` lists them).")


def run_cli(argv: list[str]) -> RecsysCLI:
    """``recsys fit|validate|test|predict ...``: run LightningCLI on ``argv``; a value the
    parser rejects raises one ``ConfigError`` (``config_error``) instead of argparse's exit."""
    try:  # bad values raise (ArgumentError), turned into one ConfigError line below
        with warnings.catch_warnings():  # argv is sys.argv[1:] here: Lightning's "args and argv" note is noise
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            return RecsysCLI(args=argv, parser_kwargs={"exit_on_error": False})
    except (ArgumentError, ValueError) as e:
        err = config_error(e)
        if err is None:
            raise
        raise err from e


if __name__ == "__main__":  # python -m recsys.train.cli fit ... (the Lightning subcommands)
    run_cli(sys.argv[1:])
