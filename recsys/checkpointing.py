"""Crash-safe checkpoints and exact resume for ``recsys fit``.

A run killed at any moment (SIGKILL, OOM, pre-emption) resumes with ``--ckpt_path last``
and ends where the uninterrupted run ends. What that takes, piece by piece:

- ``AtomicCheckpointIO``: every checkpoint is written to a temporary file in the target
  folder, fsync'ed, then renamed over the target (``os.replace``, atomic on POSIX), and the
  folder is fsync'ed. A kill during a save leaves the previous file intact (plus a stray
  ``.<name>.tmp-<pid>``, removed by the next save). Lightning's own ``TorchCheckpointIO``
  goes through an fsspec transaction whose temporary file lives in ``$TMPDIR``: when that is
  another filesystem (a tmpfs ``/tmp``, the usual container setup) the final move is a copy
  into the target path, which a kill can leave half-written; it never fsyncs either.
- ``RecsysCheckpoint``: the CLI's ``checkpoint`` group. As ``ModelCheckpoint`` (best
  ``val/ndcg@10``), but ``last.ckpt`` is always the latest state (Lightning 2.6 rewrites it
  only when a top-k file is written, i.e. when the metric improves): at the end of every
  epoch (after its validation) and every ``every_n_train_steps`` inside epochs.
- ``RngState``: the global python / numpy / torch (CPU and CUDA) random states are part of
  every checkpoint and restored on resume (Lightning does not save them), so sampled
  negatives after the resume are the ones the uninterrupted run draws.
- ``HardNegativeIndexState``: the embeddings behind ``HardNegativeSoftmax``'s FAISS index,
  so a resumed run mines from the same (stale) index.
- ``recsys.distributed.ResumableLoader``: the position inside the epoch (Lightning restarts
  a plain DataLoader at its first batch).
- ``resolve_last``: ``--ckpt_path last`` finds the newest ``last.ckpt`` of the run folders
  under the logger's ``save_dir/name`` and continues in that folder (Lightning alone looks
  only in the new run's folder, which is empty). ``AppendingCSVLogger`` keeps that folder's
  ``metrics.csv`` and appends to it.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.plugins.io import TorchCheckpointIO

__all__ = ["AtomicCheckpointIO", "atomic_torch_save", "RecsysCheckpoint", "RngState", "HardNegativeIndexState",
           "AppendingCSVLogger", "find_last_checkpoint", "resolve_last"]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------- atomic writes
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _remove_stale_temps(path: Path) -> None:
    """Delete ``.<name>.tmp-<pid>`` files left by killed writers of ``path``."""
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        m = re.fullmatch(rf"\.{re.escape(path.name)}\.tmp-(\d+)", tmp.name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                tmp.unlink()


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` that never leaves a partial ``path``: write a temporary file
    beside it, fsync it, ``os.replace`` it over ``path``, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"  # not *.ckpt: never taken for a checkpoint
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic and durable (``atomic_torch_save``);
    remote URLs (``s3://`` ...) go through Lightning's fsspec path unchanged."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)


# ------------------------------------------------------------------------ last.ckpt
class RecsysCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` (same arguments) whose ``last.ckpt`` is always the latest state.

    ``last.ckpt`` is written at the end of every epoch, after its validation, and with
    ``every_n_train_steps=N`` also every N steps inside an epoch (not at an epoch's last
    batch: the end-of-epoch save follows it, with the validation's results). Top-k files
    are written only where a fresh validation metric exists, after validation (Lightning
    would also write them at step N with the previous epoch's score next to newer weights).
    The callback state keeps the key ``ModelCheckpoint{...}``, so checkpoints of either
    class resume with either class and ``recsys.checkpoint.read_checkpoint`` finds the score.
    """

    @property
    def state_key(self) -> str:
        key = super().state_key
        return "ModelCheckpoint" + key[len(type(self).__qualname__):]

    def _can_save(self, trainer) -> bool:
        return not trainer.fast_dev_run and trainer.state.fn == "fit" and not trainer.sanity_checking

    def _steps_only(self) -> bool:  # every_n_train_steps given: Lightning then saves no epoch top-k
        return self._every_n_train_steps >= 1 and self._every_n_epochs == 0

    def _save_last_checkpoint(self, trainer, monitor_candidates) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        self._last_written_step = trainer.global_step

    def _save_last_now(self, trainer) -> None:
        written = getattr(self, "_last_written_step", None)  # no __init__ override: the CLI reads its signature
        if self.save_last and self._can_save(trainer) and written != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._steps_only():
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if trainer.global_step % self._every_n_train_steps == 0 and not last_batch:
            self._save_last_now(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self._steps_only():
            super().on_train_epoch_end(trainer, pl_module)
        elif self._can_save(trainer) and self._should_save_on_train_epoch_end(trainer):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))
        self._save_last_now(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not self._steps_only():
            return super().on_validation_end(trainer, pl_module)
        if self._can_save(trainer) and not self._should_save_on_train_epoch_end(trainer):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))


# ------------------------------------------------------------------------ RNG states
class RngState(Callback):
    """Save the global RNG states with every checkpoint; restore them on resume.

    Saved at the moment of the checkpoint (the end of a training step or of an epoch), so
    the resumed run continues the random streams from the same point. Under DDP every
    process loads rank 0's states; ``seed_everything`` gives all ranks the same streams
    anyway (``workers=False``), so this changes nothing there. Stored as tensors and plain
    lists so ``torch.load(weights_only=True)`` accepts them.
    """

    def state_dict(self) -> dict:
        version, mt, gauss = random.getstate()
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        return {
            "python": [version, list(mt), gauss],
            "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss),
                      float(cached)],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        version, mt, gauss = state["python"]
        random.setstate((version, tuple(mt), gauss))
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state["torch"])
        if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])


