"""Kill and resume: a `recsys fit` killed with SIGKILL mid-epoch and resumed with
`--ckpt_path last` ends bit-identical to the uninterrupted run (tolerance 0: same weights,
same validation metrics); checkpoints are written atomically; every checkpoint carries the
vocabularies and the resolved config.

The runs are real subprocesses (OMP_NUM_THREADS=1, as in CI) on tiny synthetic data with the
head that carries the most state: hard negatives (a FAISS index refreshed every 7 steps,
checkpoints every 5) mixed with in-batch and uniform negatives (the global RNG).
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, config_args

ARGS = ["fit", *config_args("synthetic", "hard"),
        "--data.synthetic.n_users=200", "--data.synthetic.n_items=100", "--data.synthetic.n_clusters=4",
        "--data.batch_size=64", "--model.head.init_args.num_uniform=8", "--model.head.init_args.num_hard=4",
        "--model.head.init_args.refresh_every=7", "--trainer.max_epochs=2",
        "--trainer.enable_progress_bar=false", "--checkpoint.every_n_train_steps=5",
        "--early_stopping.patience=100"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def _cmd(root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "recsys.train.cli", *ARGS, f"--trainer.default_root_dir={root}",
            f"--trainer.logger.init_args.save_dir={root}", *extra]


def _fit(root: Path, *extra: str) -> subprocess.CompletedProcess:
    r = subprocess.run(_cmd(root, *extra), env=ENV, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def _run_dir(root: Path) -> Path:
    return root / "recsys" / "version_0"


def _last(root: Path) -> dict:
    return torch.load(_run_dir(root) / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")


def _final_val(root: Path) -> dict:
    rows = [r for r in csv.DictReader(open(_run_dir(root) / "metrics.csv")) if r.get("val/ndcg@10")]
    last = max(rows, key=lambda r: int(r["step"]))
    return {k: v for k, v in last.items() if k.startswith("val/") and "seconds" not in k and v}


def _assert_same_run(a: Path, b: Path) -> None:
    ca, cb = _last(a), _last(b)
    assert (ca["epoch"], ca["global_step"]) == (cb["epoch"], cb["global_step"])
    for k, t in ca["state_dict"].items():
        if k.endswith("_extra_state"):  # the miner's index: embeddings, cells, counters
            ea, eb = t, cb["state_dict"][k]
            assert ea.keys() == eb.keys(), k
            for f in ea:
                if f != "last_refresh_seconds":  # a timing
                    same = torch.equal(ea[f], eb[f]) if isinstance(ea[f], torch.Tensor) else ea[f] == eb[f]
                    assert same, (k, f)
            continue
        assert torch.equal(t, cb["state_dict"][k]), k  # bit-identical weights
    assert _final_val(a) == _final_val(b)  # identical validation metrics (as logged)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("uninterrupted")
    _fit(root)
    return root


def _loader_state(ck: dict) -> dict:
    return ck["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(uninterrupted, tmp_path):
    steps_per_epoch = _last(uninterrupted)["global_step"] // 2
    p = subprocess.Popen(_cmd(tmp_path), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    ckpt = _run_dir(tmp_path) / "checkpoints" / "last.ckpt"
    killed_at = None
    deadline = time.monotonic() + 240
    try:
        while killed_at is None and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
            if not ckpt.exists():
                continue
            os.kill(p.pid, signal.SIGSTOP)  # freeze it wherever it is (possibly mid-save)
            ck = torch.load(ckpt, weights_only=False, map_location="cpu")
            served = _loader_state(ck)["batches"]
            if ck["epoch"] >= 1 and 0 < served < steps_per_epoch:  # second epoch, mid-epoch
                os.kill(p.pid, signal.SIGKILL)
                killed_at = (ck["epoch"], ck["global_step"], served)
            else:
                os.kill(p.pid, signal.SIGCONT)
    finally:
        if p.poll() is None and killed_at is None:
            p.kill()
        p.wait()
    assert killed_at is not None, "the run ended before a mid-epoch checkpoint of epoch 1 was seen"
    assert p.returncode == -signal.SIGKILL

    r = _fit(tmp_path, "--ckpt_path", "last")
    assert f"Restoring states from the checkpoint path at {ckpt}" in r.stderr + r.stdout
    assert not list(ckpt.parent.glob(".*.tmp-*"))  # a save cut by the kill leaves nothing behind
    _assert_same_run(uninterrupted, tmp_path)


def test_resume_from_end_of_epoch_checkpoint_with_more_epochs(uninterrupted, tmp_path):
    """Train 1 epoch, then continue to 2 with --ckpt_path last: same as 2 epochs at once."""
    _fit(tmp_path, "--trainer.max_epochs=1")
    ck = _last(tmp_path)
    assert ck["epoch"] == 0 and _loader_state(ck)["batches"] == ck["global_step"]  # saved after the epoch
    _fit(tmp_path, "--ckpt_path", "last")
    _assert_same_run(uninterrupted, tmp_path)


def test_every_checkpoint_carries_vocab_and_config(uninterrupted):
    from recsys.artifacts.checkpoint import read_checkpoint

    paths = sorted((_run_dir(uninterrupted) / "checkpoints").glob("*.ckpt"))
    assert {p.name for p in paths} >= {"last.ckpt"} and len(paths) >= 2  # best-*.ckpt too
    for path in paths:
        _, meta = read_checkpoint(path)  # raises unless config + both vocabs are stored
        assert len(meta.item_vocab) > 50 and len(meta.user_vocab) > 100
        cfg = meta.config_dict
        assert cfg["model"]["head"]["init_args"]["num_uniform"] == 8
        assert cfg["data"]["synthetic"]["n_items"] == 100


def test_vocab_mismatch_fails_clearly(uninterrupted):
    from recsys.artifacts.checkpoint import load_checkpoint
    from recsys.errors import DataError

    other = {"synthetic": {"n_users": 200, "n_items": 100, "n_clusters": 4, "seed": 7}}
    with pytest.raises(DataError, match=r"vocab [0-9a-f]+ .*but the data loaded now .*Fix: use the data"):
        load_checkpoint(_run_dir(uninterrupted) / "checkpoints" / "last.ckpt", data_overrides=other)


# ------------------------------------------------------------------------ atomic writes
WRITER = r"""
import sys, torch
from recsys.train.checkpoint_io import atomic_torch_save
i = 0
while True:
    i += 1
    atomic_torch_save({"i": i, "w": torch.full((3_000_000,), float(i))}, sys.argv[1])
