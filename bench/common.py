"""Shared benchmark helpers: threads, machine info, timing, peak memory, synthetic data, results.

Every benchmark sets its thread counts explicitly (``set_threads``): torch's OpenMP threads
busy-wait and collapse when the machine is oversubscribed, so an unset count measures the
neighbours as much as the code. Every result file records the machine, the load average
at start and end, the library versions and the thread counts next to the figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench import DEFAULTED
from recsys.reporting import fmt, json_safe, machine, markdown_table, threads  # noqa: F401 (re-exported)

RESULTS = Path(__file__).resolve().parent / "results"
THREADS = 2  # the thread count of every published figure
D = 64  # embedding dimension of every benchmark
BATCH = 1024  # training batch size of every benchmark


# ---- threads and machine ---------------------------------------------------------------
def set_threads(n: int = THREADS) -> None:
    """Pin torch (intra- and inter-op) and FAISS OpenMP threads to ``n``."""
    import faiss
    import torch
    from threadpoolctl import threadpool_limits

    threadpool_limits(n)  # numpy's BLAS (OpenBLAS) and any other OpenMP pool
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # only settable before the first inter-op work
        pass
    faiss.omp_set_num_threads(n)


def load() -> float:
    """1-minute load average."""
    return round(os.getloadavg()[0], 2)


# ---- timing ------------------------------------------------------------------------------
def time_windows(step, n_windows: int, steps_per_window: int, warmup: int = 0) -> list[float]:
    """Seconds of each of ``n_windows`` windows of ``steps_per_window`` calls of ``step()``,
    after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    out = []
    for _ in range(n_windows):
        t = time.perf_counter()
        for _ in range(steps_per_window):
            step()
        out.append(time.perf_counter() - t)
    return out


def rate_summary(seconds: list[float], units_per_window: float) -> dict:
    """Rates (units / s) of timed windows: median (the headline), best, and all of them.

    On a shared machine contention only ever slows a window down, so ``best`` is the
    closest to the code's own speed and ``median`` the typical one.
    """
    rates = [units_per_window / s for s in seconds]
    return {"median": statistics.median(rates), "best": max(rates), "windows": [round(r, 1) for r in rates],
            "window_seconds": [round(s, 4) for s in seconds]}


# ---- memory --------------------------------------------------------------------------------
def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    """Resident memory now."""
    import psutil

    return psutil.Process().memory_info().rss


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (VmHWM; ru_maxrss where /proc is absent)."""
    kib = _status_kib("VmHWM")
    if kib is None:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib * 1024


def reset_peak_rss() -> bool:
    """Reset the peak (VmHWM) to the current RSS (Linux >= 4.0); False where unsupported."""
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run_case(module: str, case: dict, timeout: float = 3600, as_user: bool = False) -> dict:
    """Run ``python -m module --case JSON`` in a fresh process (so memory peaks and
    allocator state do not mix between cases) and return the JSON it prints last.

    ``as_user``: the process gets the environment a ``recsys fit`` user has, without the
    ``OMP_WAIT_POLICY`` that importing ``bench`` sets (one the caller set stays)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(case.get("threads", THREADS)))
    if as_user:
        env["RECSYS_BENCH_AS_USER"] = "1"  # the child's ``import bench`` leaves the policy alone too
        if "OMP_WAIT_POLICY" in DEFAULTED:
            env.pop("OMP_WAIT_POLICY", None)
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", module, "--case", json.dumps(case)], capture_output=True,
                       text=True, env=env, timeout=timeout, cwd=Path(__file__).resolve().parents[1])
    if p.returncode != 0:
        tail = (p.stderr or p.stdout)[-3000:]
        return {**case, "error": f"exit {p.returncode}: {tail.strip().splitlines()[-1] if tail.strip() else ''}",
                "stderr_tail": tail, "wall_s": round(time.perf_counter() - t, 1)}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    out = json.loads(lines[-1])
    out.setdefault("wall_s", round(time.perf_counter() - t, 1))
    return out


def case_main(fn) -> bool:
    """In a subprocess started by ``run_case``: run ``fn(case)`` and print its JSON. Returns
    True when this process was such a case (the caller then returns)."""
    if "--case" not in sys.argv:
        return False
    case = json.loads(sys.argv[sys.argv.index("--case") + 1])
    set_threads(case.get("threads", THREADS))
    out = fn(case)
    print(json.dumps(json_safe(out)))
    return True