class HardNegativeIndexState(Callback):
    """Make resume exact for ``HardNegativeSoftmax``: its FAISS index is not a tensor, so the
    checkpoint stores the item embeddings the current index was built from (N x D), its IVF
    cells (reused by later refreshes) and the refresh counters; on resume the index is
    rebuilt from them (not from the current weights), so mining sees the same stale index as
    the uninterrupted run. No-op for other heads."""

    def __init__(self):
        self._xb: torch.Tensor | None = None  # embeddings of the last refresh
        self._pending: dict | None = None
        self._head_ref = None

    @staticmethod
    def _head(pl_module):
        from recsys.heads.hard import HardNegativeSoftmax

        head = getattr(pl_module, "head", None)
        return head if isinstance(head, HardNegativeSoftmax) else None

    def setup(self, trainer, pl_module, stage: str) -> None:
        head = self._head(pl_module)
        if head is None or getattr(head.refresh, "_recorded", False):
            return
        refresh = head.refresh

        def recorded_refresh(item_embeddings: torch.Tensor, retrain: bool | None = None) -> float:
            self._xb = item_embeddings.detach().float().cpu().clone()
            return refresh(item_embeddings, retrain=retrain)

        recorded_refresh._recorded = True
        head.refresh = recorded_refresh  # instance attribute: records, then builds as before
        self._head_ref = head

    def state_dict(self) -> dict:
        head = self._head_ref
        if head is None or self._xb is None:
            return {}
        centroids = None if head.centroids is None else torch.from_numpy(head.centroids.copy())
        return {"xb": self._xb, "centroids": centroids, "steps_since_refresh": int(head.steps_since_refresh),
                "refresh_count": int(head.refresh_count), "last_refresh_seconds": float(head.last_refresh_seconds)}

    def load_state_dict(self, state: dict) -> None:
        self._pending = dict(state) if state else None

    def on_train_start(self, trainer, pl_module) -> None:
        head = self._head(pl_module)
        if head is None or not self._pending:
            return
        state, self._pending = self._pending, None
        centroids = state.get("centroids")  # IVF cells the interrupted run's index used
        head.centroids = None if centroids is None else centroids.numpy()
        head.refresh(state["xb"], retrain=centroids is None)  # the index it was mining from
        head.steps_since_refresh = state["steps_since_refresh"]
        head.refresh_count = state["refresh_count"]
        head.last_refresh_seconds = state["last_refresh_seconds"]


# ------------------------------------------------------------------------ resume folder
class _AppendingWriter(ExperimentWriter):
    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        if self._fs.isfile(self.metrics_file_path):  # continue with the file's columns
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = sorted(next(csv.reader(f), []))

    def _check_log_dir_exists(self) -> None:  # Lightning deletes an existing metrics.csv here
        pass


class AppendingCSVLogger(CSVLogger):
    """``CSVLogger`` that appends to the run folder's ``metrics.csv`` instead of deleting it,
    so a resumed run continues its history. Rows logged by the killed run after its last
    checkpoint (if they were flushed) appear again, from the resumed run, with the same
    steps: keep the last row of a step."""

    @property
    def experiment(self) -> _ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def find_last_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The newest ``last*.ckpt`` in ``folder/version_*/checkpoints`` (or anywhere below)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = [p for p in folder.rglob("last*.ckpt") if p.is_file() and re.fullmatch(r"last(-v\d+)?\.ckpt", p.name)]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def _get(ns, key, default=None):
    if ns is None:
        return default
    if isinstance(ns, dict):
        return ns.get(key, default)
    return getattr(ns, key, default)


def resolve_last(cfg) -> Path | None:
    """Turn ``ckpt_path: last`` of a ``fit`` config (jsonargparse Namespace) into the newest
    ``last.ckpt`` of the earlier runs and point the logger at that run's folder.

    Looks under the logger's ``save_dir/name`` (the CLI's CSVLogger: ``runs/recsys``); with
    ``checkpoint.dirpath`` set, Lightning finds ``last`` there itself and nothing changes.
    Returns the checkpoint, or None (nothing found: the run starts from scratch, as
    Lightning does with a ``last`` it cannot find).
    """
    if _get(cfg, "ckpt_path") != "last" or _get(_get(cfg, "checkpoint"), "dirpath"):
        return None
    trainer = _get(cfg, "trainer")
    log = _get(trainer, "logger")
    args = _get(log, "init_args") if _get(log, "class_path") else None
    if args is not None and _get(args, "save_dir") is not None:
        base = Path(_get(args, "save_dir")) / str(_get(args, "name") or "")
    else:  # no logger, or one we do not know: any run under default_root_dir
        base = Path(_get(trainer, "default_root_dir") or ".")
    ckpt = find_last_checkpoint(base)
    if ckpt is None:
        return None
    run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None
    if args is not None and run is not None and run.parent.resolve() == base.resolve():
        if isinstance(args, dict):
            args["version"] = run.name
        else:
            args.version = run.name  # continue in the same folder: same ModelCheckpoint dirpath
    cfg.ckpt_path = str(ckpt)
    logger.info("ckpt_path=last -> %s", ckpt)
    return ckpt
