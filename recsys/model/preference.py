"""The pieces of a preference stage (``recsys.model.heads.PreferenceHead``): the frozen
reference, the rejected-item pools and their masks, the losses, the collapse diagnostics.

A two-tower softmax is a policy over items, p(i | u) = softmax_i(s(u, i)), s = q_u . v_i / T.
A trained checkpoint is the reference p_ref; a user's liked train item is the chosen w, and
rejected items are explicit dislikes (ratings <= 2) or on-policy negatives (items the
reference ranks high that the user did not rate positively). Shapes: B batch, R rejected
items per example, N catalogue, D dim, U users.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from recsys.data.vocab import Vocab
from recsys.errors import ConfigError, DataError
from recsys.eval.metrics import topk_kl
from recsys.model.checkpoint_file import read_torch_file
from recsys.retrieval import make_retriever

__all__ = ["Reference", "reference_state", "RejectedPools", "dpo_loss", "unlikelihood_loss", "bpr_loss",
           "dpo_positive_penalty", "collapse_diagnostics", "OBJECTIVES"]

OBJECTIVES = ("dpo", "ntr", "bpr", "nll")


def reference_state(path: str, item_fingerprint: str, user_fingerprint: str | None = None) -> tuple[dict, list]:
    """``(state_dict, optimizer_states)`` of the ``recsys fit`` checkpoint ``path`` (read without
    running code, ``read_torch_file``), after checking that it was trained on the same item (and user)
    vocabulary as the data of the preference stage: its rows must mean the same ids."""
    ckpt = read_torch_file(path, what="reference checkpoint")
    extra = ckpt.get("recsys")
    if not isinstance(extra, dict) or "state_dict" not in ckpt:
        raise DataError(f"reference checkpoint {path!r} has no recsys block: only checkpoints written by `recsys fit` "
                        "can be a reference. Fix: train the reference with `recsys fit --config ...`.")
    checks = [("item", extra.get("item_fingerprint"), item_fingerprint)]
    if user_fingerprint is not None and extra.get("user_vocab"):
        checks.append(("user", Vocab.from_state(extra["user_vocab"]).fingerprint(), user_fingerprint))
    for kind, theirs, ours in checks:
        if theirs and theirs != ours:
            raise DataError(f"reference checkpoint {path!r} was trained on dataset {extra.get('dataset')!r} with "
                            f"{kind} vocab {theirs}, but the preference stage's data has {kind} vocab {ours}: its "
                            "embedding rows would map to other ids. Fix: load the same dataset, filters and split "
                            "seed as the reference's fit (data block of its config), or retrain the reference.")
    return ckpt["state_dict"], list(ckpt.get("optimizer_states") or [])


class Reference(nn.Module):
    """The frozen reference policy: a copy of the query tower (always in eval mode, no
    gradients) and the catalogue's item embeddings (N, D), computed once when loaded.

    Its state (weights and embeddings) is saved in the stage's checkpoints, so a checkpoint
    of the stage evaluates and resumes without the reference file.
    """

    def __init__(self, query_tower: nn.Module, n_items: int, dim: int):
        super().__init__()
        self.query_tower = query_tower.requires_grad_(False)
        self.register_buffer("items", torch.zeros(n_items, dim))  # (N, D) reference item embeddings
        self.register_buffer("loaded", torch.tensor(False))

    def train(self, mode: bool = True) -> Reference:
        """Stays in eval mode (no bag dropout): the reference is a fixed function."""
        return super().train(False)

    @torch.no_grad()
    def load(self, query_state: dict, items: torch.Tensor) -> None:
        """Set the reference from the checkpoint's query-tower weights and item embeddings (N, D)."""
        self.query_tower.load_state_dict(query_state, strict=True)
        if items.shape != self.items.shape:
            raise ConfigError(f"reference item embeddings have shape {tuple(items.shape)}, the model's "
                              f"{tuple(self.items.shape)}. Fix: use the reference's tower settings (dim, item_bias).")
        self.items.copy_(items)
        self.loaded.fill_(True)

    @torch.no_grad()
    def query(self, batch: dict) -> torch.Tensor:
        """(B, D) reference query embeddings of a batch."""
        return self.query_tower(batch)