# ---- synthetic data ------------------------------------------------------------------------
def synthetic_data(n_items: int, n_users: int = 100_000, per_user: float = 10.0, zipf: float = 0.5,
                   n_clusters: int = 64, seed: int = 0, side_features: bool = True, item_features: bool = True):
    """A ``RecData`` over the *whole* synthetic catalogue of ``n_items`` (no vocab
    compaction, no k-core: items nobody interacted with stay in the catalogue, as in a
    production corpus). All pairs are train; valid / test are empty.

    Defaults spread the pairs over the catalogue: 100k users with ~10 positives each and
    a flat Zipf (0.5), so at N = 1M about 600k distinct items occur in training.
    ``side_features``: user features (segment, age) and, with ``item_features``, item genres.
    """
    import scipy.sparse as sp

    from recsys.data.recdata import RecData, to_csr
    from recsys.data.synthetic import SyntheticConfig, make_synthetic
    from recsys.data.vocab import Vocab

    cfg = SyntheticConfig(n_users=n_users, n_items=n_items, n_clusters=n_clusters,
                          interactions_per_user=per_user, zipf=zipf, seed=seed)
    df, items, users, planted = make_synthetic(cfg)
    del planted
    train = to_csr(df["user"].to_numpy(), df["item"].to_numpy(), (n_users, n_items))
    empty = sp.csr_matrix((n_users, n_items), dtype=np.float32)
    uf = itf = None
    if side_features:
        uf = np.stack([users["segment"].to_numpy(), users["age"].to_numpy()], 1).astype(np.int64)
        itf = _genre_matrix(items["genres"], cfg.n_genres) if item_features else None
    del df, items, users
    gc.collect()
    return RecData("synthetic-bench", train, empty, empty.copy(), Vocab(np.arange(n_users), "user"),
                   Vocab(np.arange(n_items), "item"), user_features=uf, item_features=itf)


def _genre_matrix(genres, n_genres: int):
    """(N, G) multi-hot CSR of the generator's 'g{a}' / 'g{a}|g{b}' strings, vectorised
    (pandas ``str.get_dummies`` takes minutes at N = 10M)."""
    import scipy.sparse as sp

    N = len(genres)
    if n_genres > 10:  # two-digit codes: the slow generic path
        return sp.csr_matrix(genres.str.get_dummies(sep="|").to_numpy(dtype=np.float32))
    chars = np.frombuffer(np.asarray(genres.to_numpy(), dtype="U5").tobytes(), dtype=np.uint32).reshape(N, 5)
    a = chars[:, 1].astype(np.int64) - ord("0")
    b = np.where(chars[:, 4] > 0, chars[:, 4].astype(np.int64) - ord("0"), -1)
    rows = np.concatenate([np.arange(N), np.flatnonzero(b >= 0)])
    cols = np.concatenate([a, b[b >= 0]])
    m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(N, n_genres))
    m.sort_indices()
    return m


def make_datamodule(data, batch_size: int = BATCH, max_history: int = 50, seed: int = 0):
    """An ``InteractionDataModule`` serving an already built ``RecData``."""
    from recsys.data.datamodule import InteractionDataModule

    return InteractionDataModule.from_data(data, batch_size=batch_size, max_history=max_history, seed=seed)


def tree_shape(n_items: int) -> tuple[int, int]:
    """(K, L) of a benchmark tree: 2 levels up to 10^4 items, 3 above, K = ceil(N^(1/L))."""
    L = 2 if n_items <= 10_000 else 3
    return int(math.ceil(n_items ** (1.0 / L) - 1e-9)), L


def make_head(name: str, n_items: int | None = None, dim: int = D):
    """A head with its library defaults, by benchmark name. ``tree``: a ``TreeSoftmax`` over a
    random balanced tree shaped for ``n_items`` (``tree_shape``) on queries of width ``dim``;
    ``tree_sampled`` the same with ``leaf_samples=16``; ``tree_inbatch`` with the leaves trained
    by an ``InBatchSoftmax`` (``leaf_head``)."""
    from recsys.model.heads import (
        FullSoftmax,
        HardNegativeSoftmax,
        InBatchSoftmax,
        MultiLabelSigmoid,
        SampledSoftmax,
        TreeSoftmax,
    )

    if name in ("tree", "tree_sampled", "tree_inbatch"):  # tree_sampled: the leaf level over 16 drawn siblings
        K, L = tree_shape(int(n_items))
        return TreeSoftmax(branching=K, levels=L, dim=dim, codes_from="random", temperature=0.1,
                           leaf_samples=16 if name == "tree_sampled" else 0,
                           leaf_head=InBatchSoftmax() if name == "tree_inbatch" else None)
    return {
        "full": lambda: FullSoftmax(),
        "sigmoid": lambda: MultiLabelSigmoid(),
        "sigmoid_sampled": lambda: MultiLabelSigmoid(num_negatives=1024),
        "sampled": lambda: SampledSoftmax(),
        "inbatch": lambda: InBatchSoftmax(),
        "hard": lambda: HardNegativeSoftmax(),
    }[name]()


