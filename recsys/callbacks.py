"""Lightning callbacks of the project."""

from __future__ import annotations

import lightning as L

from recsys.heads.hard import HardNegativeSoftmax


class HardNegativeIndexRefresh(L.Callback):
    """Rebuild the hard-negative FAISS index from the current item tower every
    ``every_n_steps`` training steps (default: the head's ``refresh_every``), and before the
    first step. Logs ``train/refresh_seconds`` and ``train/index_staleness``.
    """

    def __init__(self, every_n_steps: int | None = None):
        self.every_n_steps = every_n_steps

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        head = pl_module.head
        if not isinstance(head, HardNegativeSoftmax):
            return
        every = self.every_n_steps or head.refresh_every
        if head.retriever is None or head.steps_since_refresh >= every:
            secs = head.refresh(pl_module.item_tower.embed_all())
            pl_module.log("train/refresh_seconds", secs, on_step=True, on_epoch=False)
