"""`age train` under torchrun (2 CPU processes, gloo) trains like one process with the same global batch.

Why the comparison can be tight: with R ranks x batch B, global batch k is exactly batch k of a
single process with batch R*B (Batches deals out the same seeded order, rank r taking every R-th
row); DistributedDataParallel averages the ranks' gradients of their mean losses, which is the
gradient of the mean over the global batch; and BatchNorm statistics are computed over the global
batch (agecli.system.distributed.GlobalBatchNorm2d). What is left is float summation order (the convolutions, the
reductions and BatchNorm's sums run over other splits of the batch), which Adam then amplifies a
little: it scales each update by 1/sqrt(v), so parameters whose gradients are near zero (e.g. a
convolution bias in front of BatchNorm, mathematically zero) move by +-lr in either run, whatever
noise set their sign.

Measured on this test's data (200 synthetic faces, 128 training rows = 4 global batches of 32, no
wrap-padding, dropout off because each rank draws its own masks), 2 ranks vs 1 process:
  epoch 1: training loss 0.02% apart, validation MAE 0.007%;
  epoch 2: training loss 1.1%, validation MAE 0.4% (Adam's amplification has had 8 steps).
Tolerances, relative: 0.25% after epoch 1 (~10x the measured gap: room for other CPUs and BLAS
builds) and 3% after epoch 2. For contrast, with per-rank BatchNorm statistics (plain DDP on CPU,
where torch.nn.SyncBatchNorm does not run) epoch 1's training loss was 8.5% off and epoch 2's 6.8%;
a sharding error (a rank seeing the other's rows, or all rows) changes the batches outright.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agecli.data.cache import Batches
from agecli.data.prepare import prepare
from agecli.data.preprocess import Preprocess
from agecli.modelio.checkpoint import load_checkpoint
from tests.helpers import age_main, synthetic_face

IMAGES = 200  # 40 test, 160 left; val_fraction 0.2 -> 32 val, 128 train = 4 batches of 32
PER_RANK_BATCH = 16
TOLERANCE = {1: 0.0025, 2: 0.03}  # epoch -> relative, on train_loss and val_mae (see the module docstring)
NO_DROPOUT = "model.kwargs={'stage_num': [3, 3, 3], 'lambda_local': 1.0, 'lambda_d': 1.0, 'V': 101.0, 'dropout': 0.0}"
RUN_FILES = {"best.pt", "last.pt", "metrics.csv", "curves.png", "config.yaml", "env.json", "results.json", "report.html"}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    faces = root / "faces"
    faces.mkdir()
    rows = []
    for i in range(IMAGES):
        age = 5 + (i * 7) % 70
        synthetic_face(faces / f"img{i:03d}.png", age, size=64, seed=i)
        rows.append(f"img{i:03d}.png,{age}")
    (faces / "labels.csv").write_text("filename,age\n" + "\n".join(rows) + "\n")
    prepare("csv", faces, root / "prep", test_fraction=0.2)
    return root / "prep"


def _train_args(prepared: Path, batch: int, *extra: str) -> list[str]:
    return ["train", "ssrnet", "--preset", "paper", "--data", str(prepared), "--epochs", "2", "--batch", str(batch),
            "--device", "cpu", "--set", "data.val_fraction=0.2", "--set", NO_DROPOUT, *extra]


def _metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def test_ranks_split_each_global_batch(tmp_path):
    """Batch k of rank 0 + batch k of rank 1 = batch k of one process with twice the batch size."""
    crops = np.arange(50, dtype=np.uint8).reshape(50, 1, 1, 1).repeat(3, axis=3)  # row i holds the value i
    common = {"preprocess": Preprocess(input_size=1, mean=(0, 0, 0), std=(1 / 255,) * 3),
              "shuffle": True, "seed": 3}

    def rows_seen(batch_size, rank=0, world=1, n=48):
        b = Batches(crops, np.arange(n), np.arange(n), batch_size, rank=rank, world=world, **common)
        b.set_epoch(2)
        return [sorted(x[:, 0, 0, 0].round().long().tolist()) for x, _ in b]

    single = rows_seen(8)
    ranks = [rows_seen(4, r, 2) for r in (0, 1)]
    assert [sorted(a + b) for a, b in zip(*ranks)] == single
    # 47 rows: the last global batch is wrap-padded so both ranks take the same number of steps
    ranks = [rows_seen(4, r, 2, n=47) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 6
    assert set().union(*(set(b) for r in ranks for b in r)) == set(range(47))


def test_torchrun_two_ranks_match_one_process(prepared, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "AGECLI_RUN_DIR": str(tmp_path / "ddp")}
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "agecli", *_train_args(prepared, PER_RANK_BATCH, "--amp")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    # --amp on a CPU: accepted, said once (rank 0 only), and a no-op (the comparison below is without it)
    assert ddp.stderr.count("--amp (mixed precision) applies on CUDA only") == 1, ddp.stderr[-3000:]

    # the comparison run needs no process of its own
    single = age_main(*_train_args(prepared, 2 * PER_RANK_BATCH), cwd=tmp_path,
                      env={"AGECLI_RUN_DIR": str(tmp_path / "single")})
    assert single.returncode == 0, single.stderr[-3000:]

    # only rank 0 wrote: exactly one set of outputs, nothing half-written or duplicated, nothing elsewhere
    assert {p.name for p in (tmp_path / "ddp").iterdir()} == RUN_FILES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "single"]
    for name in ("best.pt", "last.pt"):
        assert load_checkpoint(tmp_path / "ddp" / name)["model"]["name"] == "ssrnet"
    assert json.loads((tmp_path / "ddp" / "results.json").read_text())["best_epoch"] in (1, 2)
    assert json.loads((tmp_path / "ddp" / "env.json").read_text())["train_rows"] == 128

    ddp_rows, single_rows = _metrics(tmp_path / "ddp"), _metrics(tmp_path / "single")
    assert [r["epoch"] for r in ddp_rows] == [r["epoch"] for r in single_rows] == [1.0, 2.0]
    for a, b in zip(ddp_rows, single_rows):
        for key in ("train_loss", "val_mae"):
            gap = abs(a[key] - b[key]) / abs(b[key])
            assert gap <= TOLERANCE[int(a["epoch"])], f"epoch {a['epoch']:.0f} {key}: 2 ranks {a[key]}, 1 process {b[key]}"
