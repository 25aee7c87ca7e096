"""The one safe reader of torch files (checkpoints): tensors and plain containers only."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

from recsys.errors import DataError

__all__ = ["read_torch_file"]


def read_torch_file(path: str | os.PathLike, what: str = "checkpoint") -> dict:
    """The dict stored in the torch file ``path``, read with ``weights_only=True``: reading it
    never runs code (a file holding other objects is refused unread). ``DataError`` naming
    the file for a missing, foreign or corrupt one; ``what`` names it in the message."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{what} {str(path)!r} does not exist. Fix: pass a .ckpt written by `recsys fit`, "
            "e.g. runs/recsys/version_0/checkpoints/last.ckpt."
        )
    try:  # tensors and plain containers only: reading a checkpoint never runs code
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise DataError(
            f"{what} {str(path)!r} holds objects other than tensors and plain values ({str(e).splitlines()[0]}); "
            "it is refused unread, since loading arbitrary pickles can run code. Fix: pass a .ckpt written by "
            "`recsys fit` (this version), or load it yourself if you trust its origin."
        ) from e
    except Exception as e:  # corrupt / not a torch file
        raise DataError(
            f"{what} {str(path)!r} could not be read ({type(e).__name__}: {e}): it must be a "
            "torch checkpoint. Fix: pass a .ckpt written by `recsys fit`."
        ) from e
    if not isinstance(ckpt, dict):
        raise DataError(f"{what} {str(path)!r} holds a {type(ckpt).__name__}, not a checkpoint dict. Fix: pass a "
                        ".ckpt written by `recsys fit`.")
    return ckpt
