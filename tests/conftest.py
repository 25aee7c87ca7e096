"""Shared fixtures: where the real datasets are, and tiny synthetic data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RECSYS_DATA") or REPO.parent / "shared" / "data")
TINY = {"n_users": 300, "n_items": 120, "n_clusters": 4, "interactions_per_user": 15.0}
HEAD_NAMES = ("full", "sigmoid", "sampled", "inbatch", "hard")


def config_args(dataset: str, head: str) -> list[str]:
    """``--config`` arguments of a shipped config: the dataset's base plus one head file."""
    folder = REPO / "configs" / dataset
    return ["--config", str(folder / "base.yaml"), "--config", str(folder / f"{head}.yaml")]


def need(*parts: str) -> Path:
    """Path under the shared data folder, or skip with the reason it is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not found: {p} (set RECSYS_DATA to the data folder, layout in data/README.md)")
    return p


@pytest.fixture(scope="session")
def shared_root() -> Path:
    need()
    return SHARED


@pytest.fixture(scope="session")
def ml1m(shared_root):
    from recsys.data import load_dataset

    need("ml-1m", "ratings_no_timestamp.dat.gz")
    return load_dataset("ml-1m", shared_root)


@pytest.fixture()
def tiny_dm():
    from recsys.data import InteractionDataModule

    return InteractionDataModule(dataset="synthetic", synthetic=dict(TINY), batch_size=64, max_history=10)
