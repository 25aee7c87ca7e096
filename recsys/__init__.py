"""recsys."""
