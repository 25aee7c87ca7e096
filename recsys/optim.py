"""One optimizer object over a dense and a sparse optimizer.

Id tables with ``sparse=True`` produce sparse gradients, which only sparse-capable
optimizers accept (``torch.optim.SparseAdam``, ``torch.optim.SGD``); MLPs and learnable
temperatures get a dense one (``Adam``/``AdamW``). Lightning's automatic optimization
drives a single optimizer, so ``MultiOptimizer`` presents both as one: it steps each,
zeroes each, and saves / restores each state (for resume).
"""

from __future__ import annotations

from collections.abc import MutableMapping

import torch


class _StateView(MutableMapping):
    """The inner optimizers' ``state`` dicts seen as one (writes go to the owner)."""

    def __init__(self, optimizers):
        self._opts = optimizers

    def _owner(self, p):
        for o in self._opts:
            if any(p is q for g in o.param_groups for q in g["params"]):
                return o.state
        raise KeyError(p)

    def __getitem__(self, p):
        return self._owner(p)[p]

    def __setitem__(self, p, v):
        self._owner(p)[p] = v

    def __delitem__(self, p):
        del self._owner(p)[p]

    def __iter__(self):
        for o in self._opts:
            yield from o.state

    def __len__(self):
        return sum(len(o.state) for o in self._opts)


class MultiOptimizer(torch.optim.Optimizer):
    """Step several optimizers as one (param groups are shared, so LR schedulers work)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):  # noqa: D107 - no super().__init__
        self.optimizers = list(optimizers)
        self.defaults = {}
        self.param_groups = [g for o in self.optimizers for g in o.param_groups]
        self._optimizer_step_pre_hooks = {}
        self._optimizer_step_post_hooks = {}

    @property
    def state(self):
        return _StateView(self.optimizers)

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for o in self.optimizers:
            o.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        for o, s in zip(self.optimizers, state_dict["optimizers"]):
            o.load_state_dict(s)

    def __repr__(self) -> str:
        return "MultiOptimizer(" + ", ".join(type(o).__name__ for o in self.optimizers) + ")"
