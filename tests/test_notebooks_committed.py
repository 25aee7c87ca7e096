"""The notebooks are committed with the outputs of a full run (notebooks/README.md): every code
cell has been executed and has its outputs, no cell failed, and each file stays under 1 MiB."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("0*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_with_full_run_outputs(path):
    assert path.stat().st_size < 2**20, f"{path.name} is {path.stat().st_size} bytes (limit 1 MiB)"
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c.get("execution_count") for c in code), f"{path.name}: a code cell was not executed"
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    text = json.dumps([c.get("outputs", []) for c in code])
    assert "mode: FULL" in text, f"{path.name}: the committed outputs are not from a full run"
