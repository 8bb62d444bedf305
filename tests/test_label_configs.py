"""Stage 02 (labelling random configurations): reference rows, resume after a hard kill, seed-stream
extension, identical labels from the in-process and Ray executors, one pass through the stages (stage 01's file
read, never rebuilt; the model, multiquantizer and float images made once) and the regime check."""

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
import torch

from qsd import executors, label_session
from qsd.config import QuantConfig
from qsd.design import config_sampler
from qsd.errors import ModelMismatchError, QsdError
from qsd.executors import InProcessExecutor, RayExecutor, WorkerSpec
from qsd.paths import project_root
from qsd.run_folder import MULTIQUANTIZER, MULTIQUANTIZER_FILE, RunFolder
from qsd.sampling import SamplingProtocol
from qsd.stages import label_configs as stage
from qsd.stages import multiquantizer as multiquantizer_stage

SMALL = {"n_images": 16, "steps": 4, "test_configs": 0, "compile": False, "progress": False}
"""Small eager runs: what these tests check does not depend on torch.compile, whose first compile on a cold cache
costs about a minute (tests/test_sampling_metrics.py checks compiled against eager)."""
RUNNER = """
import sys
from qsd.stages import label_configs as stage
stage.run(stage.Settings(run_id=sys.argv[1], n_configs=int(sys.argv[2]), n_images=16, steps=4, test_configs=0,
                         compile=False, progress=False))
"""


@pytest.fixture
def bare_run_id():
    run_id = f"test-{uuid.uuid4().hex[:8]}"
    yield run_id
    shutil.rmtree(project_root() / "data" / "runs" / "tiny_pixart" / run_id, ignore_errors=True)


@pytest.fixture
def run_id(bare_run_id):
    """A run whose stage 01 is done (without the single-layer damage measurement)."""
    multiquantizer_stage.run(multiquantizer_stage.Settings(run_id=bare_run_id, damage_options=(), progress=False))
    return bare_run_id


def rows(path: Path) -> list[tuple]:
    if not path.exists():
        return []
    with sqlite3.connect(path) as db:
        try:
            return db.execute("SELECT fingerprint, name, fid, labelled_at FROM labels").fetchall()
        except sqlite3.OperationalError:  # table not created yet
            return []


def test_reference_rows_and_seed_stream_extension(run_id):
    """The reference rows, the random stream (asking for more extends it) and the test stream: its own
    configurations, stored as kind test and left out of the dataset the stage returns and describes."""
    first = stage.run(stage.Settings(run_id=run_id, n_configs=3, **SMALL | {"test_configs": 2}))
    labels = first.labels
    stored = RunFolder("tiny_pixart", run_id).labels()
    tests = stored[stored["kind"] == "test"]
    assert tests["sample_index"].tolist() == [0, 1] and first.summary["test_configs"] == 2
    assert not set(tests["fingerprint"]) & set(labels["fingerprint"]) and "test" not in set(labels["kind"])
    assert first.summary["by_kind"].get("test") is None
    assert sorted(labels[labels["kind"] == "uniform"]["name"]) == sorted(
        f"uniform {m}-{b}" for m in ("uaq", "kmeans_c", "kmeans_a") for b in (3, 4))
    assert list(labels[labels["kind"] == "float"]["name"]) == ["float"]
    assert (labels[labels["kind"] == "random"]["sample_index"].tolist()) == [0, 1, 2]
    by_name = labels.set_index("name")
    assert by_name.loc["float", "sample_mse"] == 0.0 and by_name.loc["float", "eps_error"] == 0.0
    assert (labels.loc[labels["kind"] != "float", "avg_bits"] < by_name.loc["float", "avg_bits"]).all()
    for method in ("uaq", "kmeans_c", "kmeans_a"):
        assert by_name.loc[f"uniform {method}-3", "avg_bits"] < by_name.loc[f"uniform {method}-4", "avg_bits"]
    extended = stage.run(stage.Settings(run_id=run_id, n_configs=5, overwrite=True, **SMALL)).labels
    assert len(extended) == 7 + 5
    assert extended.iloc[:len(labels)].equals(labels), "extending must keep every earlier row untouched"
    assert extended["fingerprint"].is_unique


def test_resume_after_hard_kill(run_id):
    n_configs, total = 12, 7 + 12
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
    built = multiquantizer_stage.run(multiquantizer_stage.Settings(run_id=run_id, damage_options=(), progress=False))
    mq = built.multiquantizer
    jobs = stage.reference_jobs(mq)[:2] + stage.random_jobs(config_sampler("paper", mq), seed=0, n=2)
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