"""


def test_kill_during_a_save_leaves_the_previous_checkpoint(tmp_path):
    """SIGKILL a writer while its temporary file is half written: the target still loads
    and holds a complete earlier save; the next save removes the dead writer's temp file."""
    from recsys.train.checkpoint_io import atomic_torch_save

    target = tmp_path / "last.ckpt"
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], env=ENV, cwd=REPO)
    caught = False
    deadline = time.monotonic() + 120
    try:
        while not caught and time.monotonic() < deadline:
            time.sleep(0.002)
            tmps = list(tmp_path.glob(".last.ckpt.tmp-*"))
            if target.exists() and tmps and 0 < tmps[0].stat().st_size:  # mid-write
                os.kill(p.pid, signal.SIGKILL)
                caught = True
    finally:
        p.kill()
        p.wait()
    assert caught, "never saw a save in progress"
    ck = torch.load(target, weights_only=True)
    assert torch.equal(ck["w"], torch.full((3_000_000,), float(ck["i"])))  # complete, not torn
    atomic_torch_save({"i": 0}, target)
    assert torch.load(target, weights_only=True) == {"i": 0}
    assert sorted(x.name for x in tmp_path.iterdir()) == ["last.ckpt"]


def test_fit_trainer_uses_atomic_io_rng_state_and_latest_last_ckpt(tmp_path):
    from recsys.train.callbacks import RngState
    from recsys.train.checkpoint_io import AtomicCheckpointIO, RecsysCheckpoint
    from recsys.train.cli import RecsysCLI

    cli = RecsysCLI(args=[*ARGS[1:], f"--trainer.default_root_dir={tmp_path}"], run=False)
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert sum(isinstance(c, RngState) for c in cli.trainer.callbacks) == 1
    assert isinstance(cli.trainer.checkpoint_callback, RecsysCheckpoint)
    assert cli.trainer.checkpoint_callback.state_key.startswith("ModelCheckpoint{")  # read_checkpoint finds it


