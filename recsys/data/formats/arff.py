"""Reader for Mulan multi-label ARFF files (the Mulan project's Bibtex, Delicious, Corel5k ...).

A Mulan dataset is an ARFF file (``@attribute NAME TYPE`` lines, then ``@data`` rows, each
dense ``v1,v2,...`` or sparse ``{index value,index value,...}``, 0-based attribute indices,
absent attributes 0) plus an XML header naming which attributes are labels::

    <labels xmlns="http://mulan.sourceforge.net/labels">
      <label name="TAG_2005"></label> ...

Every other attribute is a numeric feature. Only names are read from the XML (a regular
expression over ``<label name="...">``, no XML parser, so no entity expansion). Plain or gzip.
"""

from __future__ import annotations

import html
import os
import re

import numpy as np
import scipy.sparse as sp

from recsys.data.io import GZIP_ERRORS, corrupt_gzip_error, open_text, require_file
from recsys.errors import DataError

__all__ = ["read_mulan_labels", "read_arff"]

_LABEL = re.compile(r"<label\s+name\s*=\s*(?:\"([^\"]*)\"|'([^']*)')")
_FIX = ("Fix: use the dataset's own Mulan files (the .arff and its .xml label header), re-copied if "
        "they were cut short.")


def read_mulan_labels(path: str | os.PathLike) -> list[str]:
    """The label names of a Mulan XML label header, in file order."""
    p = require_file(path)
    with open_text(p) as fh:
        names = [html.unescape(a or b) for a, b in _LABEL.findall(fh.read())]
    if not names:
        raise DataError(f"{p}: no <label name=\"...\"> element; a Mulan label header names every label "
                        f"attribute of the ARFF file. {_FIX}")
    return names


def _attribute_name(p, lineno: int, line: str) -> str:
    rest = line.split(None, 1)[1].strip() if len(line.split(None, 1)) == 2 else ""
    if rest[:1] in "'\"" and rest:
        end = rest.find(rest[0], 1)
        if end > 0:
            return rest[1:end]
    elif rest:
        return rest.split()[0]
    raise DataError(f"{p}: line {lineno}: {line.strip()[:80]!r} is not '@attribute NAME TYPE'. {_FIX}")


def read_arff(path: str | os.PathLike, labels: list[str]) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Read a Mulan ARFF file into ``(features, labels)``.

    Args:
        path: the ARFF file (plain or ``.gz``).
        labels: the label attribute names (``read_mulan_labels``); every other attribute is
            a feature, numbered in header order.

    Returns:
        features: (R, F) float32 CSR of the non-zero feature values.
        labels: (R, L) float32 CSR with a 1 where a label attribute is non-zero, in the order
            of ``labels``.

    Raises:
        DataError: no ``@data`` section, a label name the header lacks, a malformed row or
            an attribute index out of range (the message names the line).
    """
    p = require_file(path)
    names: list[str] = []
    f_ptr, f_idx, f_val, l_ptr, l_idx = [0], [], [], [0], []
    try:
        with open_text(p) as fh:
            lineno = 0
            for lineno, line in enumerate(fh, start=1):
                s = line.strip()
                if not s or s.startswith("%"):
                    continue
                low = s[:10].lower()
                if low.startswith("@attribute"):
                    names.append(_attribute_name(p, lineno, s))
                elif low.startswith("@data"):
                    break
            else:
                raise DataError(f"{p}: no '@data' line (read {lineno} lines); an ARFF file declares its "
                                f"attributes, then '@data' and the rows. {_FIX}")
            pos = {n: i for i, n in enumerate(names)}
            missing = [n for n in labels if n not in pos]
            if missing:
                raise DataError(f"{p}: the label header names {len(missing)} attributes this file lacks, e.g. "
                                f"{missing[:3]}; the XML and the ARFF must come from the same dataset. {_FIX}")
            kind = np.full(len(names), -1, np.int64)  # attribute -> feature index, or -(label index) - 2
            label_at = np.array([pos[n] for n in labels], np.int64)
            kind[label_at] = -np.arange(len(labels)) - 2
            feat = np.flatnonzero(kind == -1)
            kind[feat] = np.arange(feat.size)
            header_lines = lineno
            for lineno, line in enumerate(fh, start=header_lines + 1):
                s = line.strip()
                if not s or s.startswith("%"):
                    continue
                try:
                    if s[0] == "{":
                        pairs = [t.split() for t in s.strip("{}").split(",") if t.strip()]
                        idx = np.array([int(a) for a, _ in pairs], np.int64)
                        val = np.array([float(v) for _, v in pairs], np.float64)
                    else:
                        val = np.array([float(v) for v in s.split(",")], np.float64)
                        if val.size != len(names):
                            raise ValueError(f"{val.size} values for {len(names)} attributes")
                        idx = np.arange(val.size)
                except ValueError as e:
                    raise DataError(f"{p}: line {lineno}: malformed row {s[:60]!r} ({e}). {_FIX}") from e
                if idx.size and (idx.min() < 0 or idx.max() >= len(names)):
                    raise DataError(f"{p}: line {lineno}: attribute index {int(idx.max())} is outside [0, "
                                    f"{len(names)}) declared by the header. {_FIX}")
                k = kind[idx]
                nz = val != 0
                f = nz & (k >= 0)
                f_idx.extend(k[f].tolist())
                f_val.extend(val[f].tolist())
                l_idx.extend((-k[nz & (k < -1)] - 2).tolist())
                f_ptr.append(len(f_idx))
                l_ptr.append(len(l_idx))
    except GZIP_ERRORS as e:
        raise corrupt_gzip_error(p, e) from e
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: is not a text file (undecodable byte at offset {e.start}). {_FIX}") from e
    rows = len(f_ptr) - 1
    features = sp.csr_matrix((np.asarray(f_val, np.float32), np.asarray(f_idx, np.int64), np.asarray(f_ptr)),
                             shape=(rows, feat.size))
    y = sp.csr_matrix((np.ones(len(l_idx), np.float32), np.asarray(l_idx, np.int64), np.asarray(l_ptr)),
                      shape=(rows, len(labels)))
    features.sort_indices()
    y.sort_indices()
    return features, y