class RejectedPools:
    """Per-user pools of rejected items and the (B, R) sample of a batch, with its masks.

    Two pools, CSR (U, N): ``explicit`` (the user's train dislikes) and ``mined`` (the
    reference's top-``mine_k`` items over the whole catalogue, found with FAISS, the user's
    own train items included: the mask below removes them, so with the mask on they are the
    items the reference ranks high that the user never rated positively, the on-policy
    negatives). Each example draws ``round(explicit_share * R)`` items from its user's
    explicit pool and the rest from the mined pool, uniformly with replacement; a user with
    an empty pool gets padding (-1) there, never items of the other pool, so the ratio holds.

    Masks (each counted in ``last_counts``): padding and ids outside the catalogue always;
    with ``mask_shared`` a rejected item that is also a train positive of the user (the chosen
    item included), the analogue of the tokens that chosen and rejected responses share.
    """

    def __init__(self, explicit: sp.csr_matrix | None, mined: sp.csr_matrix | None, num_rejected: int,
                 explicit_share: float, mask_shared: bool = True):
        self.num_rejected, self.explicit_share, self.mask_shared = num_rejected, explicit_share, mask_shared
        self.pools = []
        n_explicit = int(round(explicit_share * num_rejected))
        for pool, n in ((explicit, n_explicit), (mined, num_rejected - n_explicit)):
            if n > 0:
                if pool is None:
                    raise ConfigError(f"explicit_share={explicit_share} asks for {n} rejected items from a pool this "
                                      "data does not have. Fix: explicit dislikes need data.dislike_threshold; mined "
                                      "ones need rejected: on_policy or mixed.")
                m = pool.tocsr()
                self.pools.append((torch.from_numpy(m.indptr.astype(np.int64)),
                                   torch.from_numpy(m.indices.astype(np.int64)), n))
        self.last_counts: dict[str, float] = {}

    def sample(self, users: torch.Tensor) -> torch.Tensor:
        """(B, R) rejected ids of the batch ``users`` (B,), -1 where a pool is empty (torch's
        global RNG: seeded and checkpointed like every other draw)."""
        u = users.cpu()
        parts = []
        for indptr, indices, n in self.pools:
            start = indptr[u]
            size = indptr[u + 1] - start  # (B,)
            pos = start[:, None] + (torch.rand(len(u), n) * size[:, None]).long()  # (B, n)
            ids = indices[pos.clamp(max=max(len(indices) - 1, 0))] if len(indices) else torch.zeros_like(pos)
            parts.append(torch.where(size[:, None] > 0, ids, torch.full_like(ids, -1)))
        return torch.cat(parts, dim=1).to(users.device)

    def masks(self, users: torch.Tensor, rejected: torch.Tensor, known, n_items: int) -> torch.Tensor:
        """(B, R) bool, True = left out of the loss: padding / ids outside [0, N), and with
        ``mask_shared`` the user's train positives (``known``: ``KnownPositives``)."""
        pad = (rejected < 0) | (rejected >= n_items)
        shared = torch.zeros_like(pad)
        if known is not None:
            shared = known.contains(users, rejected.clamp(0, n_items - 1)) & ~pad
        total = max(rejected.numel(), 1)
        self.last_counts = {"rejected_padding": float(pad.sum()) / total,
                            "rejected_shared": float(shared.sum()) / total}
        return pad | shared if self.mask_shared else pad


def mine_top(ref_queries: np.ndarray, ref_items: np.ndarray, k: int) -> sp.csr_matrix:
    """(U, N) binary CSR of each user's top-``k`` items under the reference (FAISS exact inner
    product over the whole catalogue; nothing excluded)."""
    U, N = len(ref_queries), len(ref_items)
    if not 1 <= k <= N:
        raise ConfigError(f"mine_k={k}: need 1 <= mine_k <= N={N} (items mined per user). Fix: e.g. mine_k=50.")
    _, I = make_retriever("flat").build(np.ascontiguousarray(ref_items, dtype=np.float32)).search(
        np.ascontiguousarray(ref_queries, dtype=np.float32), k)
    rows = np.repeat(np.arange(U), k)
    m = sp.csr_matrix((np.ones(U * k, dtype=np.float32), (rows, I.ravel())), shape=(U, N))
    m.sum_duplicates()
    return m


