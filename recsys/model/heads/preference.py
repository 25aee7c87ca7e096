"""Preference fine-tuning: DPO-style training against a frozen reference, with an NLL term."""

from __future__ import annotations

import numpy as np
import torch

from recsys.errors import ConfigError
from recsys.model.chunked import chunked_logsumexp
from recsys.model.heads.base import Head, HeadOutput, LazyLogs, head_logs
from recsys.model.heads.full import FullSoftmax
from recsys.model.preference import (
    OBJECTIVES,
    RejectedPools,
    bpr_loss,
    dpo_loss,
    dpo_positive_penalty,
    mine_top,
    unlikelihood_loss,
)

REJECTED = ("explicit", "on_policy", "mixed")


class PreferenceHead(Head):
    """A preference stage on (chosen, rejected) items, for a user u, chosen item w (a train
    item rated >= ``data.min_rating``) and rejected set N(u) (``recsys.model.preference``):

        L = softplus( logsumexp_{l in N(u)} beta [ (s(u,l) - s_ref(u,l)) - (s(u,w) - s_ref(u,w)) ] )
            + alpha CE(u, w) + lambda max(0, log p_ref(w|u) - log p(w|u))

    s = q . v / T; s_ref the frozen reference's scores (``model.reference``: a ``recsys fit``
    checkpoint, from which the policy starts). One rejected item gives DPO (Rafailov et al.
    2023), several S-DPO (Chen et al. 2024); ``dpo_loss`` says why the per-user log-partitions
    cancel. CE is the injected ``ce`` head's softmax NLL of the chosen item (default: the full
    softmax with the user's other train items masked; a ``SampledSoftmax`` gives the
    logQ-corrected sampled NLL): the NLL term of Iterative RPO (Pang et al., 2024) and Llama 3,
    without which the chosen scores fall while the margins grow. The bracket is DPO-positive
    (Pal et al. 2024, ``dpo_positive``: lambda).

    Rejected items (``RejectedPools``): ``explicit`` (the user's train dislikes, from
    ``data.dislike_threshold``), ``on_policy`` (the reference's top-``mine_k`` with the user's
    positives masked) or ``mixed`` (``explicit_share`` of the R slots explicit). Padding and,
    with ``mask_shared``, rejected items that are train positives of the user are left out of
    the loss; both are counted (``train/rejected_padding``, ``train/rejected_shared``).

    ``objective``: ``dpo`` (above), or the two baselines on the same pairs, each + alpha CE:
    ``ntr``, the "not-to-recommend" loss (Wang et al. 2023: -log(1 - p(l|u)) on the rejected
    items, ``unlikelihood_loss``) and ``bpr`` (-log sigmoid(s(u,w) - s(u,l)), ``bpr_loss``); and
    ``nll``, the control: the NLL term alone, on the same examples (what continued training
    on the chosen items does without any rejected item).

    Args:
        objective: ``dpo``, ``ntr``, ``bpr`` or ``nll``.
        beta: the weight of KL(p || p_ref) in the objective DPO optimises (reward - beta KL):
            larger stays closer to the reference; 0.1-1 is usual.
        alpha: weight of the NLL term (0 = pure DPO).
        dpo_positive: lambda of the DPO-positive penalty (0 = off).
        rejected / num_rejected / explicit_share / mine_k / mask_shared: the rejected items (R
            per example, ``RejectedPools``).
        ce: the NLL head (``class_path`` / ``init_args``); default ``FullSoftmax`` at the same T
            with ``mask_known_positives``.
        temperature / learn_temperature: T of s (the policy's and the reference's scores).
        chunk: items per block of the full-catalogue log-partitions (``ntr``, ``dpo_positive``).
        chosen_min_rating: only examples rated >= this are chosen items of the preference term
            (the batch's ``rating``); the NLL term still trains on every example. With
            ``data.min_rating`` unset, the NLL then sees every train positive, as the
            reference's training did, and only the liked ones are contrasted with rejected
            items. None: every example is a chosen item.
    """

    needs_reference = True

    def __init__(self, objective: str = "dpo", beta: float = 0.5, alpha: float = 1.0, dpo_positive: float = 0.0,
                 rejected: str = "mixed", num_rejected: int = 8, explicit_share: float = 0.5, mine_k: int = 50,
                 mask_shared: bool = True, ce: Head | None = None, temperature: float = 0.1,
                 learn_temperature: bool = False, chunk: int = 8192, chosen_min_rating: float | None = None):
        super().__init__(temperature, learn_temperature)
        if objective not in OBJECTIVES:
            raise ConfigError(f"objective={objective!r}: need one of {list(OBJECTIVES)}. Fix: pick one of them.")
        if rejected not in REJECTED:
            raise ConfigError(f"rejected={rejected!r}: need one of {list(REJECTED)}. Fix: pick one of them.")
        if not (beta > 0 and alpha >= 0 and dpo_positive >= 0):
            raise ConfigError(f"beta={beta}, alpha={alpha}, dpo_positive={dpo_positive}: need beta > 0 and alpha, "
                              "dpo_positive >= 0. Fix: e.g. beta=0.5, alpha=1, dpo_positive=0.")
        if not (isinstance(num_rejected, int) and num_rejected >= 1):
            raise ConfigError(f"num_rejected={num_rejected!r}: need an integer >= 1 (rejected items per example). "
                              "Fix: e.g. num_rejected=8.")
        share = {"explicit": 1.0, "on_policy": 0.0}.get(rejected, explicit_share)
        if not 0.0 <= share <= 1.0:
            raise ConfigError(f"explicit_share={explicit_share}: need a share in [0, 1]. Fix: e.g. 0.5.")
        self.objective, self.beta, self.alpha, self.dpo_positive = objective, beta, alpha, dpo_positive
        self.rejected, self.num_rejected, self.explicit_share = rejected, num_rejected, share
        self.mine_k, self.mask_shared, self.chunk = mine_k, mask_shared, chunk
        self.chosen_min_rating = chosen_min_rating
        self.ce = ce if ce is not None else FullSoftmax(temperature=temperature, mask_known_positives=True,
                                                        chunk=chunk)
        self.pools: RejectedPools | None = None

    def bind(self, schema, known) -> None:
        super().bind(schema, known)
        self.ce.bind(schema, known)

    def callbacks(self) -> list:
        return self.ce.callbacks()

    def size_checks(self, n_items: int) -> list[tuple[str, int, int, str]]:
        return self.ce.size_checks(n_items)

    def prepare(self, data, ref_queries: np.ndarray | None, ref_items: np.ndarray | None) -> None:
        """Build the rejected pools from ``data`` (``RecData``: its train dislikes) and the
        reference's embeddings of every user (U, D) and item (N, D) (the mined pool)."""
        explicit = mined = None
        if self.explicit_share > 0:
            if data.dislikes is None:
                raise ConfigError(f"PreferenceHead rejected={self.rejected!r} takes explicit dislikes, but the data "
                                  "keeps none. Fix: set data.dislike_threshold (e.g. 2; rated data only), or "
                                  "rejected: on_policy.")
            explicit = data.dislikes["train"]
        if self.explicit_share < 1:
            mined = mine_top(ref_queries, ref_items, self.mine_k)
        self.pools = RejectedPools(explicit, mined, self.num_rejected, self.explicit_share, self.mask_shared)

    def forward(self, q: torch.Tensor, batch: dict, item_tower, reference=None) -> HeadOutput:
        if reference is None or self.pools is None:
            raise ConfigError("PreferenceHead needs the frozen reference and its rejected pools, which "
                              "TwoTowerModule(reference=PATH) prepares when fitting. Fix: set model.reference to a "
                              "`recsys fit` checkpoint and train with `recsys fit`.")
        T = self.temperature()
        users, w = batch["user"], batch["item"]
        rej = self.pools.sample(users)  # (B, R)
        masked = self.pools.masks(users, rej, self.known, self.n_items)  # (B, R)
        if self.chosen_min_rating is not None:
            if "rating" not in batch:
                raise ConfigError(f"chosen_min_rating={self.chosen_min_rating} needs each example's rating, which "
                                  "the batches carry only when the data keeps ratings. Fix: set "
                                  "data.dislike_threshold (e.g. 2), or chosen_min_rating: null.")
            masked = masked | (batch["rating"] < self.chosen_min_rating)[:, None]  # not a chosen item: no pairs
        counts = dict(self.pools.last_counts)
        ids = rej.clamp(0, self.n_items - 1)
        q_ref = reference.query(batch)  # (B, D), no grad
        v_w = item_tower(w)  # (B, D)
        v_l = item_tower(ids.reshape(-1)).reshape(*ids.shape, -1)  # (B, R, D)
        s_w = (q * v_w).sum(-1) / T  # (B,)
        s_l = torch.einsum("bd,brd->br", q, v_l) / T  # (B, R)
        with torch.no_grad():
            s_ref_w = (q_ref * reference.items[w]).sum(-1) / T
            s_ref_l = torch.einsum("bd,brd->br", q_ref, reference.items[ids]) / T
        rows = ~masked.all(dim=1)
        log_z = None
        if self.objective == "dpo":
            pref, _ = dpo_loss(s_w, s_ref_w, s_l, s_ref_l, masked, self.beta)
        elif self.objective == "ntr":
            log_z = chunked_logsumexp(q / T, item_tower.forward_all(), self.chunk)  # (B,)
            pref = unlikelihood_loss(s_l, log_z, masked)
        elif self.objective == "bpr":
            pref = bpr_loss(s_w, s_l, masked)
        else:  # nll: the control, the NLL term alone on the same examples
            pref = s_w.sum() * 0.0
        loss = pref
        ce_loss = self.ce(q, batch, item_tower).loss if self.alpha > 0 else pref.new_zeros(())
        loss = loss + self.alpha * ce_loss
        penalty = pref.new_zeros(())
        if self.dpo_positive > 0:
            if log_z is None:
                log_z = chunked_logsumexp(q / T, item_tower.forward_all(), self.chunk)
            with torch.no_grad():
                log_z_ref = chunked_logsumexp(q_ref / T, reference.items, self.chunk)  # (B,)
            penalty = dpo_positive_penalty(s_w - log_z, s_ref_w - log_z_ref)
            loss = loss + self.dpo_positive * penalty

        def logs() -> dict:
            live = ~masked
            margin = (s_w - s_ref_w)[:, None] - (s_l - s_ref_l)  # (B, R) implicit reward margins
            out = head_logs(T, s_w.mean() * T, s_l[live].mean() * T if live.any() else s_w.new_tensor(float("nan")),
                            torch.tensor(counts["rejected_shared"]), live.sum(1).float().mean())
            out.update(preference_loss=pref.detach(), ce_loss=ce_loss.detach(), dpo_positive_penalty=penalty.detach(),
                       chosen_drift=(s_w - s_ref_w).mean(), reward_margin=margin[live].mean() if live.any() else
                       margin.new_tensor(float("nan")), rows_with_rejected=rows.float().mean(),
                       rejected_padding=torch.tensor(counts["rejected_padding"]),
                       rejected_shared=torch.tensor(counts["rejected_shared"]))
            return out

        return HeadOutput(loss, LazyLogs(logs))
