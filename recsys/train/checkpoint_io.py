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
- ``recsys.train.callbacks.RngState``: the global python / numpy / torch (CPU and CUDA)
  random states are part of every checkpoint and restored on resume (Lightning does not
  save them), so sampled negatives after the resume are the ones the uninterrupted run draws.
- ``recsys.model.mining.HardNegativeMiner``: the embeddings behind the hard-negative index
  are part of the model's ``state_dict`` (extra state), so a resumed run mines from the same
  (stale) index.
- ``recsys.data.sampler.ResumableLoader``: the position inside the epoch (Lightning restarts
  a plain DataLoader at its first batch).
- ``recsys.train.resume``: ``--ckpt_path last`` finds the newest ``last.ckpt`` of the earlier
  runs and continues in that folder, appending to its ``metrics.csv``.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

__all__ = ["AtomicCheckpointIO", "atomic_torch_save", "RecsysCheckpoint"]



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
    class resume with either class and ``recsys.artifacts.checkpoint.read_checkpoint`` finds the score.
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
