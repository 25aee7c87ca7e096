"""Bad configuration fails before training starts, with one project error naming the value,
the requirement and the fix; a NaN / infinite loss stops training naming the step and head.

Every case goes through `recsys fit` (in-process `main`, tiny synthetic data) and checks
that nothing was trained: no checkpoint and no metrics were written.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from recsys.commands.console import main
from recsys.errors import ConfigError, DataError, RecsysError
from recsys.model.heads import InBatchSoftmax
from tests.conftest import REPO, config_args

pytestmark = pytest.mark.filterwarnings("ignore:.*args parameter is intended.*")
CONFIGS = REPO / "configs" / "synthetic"
TINY = ["--data.synthetic.n_users=200", "--data.synthetic.n_items=100", "--data.synthetic.n_clusters=4",
        "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false"]


def _fit(tmp_path: Path, *extra: str, config: str = "inbatch") -> None:
    main(["fit", *config_args("synthetic", config), *TINY, f"--trainer.default_root_dir={tmp_path}",
          f"--trainer.logger.init_args.save_dir={tmp_path}", *extra])


# (extra args, config, error, fragments the message must contain: value, requirement, fix)
CASES = {
    "temperature_zero": (["--model.head.init_args.temperature=0"], "inbatch", ConfigError,
                         ["temperature=0.0", "must be > 0", "Fix:"]),
    "temperature_negative": (["--model.head.init_args.temperature=-0.5"], "inbatch", ConfigError,
                             ["temperature=-0.5", "must be > 0", "Fix:"]),
    "sampled_negatives_ge_catalogue": (["--model.head.init_args.num_negatives=512"], "sampled", ConfigError,
                                       ["num_negatives=512", "< N=", "Fix:", "FullSoftmax"]),
    "sigmoid_negatives_ge_catalogue": (["--model.head.init_args.num_negatives=1000"], "sigmoid", ConfigError,
                                       ["MultiLabelSigmoid num_negatives=1000", "< N=", "num_negatives=null"]),
    "uniform_negatives_ge_catalogue": (["--model.head.init_args.num_uniform=400"], "inbatch", ConfigError,
                                       ["num_uniform=400", "< N=", "Fix:"]),
    "hard_negatives_ge_catalogue": (["--model.head.init_args.num_hard=300"], "hard", ConfigError,
                                    ["num_hard + skip_top=300", "< N=", "Fix:"]),
    "k_above_catalogue": (["--model.eval_ks=[10,5000]"], "inbatch", ConfigError,
                          ["k=5000", "exceeds the catalogue size", "Fix: choose k <="]),
    "unknown_head": (["--model.head=recsys.model.heads.SoftmaxDeluxe"], "inbatch", ConfigError,
                     ["model.head", "'recsys.model.heads.SoftmaxDeluxe'", "Fix: use one of",
                      "recsys.model.heads.InBatchSoftmax"]),
    "unknown_sampler": (["--model.head.init_args.sampler=recsys.model.candidates.ZipfSampler"], "sampled", ConfigError,
                        ["model.head.init_args.sampler", "'recsys.model.candidates.ZipfSampler'",
                         "Fix: use one of", "recsys.model.candidates.UniformSampler"]),
    "tower_dims": (["--model.item_tower.init_args.dim=32"], "inbatch", ConfigError,
                   ["query tower dim=64, item_bias=False, rating_dim=0 != item tower dim=32", "same D", "Fix:"]),
    "dataset_path_missing": (["--data.dataset=ml-100k", "--data.root=/nonexistent/recsys-data"], "inbatch",
                             DataError, ["/nonexistent/recsys-data/ml-100k", "u.data", "Fix:"]),
    "unknown_dataset": (["--data.dataset=ml-7m"], "inbatch", ConfigError, ["'ml-7m'", "valid:", "Fix:"]),
    "batch_size": (["--data.batch_size=0"], "inbatch", ConfigError, ["batch_size=0", "batch_size >= 1", "Fix:"]),
    "wrong_type": (["--trainer.max_epochs=many"], "inbatch", ConfigError,
                   ["trainer.max_epochs='many'", "type int", "Fix:"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_config_fails_before_training(case, tmp_path):
    extra, config, error, fragments = CASES[case]
    with pytest.raises(error) as info:
        _fit(tmp_path, *extra, config=config)
    msg = str(info.value)
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("metrics.csv"))


def test_console_prints_one_line_and_exits_2(tmp_path):
    exe = Path(sys.executable).parent / "recsys"
    r = subprocess.run([str(exe), "fit", *config_args("synthetic", "inbatch"), *TINY,
                        f"--trainer.default_root_dir={tmp_path}", "--model.head=recsys.model.heads.Nope"],
                       capture_output=True, text=True, timeout=120, env={"OMP_NUM_THREADS": "1",
                                                                       "PYTHONWARNINGS": "ignore", "PATH": ""})
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "recsys.model.heads.Nope" in errors[0] and "Fix:" in errors[0]
    assert "Traceback" not in r.stderr and "usage:" not in r.stderr


def test_exact_full_softmax_sample_is_allowed():
    """M = N is allowed for the one sampler where it is exact: uniform without replacement."""
    from recsys.model.candidates import UniformSampler
    from recsys.model.heads import SampledSoftmax
    from recsys.model.module import check_head_sizes

    check_head_sizes(SampledSoftmax(UniformSampler(replacement=False), num_negatives=50), 50)
    with pytest.raises(ConfigError, match="num_negatives=50"):
        check_head_sizes(SampledSoftmax(UniformSampler(replacement=True), num_negatives=50), 50)
    with pytest.raises(ConfigError, match="num_negatives=0"):
        check_head_sizes(SampledSoftmax(num_negatives=0), 50)


# ------------------------------------------------------------------------ NaN / inf loss
class LossBlowsUp(InBatchSoftmax):
    """In-batch softmax whose 3rd loss (step 2) is ``value`` (a stand-in for divergence)."""

    def __init__(self, value: str = "nan", **kw):
        super().__init__(**kw)
        self.value, self.calls = float(value), 0

    def forward(self, q, batch, item_tower):
        out = super().forward(q, batch, item_tower)
        self.calls += 1
        if self.calls == 3:
            out.loss = out.loss * 0 + self.value
        return out


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_loss_stops_training_naming_step_and_head(value, tmp_path):
    with pytest.raises(RecsysError) as info:
        _fit(tmp_path, "--model.head=tests.test_bad_config.LossBlowsUp", f"--model.head.init_args.value={value}",
             "--data.batch_size=64")
    msg = str(info.value)
    assert f"loss is {value}" in msg and "at step 2" in msg and "head LossBlowsUp" in msg and "Fix:" in msg
