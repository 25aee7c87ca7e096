"""Benchmarks: ``python -m bench.<name> [--quick]`` writes ``bench/results/<name>.json`` and ``.md``.

See ``bench/README.md`` for what each one measures and how to read it.

Importing the package pins the thread environment before numpy / torch / FAISS load
their thread pools (OpenMP and OpenBLAS read these variables once, at start-up):
2 threads, and ``OMP_WAIT_POLICY=PASSIVE`` so idle OpenMP workers sleep instead of
spinning (spinning workers collapse throughput ~20x when the machine is oversubscribed).
Variables already set in the environment win, e.g. ``OMP_WAIT_POLICY=ACTIVE``.

The benchmarks of what a ``recsys fit`` user waits for (``train_throughput --shipped``,
``time_to_quality``) run their measured processes without the ``OMP_WAIT_POLICY`` set here
(``bench.common.run_case(..., as_user=True)``): ``recsys fit`` sets none, and with one
training process on the machine OpenMP's default (spin briefly, then sleep) runs the shipped
in-batch step about 1.6x as fast as ``PASSIVE`` does (measured: 32 vs 52 ms a step).
"""

import os as _os

_PINNED = {"OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}
if _os.environ.get("RECSYS_BENCH_AS_USER") == "1":  # a measured process of run_case(as_user=True)
    del _PINNED["OMP_WAIT_POLICY"]
DEFAULTED = tuple(k for k in _PINNED if k not in _os.environ)  # set here, not by whoever started the run
for _k, _v in _PINNED.items():
    _os.environ.setdefault(_k, _v)

# Real datasets (hard_negative_overhead's quality part): as in tests/conftest.py and the
# Makefile, ../shared/data beside the checkout unless RECSYS_DATA says otherwise.
_shared = _os.path.join(_os.path.dirname(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))),
                        "shared", "data")
if "RECSYS_DATA" not in _os.environ and _os.path.isdir(_shared):
    _os.environ["RECSYS_DATA"] = _shared
