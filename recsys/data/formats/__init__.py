"""Readers of interaction and side files, one module per family of formats."""

from recsys.data.formats.adjacency import read_adjacency
from recsys.data.formats.arff import read_arff, read_mulan_labels
from recsys.data.formats.movielens import (
    ML100K_GENRES,
    read_ml1m_movies,
    read_ml1m_users,
    read_ml100k_items,
    read_ml100k_users,
    read_movielens,
)
from recsys.data.formats.table import read_interactions
from recsys.data.formats.xc import read_xc

__all__ = ["ML100K_GENRES", "read_adjacency", "read_arff", "read_mulan_labels", "read_interactions",
           "read_movielens", "read_ml100k_items", "read_ml100k_users", "read_ml1m_movies", "read_ml1m_users",
           "read_xc"]