def _masked_rows(d: torch.Tensor, masked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(d with masked entries at -inf, (B,) rows with at least one live entry)."""
    return d.masked_fill(masked, float("-inf")), ~masked.all(dim=1)


def dpo_loss(s_w, s_ref_w, s_l, s_ref_l, masked, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The DPO / S-DPO term: mean over rows with a live rejected item of

        softplus( logsumexp_{l in N(u)} beta * [ (s(u,l) - s_ref(u,l)) - (s(u,w) - s_ref(u,w)) ] )

    (Rafailov et al., NeurIPS 2023, "Direct Preference Optimization"; with several rejected
    items, the S-DPO of Chen et al., NeurIPS 2024, "On Softmax Direct Preference Optimization
    for Recommendation"). With one rejected item it is -log sigmoid(beta (r_w - r_l)), the
    Bradley-Terry likelihood of the preference under the implicit reward r = s - s_ref.

    Why scores suffice: DPO's reward is the log-ratio log p(y|u) - log p_ref(y|u), and for a
    softmax log p(y|u) = s(u,y) - log Z(u), log Z(u) = logsumexp_j s(u,j). The log-ratio is
    (s(u,y) - s_ref(u,y)) - (log Z(u) - log Z_ref(u)); the second bracket is the same for every
    item y of user u, so in the difference between a rejected and the chosen item it cancels:
    no full-catalogue normalisation is needed, only the scores of the chosen and rejected items.

    s_w, s_ref_w (B,); s_l, s_ref_l (B, R); masked (B, R) True = left out. Returns (loss, rows (B,)).
    """
    d = beta * ((s_l - s_ref_l) - (s_w - s_ref_w)[:, None])  # (B, R)
    d, rows = _masked_rows(d, masked)
    if not rows.any():
        return s_w.sum() * 0.0, rows
    return F.softplus(torch.logsumexp(d[rows], dim=1)).mean(), rows


def unlikelihood_loss(s_l, log_z, masked) -> torch.Tensor:
    """The "not-to-recommend" term: mean over live rejected items of -log(1 - p(l|u)), p the
    policy's softmax over the catalogue, log p(l|u) = s(u,l) - log Z(u) (Wang et al., 2023,
    "Learning from Negative User Feedback and Measuring Responsiveness for Sequential
    Recommenders", after the unlikelihood training of Welleck et al., ICLR 2020).

    s_l (B, R), log_z (B,), masked (B, R)."""
    log_p = (s_l - log_z[:, None]).clamp(max=-1e-6)  # (B, R) < 0
    nll = -torch.log(-torch.expm1(log_p))  # -log(1 - p), stable for p near 0 and near 1
    live = ~masked
    return (nll * live).sum() / live.sum().clamp(min=1)


def bpr_loss(s_w, s_l, masked) -> torch.Tensor:
    """Pairwise BPR over (chosen, rejected): mean over live pairs of -log sigmoid(s(u,w) - s(u,l))
    (Rendle et al., UAI 2009, "BPR: Bayesian Personalized Ranking from Implicit Feedback"),
    with the rejected items as the negatives. s_w (B,), s_l (B, R), masked (B, R)."""
    live = ~masked
    return (F.softplus(s_l - s_w[:, None]) * live).sum() / live.sum().clamp(min=1)


def dpo_positive_penalty(log_p_w, log_p_ref_w) -> torch.Tensor:
    """DPO-positive: mean of max(0, log p_ref(w|u) - log p(w|u)), a penalty once the chosen
    item's log-probability falls below the reference's (Pal et al., 2024, "Smaug: Fixing
    Failure Modes of Preference Optimisation with DPO-Positive"). (B,), (B,)."""
    return F.relu(log_p_ref_w - log_p_w).mean()


def collapse_diagnostics(xq: np.ndarray, xq_ref: np.ndarray, xb: np.ndarray, xb_ref: np.ndarray, temperature: float,
                         chosen: sp.csr_matrix, seen: sp.csr_matrix, k: int = 100) -> dict[str, float]:
    """Signs that a preference stage degenerates, for queries xq (Q, D) (their reference
    embeddings xq_ref (Q, D)), item embeddings xb, xb_ref (N, D) without the retrieval prior:

    - ``chosen_margin``: mean of s(u,w) - s_ref(u,w) over the held-out chosen pairs (``chosen``
      (Q, N), e.g. validation items rated >= 4): below 0 when the chosen items' scores fall,
      the failure DPO's NLL term is there to prevent;
    - ``chosen_logp_margin``: the same for log p(w|u) - log p_ref(w|u), the scores less each
      user's log-partition over the whole catalogue: below 0 when the chosen items lose
      probability even while their scores rise (the other items' rising faster);
    - ``kl_top{k}``: the mean KL(p || p_ref) over the policy's top-k items (seen items excluded,
      ``seen`` (Q, N)), both renormalised there (``recsys.eval.metrics.topk_kl``); k shrinks to
      what every query has left when a catalogue is small.
    """
    t = float(temperature)
    rows, cols = chosen.nonzero()
    margin = logp_margin = float("nan")
    if len(rows):
        s = (np.einsum("ij,ij->i", xq[rows], xb[cols]) - np.einsum("ij,ij->i", xq_ref[rows], xb_ref[cols])) / t
        margin = float(s.mean())
        dz = _log_partition(xq, xb, t) - _log_partition(xq_ref, xb_ref, t)  # (Q,) log Z - log Z_ref
        logp_margin = float((s - dz[rows]).mean())
    k = max(1, min(k, len(xb) - int(np.diff(seen.indptr).max(initial=0))))  # every row has k unseen items
    _, I = make_retriever("exact").build(np.ascontiguousarray(xb, dtype=np.float32)).search(
        np.ascontiguousarray(xq, dtype=np.float32), k, exclude=seen)
    ok = (I >= 0).all(axis=1)
    Ic = I[ok].clip(0)
    lp = np.einsum("qd,qkd->qk", xq[ok], xb[Ic]) / t  # (Q', k)
    lr = np.einsum("qd,qkd->qk", xq_ref[ok], xb_ref[Ic]) / t
    return {"chosen_margin": margin, "chosen_logp_margin": logp_margin, f"kl_top{k}": topk_kl(lp, lr)}


def _log_partition(xq: np.ndarray, xb: np.ndarray, t: float, block: int = 1024) -> np.ndarray:
    """(Q,) log sum_j exp(q . v_j / t) over the whole catalogue, ``block`` queries at a time."""
    out = np.empty(len(xq))
    for s in range(0, len(xq), block):
        z = (xq[s:s + block] @ xb.T).astype(np.float64) / t  # (b, N)
        m = z.max(axis=1, keepdims=True)
        out[s:s + block] = (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True))).ravel()
    return out
