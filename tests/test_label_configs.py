"""Stage 02 (labelling random configurations): reference rows, resume after a hard kill, seed-stream
extension, and identical labels from the in-process and Ray executors."""

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from qsd.executors import InProcessExecutor, RayExecutor, WorkerSpec
from qsd.paths import project_root
from qsd.sampling import SamplingProtocol
from qsd.stages import label_configs as stage
from qsd.stages import multiquantizer as multiquantizer_stage

SMALL = {"n_images": 16, "steps": 4, "progress": False}
RUNNER = """
import sys
from qsd.stages import label_configs as stage
stage.run(stage.Settings(run_id=sys.argv[1], n_configs=int(sys.argv[2]), n_images=16, steps=4, progress=False))
"""


@pytest.fixture
def run_id():
    run_id = f"test-{uuid.uuid4().hex[:8]}"
    yield run_id
    shutil.rmtree(project_root() / "data" / "runs" / "tiny_pixart" / run_id, ignore_errors=True)


def rows(path: Path) -> list[tuple]:
    if not path.exists():
        return []
    with sqlite3.connect(path) as db:
        try:
            return db.execute("SELECT fingerprint, name, fid, labelled_at FROM labels").fetchall()
        except sqlite3.OperationalError:  # table not created yet
            return []


def test_reference_rows_and_seed_stream_extension(run_id):
    first = stage.run(stage.Settings(run_id=run_id, n_configs=3, **SMALL))
    labels = first.labels
    assert sorted(labels[labels["kind"] == "uniform"]["name"]) == sorted(
        f"uniform {m}-{b}" for m in ("uaq", "kmeans_c", "kmeans_a") for b in (3, 4))
    assert list(labels[labels["kind"] == "float"]["name"]) == ["float"]
    assert (labels[labels["kind"] == "random"]["sample_index"].tolist()) == [0, 1, 2]
    by_name = labels.set_index("name")
    assert by_name.loc["float", "sample_mse"] == 0.0 and by_name.loc["float", "eps_error"] == 0.0
    assert (labels.loc[labels["kind"] != "float", "avg_bits"] < by_name.loc["float", "avg_bits"]).all()
    for method in ("uaq", "kmeans_c", "kmeans_a"):
        assert by_name.loc[f"uniform {method}-3", "avg_bits"] < by_name.loc[f"uniform {method}-4", "avg_bits"]
    extended = stage.run(stage.Settings(run_id=run_id, n_configs=5, **SMALL)).labels
    assert len(extended) == 7 + 5
    assert extended.iloc[:len(labels)].equals(labels), "extending must keep every earlier row untouched"
    assert extended["fingerprint"].is_unique


def test_resume_after_hard_kill(run_id):
    n_configs, total = 30, 7 + 30
    database = project_root() / "data" / "runs" / "tiny_pixart" / run_id / stage.STAGE / "labels.sqlite"
    command = [sys.executable, "-c", RUNNER, run_id, str(n_configs)]
    process = subprocess.Popen(command, cwd=project_root())
    deadline = time.monotonic() + 300
    while len(rows(database)) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = rows(database)
    assert 3 <= len(before) < total, f"the kill should land mid-run (had {len(before)} of {total} rows)"
    subprocess.run(command, cwd=project_root(), check=True, timeout=600)
    after = rows(database)
    assert len(after) == total and len({r[0] for r in after}) == total
    assert set(before) <= set(after), "rows labelled before the kill must survive unchanged"


def test_inprocess_and_ray_give_identical_labels(run_id):
    ray = pytest.importorskip("ray")
    built = multiquantizer_stage.run(multiquantizer_stage.Settings(run_id=run_id, progress=False))
    mq = built.multiquantizer
    jobs = stage.reference_jobs(mq)[:2] + stage.random_jobs(mq, seed=0, n=2)
    spec = WorkerSpec("tiny_pixart", SamplingProtocol(n_images=16, steps=4),
                      str(built.directory / "multiquantizer.safetensors"), n_probe=4, threads=1)
    threads = torch.get_num_threads()
    try:
        local = {r.fingerprint: r for r in InProcessExecutor(spec).run(jobs)}
    finally:
        torch.set_num_threads(threads)
    remote = {r.fingerprint: r for r in RayExecutor(spec, workers=2).run(jobs)}
    assert not ray.is_initialized(), "a local cluster started by the executor is stopped again"
    assert set(local) == set(remote) == {j.config.fingerprint for j in jobs}
    workers = {r.provenance["worker"] for r in remote.values()}
    assert len(workers) == 2 and str(os.getpid()) not in "".join(workers), "labelled on two Ray actors"
    for fingerprint, record in local.items():
        theirs = remote[fingerprint].metrics
        for metric, value in record.metrics.items():
            if metric != "seconds":
                assert theirs[metric] == value, f"{metric} differs for {record.name}"
