"""Tests for recsys.model.candidates: proposals, empirical frequencies, log q, binding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recsys.errors import ConfigError
from recsys.model.candidates import LogUniformSampler, PopularitySampler, UniformSampler

COUNTS = np.array([0, 1, 3, 8, 15, 2], dtype=np.int64)  # N = 6 train counts


def chi_square(ids: torch.Tensor, p: torch.Tensor) -> float:
    """Pearson chi-square of the draws ``ids`` against the probabilities ``p``."""
    obs = torch.bincount(ids, minlength=len(p)).double()
    exp = len(ids) * p.double()
    return float(((obs - exp) ** 2 / exp).sum())


# chi-square with N - 1 = 5 degrees of freedom: P(X > 25) ~ 1.4e-4. The draws use a fixed
# seed, so the test is deterministic; a proposal off by a few percent gives X in the hundreds.
CHI2_MAX = 25.0
DRAWS = 60_000


def test_popularity_probs_are_count_plus_one_to_the_alpha():
    s = PopularitySampler(alpha=0.5)
    s.bind(COUNTS)
    w = (COUNTS + 1.0) ** 0.5  # [1, 1.414, 2, 3, 4, 1.732]
    torch.testing.assert_close(s.probs, torch.tensor(w / w.sum(), dtype=torch.float32))


def test_log_uniform_probs_follow_popularity_ranks():
    s = LogUniformSampler()
    s.bind(COUNTS)
    # ranks by count (0 = most popular): item 4 -> 0, item 3 -> 1, item 2 -> 2, item 5 -> 3,
    # item 1 -> 4, item 0 -> 5; p(r) = log((r + 2) / (r + 1)) / log(N + 1)
    rank = np.array([5, 4, 2, 1, 0, 3])
    p = np.log((rank + 2.0) / (rank + 1.0)) / math.log(7.0)
    assert math.isclose(p.sum(), 1.0, rel_tol=1e-12)
    torch.testing.assert_close(s.probs, torch.tensor(p, dtype=torch.float32))
    assert s.probs.argmax() == 4  # the most popular item is the most likely


@pytest.mark.parametrize("sampler", [PopularitySampler(0.75), PopularitySampler(1.0), LogUniformSampler(),
                                     UniformSampler()], ids=["pop0.75", "pop1", "loguniform", "uniform"])
def test_empirical_frequencies_match_probs(sampler):
    sampler.bind(COUNTS)
    ids, log_q = sampler.sample(DRAWS, generator=torch.Generator().manual_seed(0))
    assert ids.shape == (DRAWS,) and ids.dtype == torch.int64
    assert 0 <= int(ids.min()) and int(ids.max()) < len(COUNTS)
    assert chi_square(ids, sampler.probs) < CHI2_MAX
    # log_q = log of the expected count in M draws = log(M p_j)
    torch.testing.assert_close(log_q, torch.log(DRAWS * sampler.probs[ids]))


def test_chi_square_detects_a_wrong_proposal():
    # Guard for the guard: draws from alpha = 0.75 do not pass as alpha = 1.
    s75, s1 = PopularitySampler(0.75), PopularitySampler(1.0)
    s75.bind(COUNTS)
    s1.bind(COUNTS)
    ids, _ = s75.sample(DRAWS, generator=torch.Generator().manual_seed(0))
    assert chi_square(ids, s1.probs) > 10 * CHI2_MAX


def test_log_q_of_given_ids_is_log_M_p():
    s = PopularitySampler(1.0)
    s.bind(np.array([1, 3]))  # p = (2, 4) / 6 = (1/3, 2/3)
    # M = 3 draws: expected counts (1, 2) -> log q = (0, log 2)
    torch.testing.assert_close(s.log_q(torch.tensor([0, 1]), 3), torch.tensor([0.0, math.log(2)]))


def test_uniform_without_replacement_returns_distinct_ids():
    s = UniformSampler(replacement=False)
    s.bind(np.zeros(10))
    for M in (1, 4, 10):
        ids, log_q = s.sample(M, generator=torch.Generator().manual_seed(M))
        assert len(torch.unique(ids)) == M
        # inclusion probability M / N, the same for every item
        torch.testing.assert_close(log_q, torch.full((M,), math.log(M / 10)))
        torch.testing.assert_close(s.log_q(ids, M), log_q)
    ids, _ = s.sample(10)
    assert sorted(ids.tolist()) == list(range(10))  # M = N: every item once
    with pytest.raises(ConfigError, match="Fix:"):
        s.sample(11)


def test_seeded_generator_is_reproducible():
    s = PopularitySampler()
    s.bind(COUNTS)
    a, _ = s.sample(50, generator=torch.Generator().manual_seed(3))
    b, _ = s.sample(50, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize("sampler", [UniformSampler(), UniformSampler(replacement=False),
                                     PopularitySampler(), LogUniformSampler()],
                         ids=["uniform", "uniform-noreplace", "pop", "loguniform"])
def test_use_before_bind_raises(sampler):
    with pytest.raises(ConfigError, match="before bind.*Fix:"):
        sampler.sample(3)
    with pytest.raises(ConfigError, match="before bind"):
        sampler.log_q(torch.tensor([0]), 3)


def test_uniform_with_replacement_draws_every_item_equally_and_log_q_is_log_M_over_N():
    s = UniformSampler()
    s.bind(COUNTS)
    ids, log_q = s.sample(DRAWS, torch.Generator().manual_seed(0))
    assert chi_square(ids, torch.full((6,), 1 / 6)) < CHI2_MAX
    assert torch.allclose(log_q, torch.full((DRAWS,), math.log(DRAWS / 6)))
    assert torch.allclose(s.log_q(torch.tensor([0, 5]), 10), torch.full((2,), math.log(10 / 6)))
