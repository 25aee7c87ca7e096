"""Run every benchmark, then gather their targets into ``bench/results/summary.md``.

    python -m bench.run_all            # full mode (`make bench`)
    python -m bench.run_all --quick    # every benchmark in --quick mode
    python -m bench.run_all --only eval_speed,memory

Each benchmark runs as ``python -m bench.<module> [flags]`` in its own process, one after another
(never in parallel: they would time each other); ``COMMANDS`` names the modes that are a flag
of another module (``train_throughput_shipped`` = ``bench.train_throughput --shipped``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from bench import common as C

BENCHMARKS = ("train_throughput", "train_throughput_shipped", "eval_speed", "hard_negative_overhead", "memory",
              "data_pipeline", "time_to_quality", "serving", "beam_search", "preference_ml1m")
COMMANDS = {"train_throughput_shipped": ("train_throughput", ["--shipped"])}  # name -> (module, flags)


def summary(out_dir: Path, quick: bool, walls: dict) -> str:
    """Markdown: every target of every benchmark's latest result file."""
    rows, heads = [], []
    for name in BENCHMARKS:
        p = out_dir / f"{name}{'_quick' if quick else ''}.json"
        if not p.exists():
            continue
        r = json.loads(p.read_text())
        m = r["machine"]
        heads.append(f"- `{r['command']}`: {m['date']}, load {m['loadavg_start']} -> {m.get('loadavg_end')}, "
                     f"wall {m.get('wall_seconds')} s, threads torch {m['threads']['torch']} / faiss "
                     f"{m['threads']['faiss']} / BLAS {m['threads'].get('numpy_blas')}")
        for t in r["targets"]:
            rows.append({"benchmark": name, "target": t["target"], "measured": t["measured"],
                         "requirement": t["requirement"],
                         "met": "n/a" if t["met"] is None else ("MET" if t["met"] else "NOT MET"),
                         "detail": t["detail"]})
    text = [f"# Benchmark summary ({'quick' if quick else 'full'} mode)", "", *heads, "",
            C.markdown_table(rows, ["benchmark", "target", "measured", "requirement", "met", "detail"])]
    if walls:
        text += ["", "Wall times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in walls.items())]
    return "\n".join(text) + "\n"


def main(argv=None) -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--only", default="", help="comma-separated benchmark names (default: all)")
    args = p.parse_args(argv)
    names = [n for n in (args.only.split(",") if args.only else BENCHMARKS) if n]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}: valid names are {list(BENCHMARKS)}")
    walls, failed = {}, []
    for name in names:
        module, flags = COMMANDS.get(name, (name, []))
        cmd = [sys.executable, "-m", f"bench.{module}", *flags, "--threads", str(args.threads), "--out", args.out]
        if args.quick:
            cmd.append("--quick")
        print(f"== {' '.join(cmd[1:])}", flush=True)
        t = time.perf_counter()
        rc = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1]).returncode
        walls[name] = time.perf_counter() - t
        if rc != 0:
            failed.append(name)
    out = Path(args.out)
    text = summary(out, args.quick, walls)
    (out / f"summary{'_quick' if args.quick else ''}.md").write_text(text)
    print(text)
    if failed:
        raise SystemExit(f"benchmarks failed: {failed}")


if __name__ == "__main__":
    main()
