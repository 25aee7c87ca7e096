"""Data pipeline: reading, validating, filtering, splitting and encoding interaction logs
of 1M / 10M / 30M rows from Parquet with ``load_source``, wall time and peak memory.

    python -m bench.data_pipeline            # 1M, 10M, 30M rows (random split) + 10M time split
    python -m bench.data_pipeline --quick    # 100k, 1M, 3M rows

* Data: one Parquet file per size (user int64, item int64, weight float32, timestamp int64),
  generated once under ``--data-dir`` (default ``$RECSYS_BENCH_DATA`` or
  ``/tmp/recsys-bench-data``, outside the repository) and reused; generation is not timed.
  Per 1M rows 20k users (log-normal activity) and 100k items (Zipf popularity, exponent
  1.0), so 10M rows have 200k users and 1M items; ids are sparse (not 0..n-1), weights are
  0.5 / 1 / 2 / 3 / 5 (15% below 1), timestamps span one year in log order.
* Each case runs in a fresh process (``python -m bench.data_pipeline --case``), so its peak
  RSS (the kernel's high-water mark, VmHWM) is the pipeline's own: the user's call
  ``load_source(DataSource(interactions=PATH, columns=..., min_weight=1, k_core={users: 5,
  items: 5}, split=SplitSpec(kind=...)))``, end to end. The case imports neither torch nor
  FAISS (the data layer needs neither); numpy's BLAS and pyarrow's pools are pinned to
  ``--threads``.
* Stages: the library functions ``load_source`` calls are wrapped with timers (read =
  Parquet -> pandas, validate = ``validate_interactions``, threshold = ``to_implicit``,
  k-core, vocab = ``Vocab.fit`` + ``encode``, split = ``make_split``, CSR = ``to_csr``;
  other = the rest of ``from_frames``), each with the high-water mark after it. A separate
  process runs the 10M random case under cProfile (its top entries are in the Markdown).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from bench import common as C

SIZES = (1_000_000, 10_000_000, 30_000_000)
QUICK_SIZES = (100_000, 1_000_000, 3_000_000)
USERS_PER_ROW = 0.02  # 200k users at 10M rows
ITEMS_PER_ROW = 0.1  # 1M items at 10M rows
ZIPF = 1.0
CHUNK = 1_000_000  # rows generated / written per Parquet row group
T0, SPAN = 1_672_531_200, 365 * 86_400  # 2023-01-01, one year
COLUMNS = {"user": "user", "item": "item", "weight": "weight", "time": "timestamp"}
WALL_TARGET_S, RSS_TARGET_GIB, LINEAR_TARGET = 60.0, 4.0, 3.6
STAGES = ("read", "validate", "threshold", "kcore", "vocab", "split", "csr")
GIB = 2**30


# ---- data ----------------------------------------------------------------------------------
def data_dir(arg: str | None) -> Path:
    return Path(arg or os.environ.get("RECSYS_BENCH_DATA") or "/tmp/recsys-bench-data")


def data_path(folder: Path, n: int) -> Path:
    return folder / f"interactions-{n // 1000}k-z{ZIPF}-s0.parquet"


def generate(path: Path, n: int, seed: int = 0) -> dict:
    """Write ``n`` synthetic interactions to ``path`` (chunked: memory stays ~ one chunk)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    n_users, n_items = max(100, int(n * USERS_PER_ROW)), max(1000, int(n * ITEMS_PER_ROW))
    # sparse raw ids, as a production log has them: a shuffled range spread by a stride
    user_ids = rng.permutation(n_users).astype(np.int64) * 7 + 1_000_003
    item_ids = rng.permutation(n_items).astype(np.int64) * 13 + 50_000_017
    user_cdf = np.cumsum(rng.lognormal(0.0, 1.0, n_users))
    user_cdf /= user_cdf[-1]
    item_cdf = np.cumsum((np.arange(n_items) + 10.0) ** -ZIPF)
    item_cdf /= item_cdf[-1]
    weights = np.array([0.5, 1, 2, 3, 5], np.float32)
    w_p = np.array([0.15, 0.45, 0.2, 0.1, 0.1])
    tmp = path.with_suffix(".tmp")
    schema = pa.schema([("user", pa.int64()), ("item", pa.int64()), ("weight", pa.float32()),
                        ("timestamp", pa.int64())])
    t = time.perf_counter()
    with pq.ParquetWriter(tmp, schema) as w:
        for c0 in range(0, n, CHUNK):
            m = min(CHUNK, n - c0)
            u = user_ids[np.minimum(np.searchsorted(user_cdf, rng.random(m)), n_users - 1)]
            i = item_ids[np.minimum(np.searchsorted(item_cdf, rng.random(m)), n_items - 1)]
            # log order: chunk c covers the c-th slice of the year, rows sorted by time in it
            ts = np.sort(T0 + (c0 + rng.random(m) * m) / n * SPAN).astype(np.int64)
            wt = weights[rng.choice(len(weights), m, p=w_p)]
            w.write_table(pa.table({"user": u, "item": i, "weight": wt, "timestamp": ts}, schema=schema))
    tmp.rename(path)
    return {"rows": n, "users": n_users, "items": n_items, "seconds": time.perf_counter() - t,
            "bytes": path.stat().st_size}


