"""A labelling session of one run (paper §3.2's data collection): the loaded model and stage 01's multiquantizer,
an executor, and the protocol every row of the run's dataset is labelled under.

Stage 02 opens it with its own settings; later stages that label (stage 05) open it from the settings stage 02
saved (`LabelSession.of_run`), so every row of the run's store shares one protocol (`qsd.store` refuses to mix).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from qsd.config import option_key
from qsd.executors import LabelJob, WorkerSpec, make_executor
from qsd.models import get_entry, load_model
from qsd.models.base import DiffusionModel
from qsd.multiquant import MultiQuantizer
from qsd.run_folder import LABELS, LABELS_FILE, MULTIQUANTIZER, MULTIQUANTIZER_FILE, RunFolder
from qsd.sampling import SamplingProtocol
from qsd.store import LabelStore


@dataclass(frozen=True)
class LabellingSetup:
    """What labelling depends on, as stage 02's settings hold it (stage 02's `Settings` has these fields)."""

    model_id: str
    n_images: int
    steps: int
    seed: int
    compute_dtype: str
    compile: bool
    n_probe: int
    batch_size: int
    clip_dir: str | None
    executor: str
    workers: int
    ray_address: str | None
    device: str

    @classmethod
    def of(cls, settings: object) -> LabellingSetup:
        """The setup of stage-02 settings: a `Settings` object or its saved settings.json mapping."""
        get = settings.get if isinstance(settings, dict) else lambda name: getattr(settings, name)
        return cls(**{f.name: get(f.name) for f in dataclasses.fields(cls)})

    def protocol(self) -> SamplingProtocol:
        """The labelling protocol: the model's guidance and sampler, the run's seed."""
        return SamplingProtocol.for_model(get_entry(self.model_id), n_images=self.n_images, steps=self.steps,
                                          seed=self.seed, compute_dtype=self.compute_dtype, compile=self.compile)

    def record(self, multiquantizer: MultiQuantizer) -> dict:
        """What every label in the dataset depends on (the store refuses to mix different ones)."""
        entry, protocol = get_entry(self.model_id), self.protocol()
        return {"model_id": self.model_id, "float_weights_sha256": multiquantizer.checksum,
                "fid_reference": entry.fid_reference, "sampler": entry.sampler.scheduler,
                "n_images": protocol.n_images, "steps": protocol.steps, "guidance": protocol.guidance,
                "compute_dtype": protocol.compute_dtype, "compile": protocol.compile,
                "noise_seed": protocol.seed, "n_probe": self.n_probe, "batch_size": self.batch_size,
                "clip_dir": self.clip_dir, "options": [option_key(s) for s in multiquantizer.choices],
                "quantizer": multiquantizer.settings.to_json()}


@dataclass
class LabelSession:
    """Labels configurations of one run into its store (see the module docstring)."""

    setup: LabellingSetup
    store_path: Path
    model: DiffusionModel
    multiquantizer: MultiQuantizer
    executor: object
    record: dict
    progress: bool = True

    @classmethod
    def open(cls, setup: LabellingSetup, run: RunFolder, progress: bool = True) -> LabelSession:
        """Load the model and the run's stage-01 multiquantizer and make the executor."""
        model = load_model(setup.model_id, device=setup.device)
        multiquantizer = run.multiquantizer(model.denoiser)
        spec = WorkerSpec(setup.model_id, setup.protocol(), str(run.path(MULTIQUANTIZER) / MULTIQUANTIZER_FILE),
                          setup.n_probe, setup.batch_size, setup.clip_dir, device=setup.device)
        executor = make_executor(setup.executor, spec, setup.workers, setup.ray_address, model, multiquantizer)
        return cls(setup, run.path(LABELS) / LABELS_FILE, model, multiquantizer, executor,
                   setup.record(multiquantizer), progress)

    @classmethod
    def of_run(cls, run: RunFolder, progress: bool = True) -> LabelSession:
        """The session under the settings stage 02 of `run` saved (a missing stage 02 is an error naming it)."""
        return cls.open(LabellingSetup.of(run.settings(LABELS)), run, progress)

    def label(self, jobs: list[LabelJob], progress: bool | None = None) -> pd.DataFrame:
        """Label the `jobs` the store does not hold yet (each row committed as it finishes) and refresh
        labels.csv/parquet beside it; returns every row of the store."""
        progress = self.progress if progress is None else progress
        with LabelStore(self.store_path, self.record) as store:
            done = store.fingerprints()
            pending = [j for j in jobs if j.config.fingerprint not in done]
            with tqdm(total=len(jobs), initial=len(jobs) - len(pending), desc="labelling", unit="config",
                      disable=not progress) as bar:
                for label in self.executor.run(pending):
                    store.add(label)
                    bar.update()
            store.to_csv(self.store_path.with_name("labels.csv"))
            store.to_parquet(self.store_path.with_name("labels.parquet"))
            return store.to_pandas()

    def fids(self, jobs: list[LabelJob], progress: bool | None = None) -> np.ndarray:
        """`label(jobs)`, then the FID of each job's configuration, in job order."""
        rows = self.label(jobs, progress).set_index("fingerprint")
        return rows.loc[[j.config.fingerprint for j in jobs], "fid"].to_numpy(dtype=float)
