"""Lightning callbacks of the training loop: the RNG states in every checkpoint, one
warning when a fit ends without any validation, and a clock of the epochs.

(The hard-negative index refresh is the head's own callback, ``recsys.model.mining.MinerRefresh``,
which ``TwoTowerModule.configure_callbacks`` adds.)"""

from __future__ import annotations

import logging
import random
import time

import numpy as np
import torch
from lightning.pytorch import Callback

logger = logging.getLogger(__name__)


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


class NoValidationWarning(Callback):
    """At the end of a fit without any validation (``max_steps`` reached first,
    ``limit_val_batches=0``), say once what that means instead of failing: no best checkpoint
    was chosen and early stopping never ran; ``last.ckpt`` holds the final weights."""

    monitor = "val/ndcg@10"

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.monitor in trainer.callback_metrics:
            return
        logger.warning("no validation ran in this fit (%s not logged): no best checkpoint was selected and "
                       "early stopping never checked; last.ckpt holds the final weights. Validate with "
                       "`recsys validate` or let the fit reach the end of an epoch.", self.monitor)


class EpochClock(Callback):
    """Wall time of the fit at the end of every validation epoch (sanity check excluded).

    ``epochs`` is a list of {epoch, elapsed_s (since fit start, validation included),
    train_s (elapsed less every validation, the sanity check's included), examples (training
    examples seen)}; ``recsys compare`` reads it for the time to the best epoch and the
    training speed. Kept in every checkpoint (``state_dict``), so a resumed fit continues
    the clock.
    """

    def __init__(self) -> None:
        self.epochs: list[dict] = []
        self._t0 = self._tv = None
        self._offset = self._val_s = self._val_prev = 0.0
        self._examples = 0

    def on_fit_start(self, trainer, pl_module) -> None:
        self._t0, self._val_s = time.perf_counter(), 0.0
        if self.epochs:  # resumed: continue from the stored clock
            last = self.epochs[-1]
            self._offset, self._examples = last["elapsed_s"], last["examples"]
            self._val_prev = last["elapsed_s"] - last["train_s"]  # validation time before the resume

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if isinstance(batch, dict) and "item" in batch:
            self._examples += len(batch["item"])

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._tv = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        # not on_validation_epoch_end: Lightning calls the callbacks' hook before the module's, and
        # the module scores the catalogue in its own on_validation_epoch_end (a tree's beam searches
        # over the prior grid: ~25 s an epoch on ML-1M), which would count as the next epoch's
        # training. on_validation_end comes after it and before ModelCheckpoint (last in
        # Lightning's callback order), so the saved clock holds this epoch.
        if self._t0 is None or self._tv is None:
            return
        now = time.perf_counter()
        self._val_s += now - self._tv
        if trainer.sanity_checking:
            return
        elapsed = self._offset + now - self._t0
        self.epochs.append({"epoch": int(trainer.current_epoch), "elapsed_s": elapsed,
                            "train_s": elapsed - self._val_prev - self._val_s,
                            "examples": int(self._examples)})

    def state_dict(self) -> dict:
        return {"epochs": [dict(e) for e in self.epochs]}

    def load_state_dict(self, state: dict) -> None:
        self.epochs = [dict(e) for e in (state or {}).get("epochs", [])]
