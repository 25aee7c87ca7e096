"""Reporting: the one Markdown table writer, the one JSON scrubber, and machine information.

Every table the project prints or writes (``recsys evaluate``, ``demo``, ``compare``, the
benchmarks) goes through ``markdown_table``; every JSON file through ``json_safe``; every
record of where a figure was measured through ``machine``.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

__all__ = ["fmt", "markdown_table", "metric_table", "json_safe", "threads", "machine"]


def fmt(v) -> str:
    """A compact table cell: '-' for None, 'nan', thousands separators for big numbers,
    3 significant digits below 1, 2 decimals below 100; strings as they are."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if v != v:
            return "nan"
        a = abs(v)
        if a >= 1e5:
            return f"{v:,.0f}"
        if a >= 100:
            return f"{v:.0f}"
        if a >= 1:
            return f"{v:.2f}"
        return f"{v:.3g}"
    if isinstance(v, (int, np.integer)) and abs(int(v)) >= 10_000:
        return f"{int(v):,}"
    return str(v)


def markdown_table(rows: list[Mapping], cols: list[str] | None = None, cell: Callable[[object], str] = fmt) -> str:
    """A Markdown table of ``rows`` (one mapping each) over ``cols`` (default: the first row's
    keys); a missing value is ``-``, others go through ``cell``.

    >>> print(markdown_table([{"model": "pop", "recall@10": 0.07}], ["model", "recall@10", "ndcg@10"]))
    | model | recall@10 | ndcg@10 |
    |---|---|---|
    | pop | 0.07 | - |
    """
    if not rows:
        return "(no rows)"
    cols = list(cols or rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    out += ["| " + " | ".join("-" if r.get(c) is None else cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def metric_table(rows: Mapping[str, Mapping[str, float]], metrics: list[str], digits: int = 4) -> str:
    """One row per model (the keys of ``rows``), one column per metric, ``digits`` decimals.

    >>> print(metric_table({"pop": {"recall@10": 0.07}}, ["recall@10", "ndcg@10"]))
    | model | recall@10 | ndcg@10 |
    |---|---|---|
    | pop | 0.0700 | - |
    """
    table = [{"model": name, **{m: values.get(m) for m in metrics}} for name, values in rows.items()]
    return markdown_table(table, ["model", *metrics],
                          cell=lambda v: v if isinstance(v, str) else f"{float(v):.{digits}f}")


def json_safe(x):
    """``x`` with everything JSON cannot hold made plain: numpy scalars and arrays to Python
    numbers and lists, NaN / inf to None (strict JSON), paths to strings, keys to strings."""
    if isinstance(x, Mapping):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, Path):
        return str(x)
    return x


def threads() -> dict:
    """The thread counts in force now: torch (intra / inter-op), FAISS, numpy's BLAS, OpenMP env."""
    import faiss
    import torch
    from threadpoolctl import threadpool_info

    blas = sorted({f"{i.get('internal_api')}={i.get('num_threads')}" for i in threadpool_info()
                   if i.get("user_api") == "blas"})
    return {"torch": torch.get_num_threads(), "torch_interop": torch.get_num_interop_threads(),
            "faiss": faiss.omp_get_max_threads(), "numpy_blas": ", ".join(blas),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")}


def machine() -> dict:
    """Machine, library versions, threads, load, date and commit: where a figure was measured."""
    import faiss
    import lightning
    import psutil
    import scipy
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001 - no git: leave it out
        commit = ""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__, "lightning": lightning.__version__, "faiss": faiss.__version__,
        "numpy": np.__version__, "scipy": scipy.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "threads": threads(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "git_commit": commit,
    }