def make_module(data, head_name: str, dim: int = D, **tower_kw):
    """``TwoTowerModule`` with the default towers (dim D) and the named head, bound to data."""
    from functools import partial

    from recsys.data.datamodule import make_schema
    from recsys.model.module import TwoTowerModule
    from recsys.model.towers import ItemTower, QueryTower

    qkw = {k[2:]: v for k, v in tower_kw.items() if k.startswith("q_")}
    ikw = {k[2:]: v for k, v in tower_kw.items() if k.startswith("i_")}
    m = TwoTowerModule(schema=make_schema(data), query_tower=partial(QueryTower, dim=dim, **qkw),
                       item_tower=partial(ItemTower, dim=dim, **ikw),
                       head=make_head(head_name, data.n_items, dim + bool(qkw.get("item_bias"))))
    m.bind(data)
    return m


# ---- results ---------------------------------------------------------------------------------
def save_figure(fig, out: Path, name: str) -> str:
    """``fig`` (tight layout) as ``out/name`` at 110 dpi; returns ``name`` for the report's notes."""
    fig.tight_layout()
    fig.savefig(Path(out) / name, dpi=110)
    return name


class Report:
    """Collects a benchmark's tables, targets and notes; ``write`` saves JSON + Markdown."""

    def __init__(self, name: str, quick: bool, command: str, description: str):
        self.name, self.quick, self.command, self.description = name, quick, command, description
        self.meta = machine()
        self.t0 = time.perf_counter()
        self.tables: list[dict] = []
        self.targets: list[dict] = []
        self.notes: list[str] = []
        self.data: dict = {}

    def table(self, title: str, rows: list[dict], cols: list[str] | None = None, note: str = "") -> None:
        self.tables.append({"title": title, "rows": rows, "cols": cols or (list(rows[0]) if rows else []),
                            "note": note})

    def target(self, name: str, measured, requirement: str, met: bool | None, detail: str = "") -> None:
        """One acceptance target: ``met`` None = not measured in this mode."""
        self.targets.append({"target": name, "measured": measured, "requirement": requirement,
                             "met": met, "detail": detail})

    def note(self, text: str) -> None:
        self.notes.append(text)

    def write(self, out_dir: Path | None = None) -> tuple[Path, Path]:
        out_dir = Path(out_dir or RESULTS)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.meta["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        self.meta["threads_end"] = threads()
        self.meta["wall_seconds"] = round(time.perf_counter() - self.t0, 1)
        stem = self.name + ("_quick" if self.quick else "")
        payload = {"benchmark": self.name, "mode": "quick" if self.quick else "full", "command": self.command,
                   "description": self.description, "machine": self.meta, "targets": self.targets,
                   "tables": self.tables, "notes": self.notes, "data": self.data}
        jp, mp = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
        jp.write_text(json.dumps(json_safe(payload), indent=1) + "\n")
        mp.write_text(self.markdown())
        return jp, mp

    def markdown(self) -> str:
        m = self.meta
        lines = [f"# {self.name} ({'quick' if self.quick else 'full'} mode)", "", self.description, "",
                 f"Command: `{self.command}`", "",
                 f"Machine: {m['cpu']}, {m['cpu_count']} CPUs, {m['memory_gib']} GiB; {m['platform']}; "
                 f"Python {m['python']}, torch {m['torch']}, lightning {m['lightning']}, faiss {m['faiss']}, "
                 f"numpy {m['numpy']}, scipy {m['scipy']}.", "",
                 f"Threads: torch {m['threads']['torch']} (inter-op {m['threads']['torch_interop']}), "
                 f"faiss {m['threads']['faiss']}, numpy BLAS {m['threads']['numpy_blas']}, "
                 f"OMP_NUM_THREADS={m['threads']['OMP_NUM_THREADS']}, "
                 f"OMP_WAIT_POLICY={m['threads']['OMP_WAIT_POLICY']}. "
                 f"Load average (1/5/15 min) at start {m['loadavg_start']}, at end {m.get('loadavg_end')}. "
                 f"Date {m['date']}, commit {m['git_commit']}, wall time {m.get('wall_seconds')} s.", ""]
        if self.targets:
            lines += ["## Targets", "", markdown_table([
                {"target": t["target"], "measured": t["measured"], "requirement": t["requirement"],
                 "met": "n/a" if t["met"] is None else ("MET" if t["met"] else "NOT MET"), "detail": t["detail"]}
                for t in self.targets]), ""]
        for tb in self.tables:
            lines += [f"## {tb['title']}", ""]
            if tb["note"]:
                lines += [tb["note"], ""]
            lines += [markdown_table(tb["rows"], tb["cols"]), ""]
        if self.notes:
            lines += ["## Notes", ""] + [f"- {n}" for n in self.notes] + [""]
        return "\n".join(lines)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small sizes and few steps (a smoke run, minutes)")
    p.add_argument("--threads", type=int, default=THREADS, help="torch and FAISS threads (default 2)")
    p.add_argument("--out", default=str(RESULTS), help="results folder (default bench/results)")
    p.add_argument("--case", help=argparse.SUPPRESS)
    return p


def command_line() -> str:
    mod = Path(sys.argv[0]).stem
    return "python -m bench." + mod + ("" if len(sys.argv) < 2 else " " + " ".join(sys.argv[1:]))