def test_stage_02_needs_stage_01(bare_run_id):
    with pytest.raises(QsdError, match="01_multiquantizer.ipynb"):
        stage.run(stage.Settings(run_id=bare_run_id, n_configs=1, **SMALL))


def test_stage_02_refuses_a_multiquantizer_of_other_weights(run_id):
    path = RunFolder("tiny_pixart", run_id).path(MULTIQUANTIZER) / MULTIQUANTIZER_FILE
    other = multiquantizer_stage.run(multiquantizer_stage.Settings(
        model_id="tiny_dit", run_id=run_id, damage_options=(), progress=False))
    shutil.copy(other.directory / MULTIQUANTIZER_FILE, path)
    with pytest.raises(ModelMismatchError, match="01_multiquantizer.ipynb"):
        stage.run(stage.Settings(run_id=run_id, n_configs=1, **SMALL))
    shutil.rmtree(project_root() / "data" / "runs" / "tiny_dit" / run_id, ignore_errors=True)


def test_one_pass_loads_once_and_samples_the_float_model_once(run_id, monkeypatch):
    """The model and the multiquantizer are loaded once, the float images sampled once (they also give the
    probe and the first of the float seed FIDs), and stage 01's file is never rewritten."""
    calls = {"load_model": 0, "mq_load": 0, "float_generations": 0}
    real_load_model, real_mq_load = label_session.load_model, stage.MultiQuantizer.load
    mq_path = RunFolder("tiny_pixart", run_id).path(MULTIQUANTIZER) / MULTIQUANTIZER_FILE
    before = mq_path.stat().st_mtime_ns

    def load_model(*args, **kwargs):
        calls["load_model"] += 1
        return real_load_model(*args, **kwargs)

    def mq_load(*args, **kwargs):
        calls["mq_load"] += 1
        return real_mq_load(*args, **kwargs)

    real_generate = stage.Labeller.generate

    def generate(self, protocol=None, trajectory=None):
        if all(s is None for s in QuantConfig.from_model(self.model.denoiser).values()):
            calls["float_generations"] += (protocol or self.protocol).seed == self.protocol.seed
        return real_generate(self, protocol, trajectory)

    monkeypatch.setattr(label_session, "load_model", load_model)
    monkeypatch.setattr(executors, "load_model", load_model)
    monkeypatch.setattr(stage.MultiQuantizer, "load", mq_load)
    monkeypatch.setattr(stage.Labeller, "generate", generate)
    result = stage.run(stage.Settings(run_id=run_id, n_configs=2, **SMALL))
    assert calls == {"load_model": 1, "mq_load": 1, "float_generations": 1}
    assert mq_path.stat().st_mtime_ns == before
    assert len(result.summary["float_seed_fids"]) == 3
    assert result.summary["float_seed_fids"][0] == result.summary["float_fid"]
    calls.update(load_model=0, mq_load=0, float_generations=0)
    again = stage.run(stage.Settings(run_id=run_id, n_configs=2, **SMALL))  # resumed: nothing left to sample
    assert calls == {"load_model": 1, "mq_load": 1, "float_generations": 0}
    assert again.summary["float_seed_fids"] == result.summary["float_seed_fids"]


def test_regime_verdicts():
    labels = pd.DataFrame({
        "name": ["float", "uniform uaq-4", "uniform uaq-3", "uniform kmeans_c-4", "uniform kmeans_c-3", "random 0"],
        "kind": ["float", "uniform", "uniform", "uniform", "uniform", "random"],
        "fid": [20.0, 30.0, 60.0, 25.0, 50.0, 40.0],
        "prompt_accuracy": [0.9, 0.8, 0.6, 0.85, 0.7, 0.75],
        "avg_bits": [16.0, 4.25, 3.25, 6.0, 5.0, 4.0],
        "method": [None, "uaq", "uaq", "kmeans_c", "kmeans_c", None],
        "w_bits": pd.array([None, 4, 3, 4, 3, None], dtype="Int64")})
    verdict = stage.regime(labels, [20.0, 21.0, 23.0])
    assert verdict["float_is_best"] and verdict["w3_worse_than_w4"]
    assert verdict["best_w4"] == "uniform uaq-4" and verdict["best_w4_fid_ratio"] == 1.5  # K-Means-C-4 is > 4.5 bits
    assert not stage.regime(labels, [20.0, 26.0])["float_is_best"], "within the float model's seed spread"
    inverted = labels.assign(fid=[20.0, 30.0, 29.0, 25.0, 50.0, 40.0])
    assert not stage.regime(inverted, [20.0])["w3_worse_than_w4"]
    table = stage.regime_table(labels, [20.0, 21.0, 23.0])
    assert table.loc["uniform uaq-3", "fid_ratio_to_float"] == 3.0 and table.loc["float", "float_seed_fid_spread"] == 3
