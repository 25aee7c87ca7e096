"""The head interface, temperature, and the known-positives lookup shared by all heads."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from recsys.errors import ConfigError
from recsys.model.corrections import corrected_logits, corrected_logits_at


class Temperature(nn.Module):
    """Softmax temperature T (logits are divided by T), fixed or learnable.

    Learnable T is log-parametrised (``log T`` is the parameter, so T stays positive) and
    clamped to ``[min_value, max_value]`` (default [0.01, 10]); outside that range its
    gradient is zero. With L2-normalised towers T ~ 0.05-0.2 is typical; with raw dot
    products T ~ 1.
    """

    def __init__(self, value: float = 1.0, learnable: bool = False,
                 min_value: float = 0.01, max_value: float = 10.0):
        super().__init__()
        if not (value > 0 and 0 < min_value <= value <= max_value):
            raise ConfigError(
                f"temperature={value} (range [{min_value}, {max_value}]): the temperature must be "
                "> 0 and inside its range. Fix: e.g. temperature=0.1 (normalised towers) or 1.0."
            )
        self.min_value, self.max_value, self.learnable = min_value, max_value, learnable
        t = torch.tensor(math.log(value))
        if learnable:
            self.log_t = nn.Parameter(t)
        else:
            self.register_buffer("log_t", t)

    def forward(self) -> torch.Tensor:
        return self.log_t.exp().clamp(self.min_value, self.max_value)


class KnownPositives:
    """Membership test "is item j a train positive of user u" for the (B, C) candidates of a
    batch. Only the batch users' own train pairs are read (P of them, the sum of their
    history lengths), never the whole train set:

    - C shared candidates (in-batch, shared samples): each pair of the batch's distinct users
      (a user repeated in the batch is read once) is looked up in a catalogue-sized column
      table of the batch's distinct candidates and scattered into a (B', C' + 1) bitmap whose
      last column takes the misses, then expanded to (B, C): O(P + B C) with no selection pass;
    - per-row candidates (B, C): a (B, N) bitmap of the pairs when it fits in
      ``bitmap_limit`` entries, O(P + B C), else a search in the P sorted pair keys
      ``row * N + item``, O(B C log P).

    When the whole (U, N) train matrix fits in ``dense_limit`` bytes (ML-1M: 22M), it is kept
    dense (built at the first lookup) and both kinds of lookup are two gathers, O(B N + B C)
    with no per-pair pass: on ML-1M's shipped batches (B = C = 1024, P ~ 190k) 1.2 ms instead
    of 2.5-3.6 ms (medians of interleaved repeats).
    """

    bitmap_limit = 1 << 26  # B * N entries (64 MiB of bool)
    dense_limit = 1 << 25  # U * N entries (32 MiB of uint8)

    def __init__(self, train: sp.csr_matrix):
        self.csr = train.tocsr()
        self.csr.sort_indices()
        self.N = train.shape[1]
        self._indptr = self.csr.indptr.astype(np.int64)  # (U + 1,)
        self._indices = self.csr.indices.astype(np.int64)  # (nnz,) ascending within a row
        self._col = np.full(self.N, -1, dtype=np.int64)  # scratch: item -> distinct-candidate column, else -1
        self._dense: torch.Tensor | None = None  # (U, N) uint8 0 / 1, built by _table() when it fits dense_limit

    def _table(self) -> torch.Tensor | None:
        """The (U, N) train matrix as uint8 0 / 1 (CPU) when U * N <= ``dense_limit`` (built
        once), else None."""
        U = self.csr.shape[0]
        if self._dense is None and 0 < U * self.N <= self.dense_limit:
            dense = np.zeros((U, self.N), dtype=np.uint8)
            dense[self._pairs(np.arange(U))] = 1
            self._dense = torch.from_numpy(dense)
        return self._dense

    def holds(self, users: torch.Tensor, items: torch.Tensor) -> bool:
        """True when every pair (users[b], items[b]) (B,) is a train positive and that is cheap
        to check (the dense table); False otherwise (not all known, or not checked).
        ``accidental_hits`` then knows a duplicate of a row's positive is a known positive."""
        table = self._table()
        if table is None or len(users) == 0:
            return False
        return bool(table[users.cpu(), items.cpu()].all())

    def _offsets(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n (B,), offs (P,)): each user's train-pair count and the CSR positions of all their
        pairs, user by user."""
        start = self._indptr[users]
        n = self._indptr[users + 1] - start  # (B,)
        return n, np.arange(int(n.sum())) + np.repeat(start - (np.cumsum(n) - n), n)

    def _pairs(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row in the batch, item) of every train pair of ``users`` (P,), (P,): rows
        ascending, items ascending within a row (the CSR order)."""
        n, offs = self._offsets(users)
        return np.repeat(np.arange(len(users)), n), self._indices[offs]

    def contains(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """users (B,), items (C,) shared or (B, C) per row -> bool (B, C) on ``users``' device."""
        table = self._table()
        if table is not None:  # (B, N) rows of the users, then the candidates' columns (torch's
            # gather over a stride-0 index: 1.5x numpy's take along axis 1 on ML-1M's batches)
            rows = table.index_select(0, users.cpu())  # (B, N)
            it = items.cpu()
            idx = it[None, :].expand(len(rows), -1) if it.ndim == 1 else it  # (B, C)
            return torch.gather(rows, 1, idx).view(torch.bool).to(users.device)
        u = users.cpu().numpy()
        it = items.cpu().numpy()
        B = len(u)
        if it.ndim == 1:
            uniq, inv = np.unique(it, return_inverse=True)  # (C',), (C,)
            uu, inv_u = np.unique(u, return_inverse=True)  # (B',), (B,) distinct users
            n, offs = self._offsets(uu)  # (B',), (P',)
            W = len(uniq) + 1  # bitmap row: the C' candidates, then a column for the misses
            self._col[uniq] = np.arange(len(uniq))
            flat = self._col[self._indices[offs]]  # (P',) the pair's distinct-candidate column, or -1
            self._col[uniq] = -1
            # flat index in the (B', W) bitmap; a miss (-1) lands in the previous row's last column
            # (row 0's in the last row's), which is never read
            flat += np.repeat(np.arange(len(uu)) * W, n)
            m = np.zeros(len(uu) * W, dtype=bool)
            m[flat] = True
            out = m.reshape(len(uu), W).take(inv_u, axis=0).take(inv, axis=1)  # (B, C)
            return torch.from_numpy(out).to(users.device)
        rows, pos = self._pairs(u)  # (P,), (P,)
        if B * self.N <= self.bitmap_limit:
            m = np.zeros((B, self.N), dtype=bool)
            m[rows, pos] = True
            out = np.take_along_axis(m, it, axis=1)  # (B, C)
        else:
            keys = rows * self.N + pos  # (P,) ascending
            q = np.arange(B)[:, None] * self.N + it  # (B, C)
            at = np.minimum(np.searchsorted(keys, q), max(len(keys) - 1, 0))
            out = keys[at] == q if len(keys) else np.zeros(q.shape, dtype=bool)
        return torch.from_numpy(np.ascontiguousarray(out)).to(users.device)

    def rows(self, users: np.ndarray) -> sp.csr_matrix:
        """(B, N) CSR of the users' train items (for index search exclusion)."""
        return self.csr[users]

    def pairs(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(row in the batch, item) int64 pairs (P,), (P,) of the users' train items, on
        ``users``' device, rows ascending (multi-hot labels, softmax masks)."""
        rows, cols = self._pairs(users.cpu().numpy())
        return torch.from_numpy(rows).to(users.device), torch.from_numpy(cols).to(users.device)


# The diagnostics every head logs (as train/<key>), spelled once.
LOG_KEYS = ("temperature", "pos_logit", "neg_logit", "accidental_hit_rate", "effective_negatives")


def head_logs(temperature, pos_logit, neg_logit, accidental_hit_rate, effective_negatives, **extra) -> dict:
    """The ``LOG_KEYS`` diagnostics of a step (scalars), plus a head's own ``extra`` ones:
    T, the mean positive and negative logit, the share of candidates that were accidental
    hits, and the negatives that carried probability mass per example."""
    values = (temperature, pos_logit, neg_logit, accidental_hit_rate, effective_negatives)
    return {**{k: torch.as_tensor(v).detach() for k, v in zip(LOG_KEYS, values)}, **extra}


class LazyLogs(Mapping):
    """A head's diagnostics, computed (under ``torch.no_grad``) when first read: the training
    loop reads them on logging steps only (every ``log_every_n_steps``), and on a (B, C) block
    of candidates they cost as much as a tenth to a fifth of an in-batch step. Reading them
    any time after the head's forward gives the values an eager computation would have (they
    depend on the step's own scores and masks only, which nothing modifies in place)."""

    def __init__(self, compute: Callable[[], dict]):
        self._compute: Callable[[], dict] | None = compute
        self._logs: dict | None = None

    def _get(self) -> dict:
        if self._logs is None:
            with torch.no_grad():
                self._logs = self._compute()
            self._compute = None  # release the step's tensors
        return self._logs

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())

    def __repr__(self) -> str:
        return f"LazyLogs({self._get()!r})"


@dataclass
class HeadOutput:
    """A head's loss and the diagnostics it logs (scalars)."""

    loss: torch.Tensor
    logs: Mapping = field(default_factory=dict)  # a dict, or LazyLogs computed when read


class Head(nn.Module):
    """Interface: ``forward(q, batch, item_tower) -> HeadOutput``.

    ``bind(schema, known)`` runs once before training with the data's sizes, item counts
    and train positives. Every softmax head owns a ``Temperature`` and logs: loss,
    temperature, mean positive and negative logit, accidental-hit rate and effective
    negatives per example.
    """

    def __init__(self, temperature: float = 1.0, learn_temperature: bool = False):
        super().__init__()
        self.temperature = Temperature(temperature, learn_temperature)
        self.known: KnownPositives | None = None
        self.n_items = 0

    def bind(self, schema, known: KnownPositives) -> None:
        """Attach the data (called by ``TwoTowerModule.setup``)."""
        self.known, self.n_items = known, schema.n_items

    def callbacks(self) -> list:
        """Lightning callbacks the head needs during training (none by default)."""
        return []

    def score_temperature(self) -> torch.Tensor:
        """T of the item scores: the logits of item j are q . v_j / T (the head's temperature;
        a tree with a leaf head: that head's). The retrieval prior and the rating block are
        scaled by it."""
        return self.temperature()

    def probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        """(Q, N) scores q . v (all N items) -> the probabilities the loss models: a
        softmax over the catalogue of scores / T (every softmax head; sampled and in-batch
        heads estimate the same distribution). Sums to 1 per row: a multi-class model
        spreads one unit over a document's several labels."""
        return torch.softmax(scores / self.temperature(), dim=-1)

    def size_checks(self, n_items: int) -> list[tuple[str, int, int, str]]:
        """``(argument, value, bound, fix)``: counts that must satisfy 1 <= value < bound for a
        catalogue of ``n_items`` (``check_head_sizes`` raises otherwise); none by default."""
        return []

    def softmax_loss(self, pos, neg, log_q_pos=None, log_q_neg=None, hits=None, hardest=None,
                     extra_logs: dict | None = None, drop=None) -> HeadOutput:
        """Cross-entropy with the positive in column 0, after the corrections; plus logs.

        pos (B,), neg (B, C) raw scores q . v. ``hits`` (B, C): accidental hits / known
        positives, masked and counted in ``accidental_hit_rate``. ``drop`` (B, C): columns
        that are masked but are not negatives at all (the row's own positive among the
        in-batch candidates, padding), so they are left out of that rate.
        """
        T = self.temperature()
        removed = hits if drop is None else (drop if hits is None else hits | drop)
        logits = corrected_logits(pos, neg, T, log_q_pos, log_q_neg, removed, hardest)  # (B, 1 + C)
        loss = F.cross_entropy(logits, torch.zeros(len(pos), dtype=torch.long, device=pos.device))

        def logs() -> dict:  # run by LazyLogs when the logs are read
            kept = torch.isfinite(logits[:, 1:])  # (B, C') negatives that carry mass
            live = ~removed if removed is not None else torch.ones_like(neg, dtype=torch.bool)
            candidates = ~drop if drop is not None else torch.ones_like(neg, dtype=torch.bool)
            rate = torch.tensor(0.0, device=pos.device)
            if hits is not None:  # share of real candidates that were accidental hits
                rate = (hits & candidates).sum().float() / candidates.sum().clamp(min=1)
            # masked_select: the elements of neg[live] in the same order (so the same mean), without
            # boolean indexing's nonzero + index pass (~3x faster on a (1024, 1024) block)
            neg_mean = neg.masked_select(live).mean() if live.any() else neg.new_tensor(float("nan"))
            out = head_logs(T, pos.mean(), neg_mean, rate, kept.sum(1).float().mean())
            out.update(extra_logs or {})
            return out

        return HeadOutput(loss, LazyLogs(logs))

    def softmax_loss_at(self, scores, target, log_q=None, hits=None) -> HeadOutput:
        """``softmax_loss`` for candidates that hold each row's positive: scores (B, C) raw
        q . v, row b's positive at column ``target[b]`` (B,) (in-batch negatives). ``hits``
        (B, C) are masked except at the target. The same loss and logs as ``softmax_loss``
        with the positive moved to column 0 and its own column dropped (``corrected_logits_at``),
        without that (B, 1 + C) copy."""
        T = self.temperature()
        logits = corrected_logits_at(scores, target, T, log_q, hits)  # (B, C)
        loss = F.cross_entropy(logits, target)

        def logs() -> dict:  # run by LazyLogs when the logs are read; sums, no (B, C) selection
            B, C = scores.shape
            rows = torch.arange(B, device=scores.device)
            pos = scores[rows, target]  # (B,) the positives, which are no candidates of their own row
            n_hit, hit_sum = scores.new_zeros(()), scores.new_zeros(())
            if hits is not None:  # accidental hits off the positives' own entries
                on_pos = hits[rows, target]  # (B,)
                n_hit = hits.sum() - on_pos.sum()
                hit_sum = (scores * hits).sum() - (pos * on_pos).sum()
            n_neg = B * C - B  # real candidates: every entry but the positives
            n_live = n_neg - n_hit  # the negatives
            neg_mean = (scores.sum() - pos.sum() - hit_sum) / n_live if n_live > 0 else scores.new_tensor(float("nan"))
            kept = (torch.isfinite(logits).sum() - B).float() / B  # finite negatives per row (the target is)
            return head_logs(T, pos.mean(), neg_mean, n_hit.float() / max(1, n_neg), kept)

        return HeadOutput(loss, LazyLogs(logs))
