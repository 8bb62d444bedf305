"""Where label jobs run: in this process (the default) or on Ray actors (paper §3.2's data collection at scale).

A `LabelWorker` loads the model, the saved multiquantizer and the labeller (cached FID reference statistics,
float images, probe trajectory) once and then labels many configurations; in this process it takes the model
and multiquantizer the stage has already loaded. Both executors yield
`LabelRecord`s as they finish; the driver writes each to the store at once, so an interrupted run, local
or distributed, resumes from the store. Every worker labels under the same common random numbers, so a
configuration gets the same metrics wherever it runs (bitwise, at the same thread count).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from qsd.config import QuantConfig
from qsd.errors import InvalidSettingError
from qsd.labelling import Labeller
from qsd.models import load_model
from qsd.models.base import DiffusionModel
from qsd.multiquant import MultiQuantizer
from qsd.paths import project_root
from qsd.provenance import provenance
from qsd.sampling import SamplingProtocol
from qsd.store import LabelRecord

EXECUTORS = ("inprocess", "ray")


@dataclass(frozen=True)
class LabelJob:
    """One configuration to label; `kind`, `name`, `sample_index` as in `LabelRecord`."""

    config: QuantConfig
    kind: str
    name: str
    sample_index: int | None = None


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to build itself (picklable, so Ray can ship it)."""

    model_id: str
    protocol: SamplingProtocol
    multiquantizer_path: str
    n_probe: int = 16
    batch_size: int = 256
    """Most images per batched generation (compiled results depend on the batch shape: part of the protocol)."""
    clip_dir: str | None = None
    """A local CLIP directory: text-to-image models then get a CLIP score (`qsd.metrics.clip_score`)."""
    threads: int | None = None
    """torch threads per worker; None = torch's default."""
    device: str = "cpu"
    """Where the denoiser runs ('cuda' for GPU workers); metrics are computed on the CPU."""


class LabelWorker:
    """Labels configurations of one model under one protocol; built once per process or Ray actor, from the
    already loaded `model` and `multiquantizer` when given (in this process), else loading them."""

    def __init__(self, spec: WorkerSpec, model: DiffusionModel | None = None,
                 multiquantizer: MultiQuantizer | None = None) -> None:
        if spec.threads is not None:
            torch.set_num_threads(spec.threads)
        self.model = model or load_model(spec.model_id, device=spec.device)
        self.multiquantizer = multiquantizer or MultiQuantizer.load(spec.multiquantizer_path, self.model.denoiser)
        self.labeller = Labeller(self.model, spec.protocol, n_probe=spec.n_probe, batch_size=spec.batch_size,
                                 progress=False, clip_dir=spec.clip_dir)
        self.provenance = provenance(worker=f"{platform.node()}:{os.getpid()}")

    def label(self, job: LabelJob) -> LabelRecord:
        start = time.perf_counter()
        metrics = self.labeller.label_config(self.multiquantizer, job.config)
        record = self.provenance | {"wall_time_s": time.perf_counter() - start}
        return LabelRecord(job.config, job.kind, job.name, metrics, record, job.sample_index)


class InProcessExecutor:
    """Labels jobs one after another in this process, with one `LabelWorker` made on first need from the given
    `model` and `multiquantizer` (loaded by the worker when not given)."""

    def __init__(self, spec: WorkerSpec, model: DiffusionModel | None = None,
                 multiquantizer: MultiQuantizer | None = None) -> None:
        self.spec, self.model, self.multiquantizer = spec, model, multiquantizer
        self._worker: LabelWorker | None = None

    @property
    def worker(self) -> LabelWorker:
        if self._worker is None:
            self._worker = LabelWorker(self.spec, self.model, self.multiquantizer)
        return self._worker

    def run(self, jobs: Iterable[LabelJob]) -> Iterator[LabelRecord]:
        for job in jobs:
            yield self.worker.label(job)


class RayExecutor:
    """Labels jobs on `workers` Ray actors of an existing cluster (`address`) or a local one started here
    (and stopped afterwards). Each actor asks for `cpus_per_worker` CPUs and `gpus_per_worker` GPUs
    (1 for GPU labelling) and keeps two jobs queued so it never waits for the driver."""

    def __init__(self, spec: WorkerSpec, workers: int = 2, address: str | None = None, cpus_per_worker: float = 1,
                 gpus_per_worker: float = 0) -> None:
        if workers < 1:
            raise InvalidSettingError(f"workers must be at least 1, got {workers}")
        self.spec, self.workers, self.address = spec, workers, address
        self.cpus_per_worker, self.gpus_per_worker = cpus_per_worker, gpus_per_worker

    def _start(self) -> bool:
        import ray

        if ray.is_initialized():
            return False
        if self.address:
            ray.init(address=self.address, log_to_driver=False)
        else:
            ray.init(num_cpus=max(1, int(self.workers * self.cpus_per_worker)), include_dashboard=False,
                     log_to_driver=False, object_store_memory=256 * 2**20,
                     runtime_env={"env_vars": {"QSD_ROOT": str(project_root())}})
        return True

    def run(self, jobs: Iterable[LabelJob]) -> Iterator[LabelRecord]:
        import ray

        queue = iter(list(jobs))
        started = self._start()
        actor_class = ray.remote(num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker)(LabelWorker)
        actors = [actor_class.remote(self.spec) for _ in range(self.workers)]
        in_flight: dict = {}

        def submit(actor) -> None:
            job = next(queue, None)
            if job is not None:
                in_flight[actor.label.remote(job)] = actor

        try:
            for actor in actors * 2:
                submit(actor)
            while in_flight:
                (done,), _ = ray.wait(list(in_flight), num_returns=1)
                actor = in_flight.pop(done)
                submit(actor)
                yield ray.get(done)
        finally:
            for actor in actors:
                ray.kill(actor)
            if started:
                ray.shutdown()


def make_executor(name: str, spec: WorkerSpec, workers: int = 2, address: str | None = None,
                  model: DiffusionModel | None = None,
                  multiquantizer: MultiQuantizer | None = None) -> InProcessExecutor | RayExecutor:
    """The executor called `name` ('inprocess', which labels with `model` and `multiquantizer` when given, or
    'ray'); Ray workers ask for one GPU each when `spec.device` is a CUDA device."""
    if name == "inprocess":
        return InProcessExecutor(spec, model, multiquantizer)
    if name == "ray":
        gpus = 1 if spec.device.startswith("cuda") else 0
        return RayExecutor(spec, workers=workers, address=address, gpus_per_worker=gpus)
    raise InvalidSettingError(f"unknown executor {name!r}; expected one of {', '.join(EXECUTORS)}")