def test_a_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    from recsys.train.checkpoint_io import AtomicCheckpointIO, atomic_torch_save

    target = tmp_path / "last.ckpt"
    atomic_torch_save({"v": 1}, target)

    def boom(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        AtomicCheckpointIO().save_checkpoint({"v": 2}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True) == {"v": 1}
    assert [x.name for x in tmp_path.iterdir()] == ["last.ckpt"]


# ------------------------------------------------------------------------ --ckpt_path last
def test_resolve_last_picks_the_newest_run_and_continues_in_its_folder(tmp_path):
    from jsonargparse import Namespace

    from recsys.train.resume import resolve_last

    def cfg():
        return Namespace(ckpt_path="last", checkpoint=Namespace(dirpath=None), trainer=Namespace(
            default_root_dir=str(tmp_path), logger=Namespace(class_path="recsys.train.checkpoint_io.AppendingCSVLogger",
                                                              init_args=Namespace(save_dir=str(tmp_path),
                                                                                  name="recsys", version=None))))

    c = cfg()
    assert resolve_last(c) is None and c.ckpt_path == "last"  # nothing yet: Lightning starts fresh
    for v in (0, 1):
        d = tmp_path / "recsys" / f"version_{v}" / "checkpoints"
        d.mkdir(parents=True)
        (d / "last.ckpt").write_bytes(b"x")
        (d / ".last.ckpt.tmp-1").write_bytes(b"x")  # never taken for a checkpoint
        time.sleep(0.01)
    c = cfg()
    assert resolve_last(c) == tmp_path / "recsys" / "version_1" / "checkpoints" / "last.ckpt"
    assert c.ckpt_path.endswith("version_1/checkpoints/last.ckpt")
    assert c.trainer.logger.init_args.version == "version_1"
    c = cfg()
    c.checkpoint.dirpath = str(tmp_path / "elsewhere")  # Lightning resolves `last` there itself
    assert resolve_last(c) is None and c.ckpt_path == "last"


def test_resume_with_reused_ivf_cells(tmp_path):
    """An IVF mining index keeps its k-means cells between retrains (retrain_every): the
    checkpoint carries them, so a resumed run re-adds to the same cells as the uninterrupted one."""
    ivf = ["--model.head.init_args.index=ivf", "--model.head.init_args.retrain_every=3",
           "--model.head.init_args.index_params={nlist: 4, nprobe: 2}"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    _fit(whole, *ivf)
    _fit(part, "--trainer.max_epochs=1", *ivf)
    state = _last(part)["state_dict"]["head.miner._extra_state"]  # the miner's index, in the model state
    assert state["centroids"].shape == (4, 64) and state["refresh_count"] % 3 != 1  # mid-cycle
    _fit(part, "--ckpt_path", "last", *ivf)
    _assert_same_run(whole, part)


def test_epoch_clock_counts_the_modules_epoch_end_scoring_as_validation(tmp_path):
    """The module scores the catalogue in its own on_validation_epoch_end, which Lightning calls
    after the callbacks' hook of that name: the clock must close the epoch later (on
    on_validation_end), so that scoring is validation time, not the next epoch's training."""
    import lightning as L

    from recsys.train.callbacks import EpochClock

    clock = EpochClock()
    seen = []

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def training_step(self, batch, i):
            return self.lin(batch[0]).pow(2).mean()

        def validation_step(self, batch, i):
            pass

        def on_validation_epoch_end(self):
            if not self.trainer.sanity_checking:
                seen.append(len(clock.epochs))  # this epoch must not be closed yet

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=4)
    L.Trainer(max_epochs=2, callbacks=[clock], logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False,
              default_root_dir=tmp_path).fit(Tiny(), data, data)
    assert seen == [0, 1] and [e["epoch"] for e in clock.epochs] == [0, 1]