def ensure_data(folder: Path, sizes) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for n in sizes:
        p = data_path(folder, n)
        if p.exists():
            out[n] = {"rows": n, "path": str(p), "bytes": p.stat().st_size, "generated": False}
        else:
            print(f"generating {p} ...", flush=True)
            out[n] = {**generate(p, n), "path": str(p), "generated": True}
            print(f"  {out[n]}", flush=True)
    return out


# ---- one case, in a fresh process -------------------------------------------------------------
def _pin_threads(n: int) -> dict:
    import pyarrow as pa
    from threadpoolctl import threadpool_limits

    threadpool_limits(n)
    pa.set_cpu_count(n)
    pa.set_io_thread_count(n)
    return {"numpy_blas": n, "pyarrow_cpu": pa.cpu_count(), "pyarrow_io": pa.io_thread_count(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


class StageTimer:
    """Wraps the library functions ``load_source`` calls: seconds per stage, the high-water
    mark after each call, and any object-dtype (Python object per row) column they return."""

    def __init__(self):
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.hwm_after: dict[str, int] = {}
        self.rows: dict[str, int] = {}
        self.object_columns: list[str] = []
        self._depth = 0

    def wrap(self, stage: str, fn):
        def timed(*a, **kw):
            self._depth += 1
            t = time.perf_counter()
            try:
                out = fn(*a, **kw)
            finally:
                self._depth -= 1
                self.seconds[stage] += time.perf_counter() - t
                self.hwm_after[stage] = C.peak_rss_bytes()
            self._inspect(stage, out)
            return out
        return timed

    def _inspect(self, stage: str, out) -> None:
        import pandas as pd

        frames = [out[1]] if stage == "read" else (list(out) if isinstance(out, tuple) else [out])
        for f in frames:
            if isinstance(f, pd.DataFrame):
                self.rows.setdefault(stage, 0)
                self.rows[stage] += len(f)
                self.object_columns += [f"{stage}:{c}" for c in f.columns if f[c].dtype == object]
            elif isinstance(f, np.ndarray) and f.dtype == object:
                self.object_columns.append(f"{stage}:array")

    def install(self) -> None:
        import recsys.data.formats.table as table
        import recsys.data.recdata as recdata
        import recsys.data.source as source
        from recsys.data.vocab import Vocab

        table.read_table = self.wrap("read", table.read_table)
        table.validate_interactions = self.wrap("validate", table.validate_interactions)
        source.to_implicit = self.wrap("threshold", source.to_implicit)
        source.kcore = self.wrap("kcore", source.kcore)
        Vocab.fit = classmethod(self.wrap("vocab", Vocab.fit.__func__))
        Vocab.encode = self.wrap("vocab", Vocab.encode)
        recdata.make_split = self.wrap("split", recdata.make_split)
        recdata.to_csr = self.wrap("csr", recdata.to_csr)


def run_case(case: dict) -> dict:
    t_start = time.perf_counter()
    pinned = _pin_threads(case.get("threads", C.THREADS))
    from recsys.data.source import DataSource, SplitSpec, load_source

    import_s = time.perf_counter() - t_start
    rss_base, hwm_base = C.rss_bytes(), C.peak_rss_bytes()
    src = DataSource(interactions=case["path"], columns=COLUMNS, min_weight=1, k_core={"users": 5, "items": 5},
                     split=SplitSpec(kind=case["split"]))
    timer = None
    if case.get("profile"):
        import cProfile
        import pstats

        prof = cProfile.Profile()
        t = time.perf_counter()
        prof.enable()
        data = load_source(src)
        prof.disable()
        wall = time.perf_counter() - t
        st = pstats.Stats(prof)
        entries = []
        for (file, line, fn), (_, nc, tt, ct, _) in st.stats.items():
            short = file.split("site-packages/")[-1].split("/work/main/")[-1]
            entries.append({"function": f"{short}:{line}({fn})", "ncalls": nc, "tottime": tt, "cumtime": ct})
        top_cum = sorted(entries, key=lambda e: -e["cumtime"])[:25]
        top_tot = sorted(entries, key=lambda e: -e["tottime"])[:25]
        extra = {"profile_cumulative": top_cum, "profile_tottime": top_tot}
    else:
        timer = StageTimer()
        timer.install()
        t = time.perf_counter()
        data = load_source(src)
        wall = time.perf_counter() - t
        extra = {"stages_s": timer.seconds, "other_s": wall - sum(timer.seconds.values()),
                 "hwm_after_gib": {k: v / GIB for k, v in timer.hwm_after.items()},
                 "stage_rows": timer.rows, "object_columns": timer.object_columns}
    peak = C.peak_rss_bytes()
    return {**case, "wall_s": wall, "import_s": import_s, "process_s": time.perf_counter() - t_start,
            "peak_rss_gib": peak / GIB, "base_rss_gib": rss_base / GIB, "base_hwm_gib": hwm_base / GIB,
            "peak_over_base_gib": (peak - rss_base) / GIB, "rss_end_gib": C.rss_bytes() / GIB,
            "users": data.n_users, "items": data.n_items, "train": int(data.train.nnz),
            "valid": int(data.valid.nnz), "test": int(data.test.nnz), "threads": pinned, **extra}


def _case_main() -> bool:
    import json
    import sys

    if "--case" not in sys.argv:
        return False
    case = json.loads(sys.argv[sys.argv.index("--case") + 1])
    print(json.dumps(C.json_safe(run_case(case))))
    return True


# ---- the benchmark --------------------------------------------------------------------------------
def main(argv=None) -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None, help="where the Parquet files live (default /tmp/recsys-bench-data)")
    p.add_argument("--no-profile", action="store_true", help="skip the cProfile run")
    args = p.parse_args(argv)
    import pandas as pd
    import pyarrow as pa

    C.set_threads(args.threads)  # this process only records; every case pins its own pools
    quick = args.quick
    sizes = QUICK_SIZES if quick else SIZES
    mid = sizes[1]
    rep = C.Report("data_pipeline", quick, C.command_line(), __doc__.split("\n\n")[0])
    rep.meta.update({"pandas": pd.__version__, "pyarrow": pa.__version__})
    files = ensure_data(data_dir(args.data_dir), sizes)
    rep.data["files"] = files
    module = "bench.data_pipeline"
    plan = [(n, "random") for n in sizes] + [(mid, "random"), (mid, "time")]
    results = []
    for n, kind in plan:
        case = {"rows": n, "split": kind, "path": files[n]["path"], "threads": args.threads}
        load0 = C.load()
        r = C.run_case(module, case)
        r["load"] = f"{load0} -> {C.load()}"
        results.append(r)
        if "error" in r:
            print(f"{n:,} {kind}: ERROR {r['error']}", flush=True)
            continue
        print(f"{n:,} rows, {kind}: {r['wall_s']:.1f} s, peak {r['peak_rss_gib']:.2f} GiB, stages "
              + ", ".join(f"{k} {v:.1f}" for k, v in r["stages_s"].items()) + f", other {r['other_s']:.1f}",
              flush=True)
    prof = None
    if not args.no_profile:
        prof = C.run_case(module, {"rows": mid, "split": "random", "path": files[mid]["path"],
                                   "threads": args.threads, "profile": True})
        print(f"profile run: {prof.get('wall_s')} s {prof.get('error', '')}", flush=True)
    rep.data.update({"cases": results, "profile": prof})

    ok = [r for r in results if "error" not in r]
    rows = []
    for r in ok:
        rows.append({"rows": r["rows"], "split": r["split"], "wall_s": r["wall_s"],
                     "s_per_Mrow": r["wall_s"] / r["rows"] * 1e6,
                     **{f"{k}_s": v for k, v in r["stages_s"].items()}, "other_s": r["other_s"],
                     "peak_rss_gib": r["peak_rss_gib"], "base_rss_gib": r["base_rss_gib"],
                     "users": r["users"], "items": r["items"], "train": r["train"], "valid": r["valid"],
                     "test": r["test"], "load": r["load"]})
    rep.table("Wall time, stages and peak RSS per case (each a fresh process)", rows,
              note="wall_s = the load_source call; stage columns are seconds inside it (other = the rest of "
                   "from_frames: frame construction, encode glue); peak_rss_gib = the process's VmHWM "
                   "(interpreter + pandas / pyarrow imports included: base_rss_gib before the call); "
                   "users / items / train / valid / test = the RecData built.")
    hwm_rows = [{"rows": r["rows"], "split": r["split"], **{f"{s}_gib": r["hwm_after_gib"].get(s) for s in STAGES},
                 "rows_read": r["stage_rows"].get("read"), "after_threshold": r["stage_rows"].get("threshold"),
                 "after_kcore": r["stage_rows"].get("kcore"),
                 "object_columns": ", ".join(r["object_columns"]) or "none"} for r in ok]
    rep.table("High-water mark (GiB) after each stage, rows through the stages", hwm_rows,
              note="The stage whose column first reaches the case's peak is where memory peaks. object_columns: "
                   "any object-dtype column (one Python object per row) a stage returned.")

    def pick(n, kind="random"):
        c = [r for r in ok if r["rows"] == n and r["split"] == kind]
        return c

    met = None if quick else True
    mids = pick(mid)
    if mids:
        walls = [r["wall_s"] for r in mids]
        wall = max(walls)
        peak = max(r["peak_rss_gib"] for r in mids)
        rep.target(f"{mid:,} rows, random split: wall (s)", round(wall, 1), f"<= {WALL_TARGET_S:.0f}",
                   None if met is None else wall <= WALL_TARGET_S,
                   f"slowest of {len(mids)} fresh-process runs ({', '.join(f'{w:.1f}' for w in walls)} s) "
                   f"on {args.threads} threads; load {mids[0]['load']}")
        rep.target(f"{mid:,} rows, random split: peak RSS (GiB)", round(peak, 2), f"<= {RSS_TARGET_GIB:.0f}",
                   None if met is None else peak <= RSS_TARGET_GIB,
                   f"VmHWM of the whole process; {peak - mids[0]['base_rss_gib']:.2f} GiB over the "
                   f"{mids[0]['base_rss_gib']:.2f} GiB after imports")
    big, small = pick(sizes[2]), pick(sizes[0])
    if mids and big:
        ratio = big[0]["peak_rss_gib"] / min(r["peak_rss_gib"] for r in mids)
        rep.target(f"peak RSS {sizes[2]:,} / {mid:,} rows (linear in interactions)", round(ratio, 2),
                   f"<= {LINEAR_TARGET} (rows x{sizes[2] / mid:.0f})", None if met is None else ratio <= LINEAR_TARGET,
                   f"{big[0]['peak_rss_gib']:.2f} vs {min(r['peak_rss_gib'] for r in mids):.2f} GiB; marginal "
                   f"{(big[0]['peak_rss_gib'] - mids[0]['peak_rss_gib']) * GIB / (sizes[2] - mid):.0f} bytes per "
                   f"input row")
        rep.target(f"{sizes[2]:,} rows, random split: wall (s) / peak RSS (GiB)",
                   f"{big[0]['wall_s']:.1f} / {big[0]['peak_rss_gib']:.2f}", "recorded", None,
                   f"x{big[0]['wall_s'] / min(walls):.2f} the fastest {mid:,}-row time")
    if small:
        rep.target(f"{sizes[0]:,} rows, random split: wall (s) / peak RSS (GiB)",
                   f"{small[0]['wall_s']:.1f} / {small[0]['peak_rss_gib']:.2f}", "recorded", None, "")
    tm = pick(mid, "time")
    if tm:
        rep.target(f"{mid:,} rows, time split: wall (s) / peak RSS (GiB)",
                   f"{tm[0]['wall_s']:.1f} / {tm[0]['peak_rss_gib']:.2f}",
                   f"<= {WALL_TARGET_S:.0f} / <= {RSS_TARGET_GIB:.0f}",
                   None if met is None else (tm[0]["wall_s"] <= WALL_TARGET_S
                                             and tm[0]["peak_rss_gib"] <= RSS_TARGET_GIB), "")
    objs = sorted({c for r in ok for c in r["object_columns"]})
    rep.target("no Python object per row (object-dtype columns in any stage)", len(objs), "0",
               None if not ok else not objs, ", ".join(objs) or "int64 / float32 columns throughout")
    if prof and "error" not in prof:
        cols = ["function", "ncalls", "tottime", "cumtime"]
        rep.table(f"cProfile, {mid:,} rows random split: top by cumulative time", prof["profile_cumulative"], cols,
                  note=f"One run under cProfile ({prof['wall_s']:.1f} s, profiler overhead included); paths "
                       "relative to site-packages or the checkout.")
        rep.table(f"cProfile, {mid:,} rows random split: top by own time", prof["profile_tottime"], cols)
    if ok:
        rep.note(f"pandas {pd.__version__}, pyarrow {pa.__version__}; each case pins numpy's BLAS (threadpoolctl) "
                 f"and pyarrow's CPU / IO pools to {ok[0]['threads']['pyarrow_cpu']} / "
                 f"{ok[0]['threads']['pyarrow_io']} threads, OMP_NUM_THREADS={ok[0]['threads']['OMP_NUM_THREADS']}; "
                 "the rest of the pipeline (pandas, numpy, scipy) is single-threaded.")
    for n, f in files.items():
        rep.note(f"{n:,} rows: {f['path']} ({f['bytes'] / 2**20:.0f} MiB)")
    rep.note(f"Data: per 1M rows {int(1e6 * USERS_PER_ROW):,} users (log-normal activity, sigma 1) and "
             f"{int(1e6 * ITEMS_PER_ROW):,} items (Zipf {ZIPF} popularity, offset 10); min_weight 1 drops the "
             "15% of rows with weight 0.5; k-core 5 / 5 then drops the long tail.")
    jp, mp = rep.write(args.out)
    print(mp.read_text())
    print(f"wrote {jp} and {mp}")


if __name__ == "__main__":
    if not _case_main():
        main()
