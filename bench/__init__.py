"""Benchmarks: ``python -m bench.<name> [--quick]`` writes ``bench/results/<name>.json`` and ``.md``.

See ``bench/README.md`` for what each one measures and how to read it.

Importing the package pins the thread environment before numpy / torch / FAISS load
their thread pools (OpenMP and OpenBLAS read these variables once, at start-up):
2 threads, and ``OMP_WAIT_POLICY=PASSIVE`` so idle OpenMP workers sleep instead of
spinning (spinning workers collapse throughput ~20x when the machine is oversubscribed).
Variables already set in the environment win, e.g. ``OMP_WAIT_POLICY=ACTIVE``.
"""

import os as _os

for _k, _v in {"OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2", "MKL_NUM_THREADS": "2",
               "OMP_WAIT_POLICY": "PASSIVE"}.items():
    _os.environ.setdefault(_k, _v)

# Real datasets (hard_negative_overhead's quality part): as in tests/conftest.py and the
# Makefile, ../shared/data beside the checkout unless RECSYS_DATA says otherwise.
_shared = _os.path.join(_os.path.dirname(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))),
                        "shared", "data")
if "RECSYS_DATA" not in _os.environ and _os.path.isdir(_shared):
    _os.environ["RECSYS_DATA"] = _shared
