"""The run-derived tables, regenerated from a run's files so that no copy of them drifts (issue 27).

A run folder `data/runs/<model_id>/<run_id>/` holds, per stage, the notebook papermill executed
(`<NN_stage>/<NN_stage>.ipynb`, whose `metadata.papermill.duration` is the stage's wall time in seconds) and the
stage's `summary.json`. From them this module writes

  * `docs/results.md`: every stage's minutes and the headline fields of its `summary.json`;
  * with `--readme`, the generated blocks of README.md, and nothing else of it: the results at a glance
    (between `<!-- results:begin -->` and `<!-- results:end -->`), the stage table with its minutes column
    (`<!-- stages:begin -->` … `<!-- stages:end -->`) and stage 06's table at A6 with its rule table
    (`<!-- comparison:begin -->` … `<!-- comparison:end -->`, from `comparison.csv` and `rules.csv`).

A stage or a field the run lacks is written as "not run"; a missing run folder is an error that names
`make reproduce`.

Run:  python -m qsd.report [--run data/runs/tiny_pixart/default] [--readme README.md] [--out docs/results.md]
      (`make results` runs it on data/runs/$(MODEL)/$(RUN) and rewrites README.md.)
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from qsd.errors import CorruptFileError, InvalidSettingError, MissingFileError
from qsd.files import atomic_write
from qsd.paths import project_root
from qsd.run_folder import (
    COMPARISON,
    COMPARISON_FILE,
    CONFIGS,
    DENOISERS,
    EXPORT,
    LABELS,
    MULTIQUANTIZER,
    PREDICTOR,
    RULES_FILE,
    SCORES,
)
from qsd.stages.final_comparison import FIRST_LAST, FIRST_LAST_SUFFIX, HEADLINE_A_BITS

NOT_RUN = "not run"
NOT_TIMED = "not timed"
"""Minutes of a stage whose summary exists but whose folder has no papermill-executed notebook (run from Python)."""
MINUS = "\u2212"


@dataclass(frozen=True)
class Stage:
    """One notebook of the sequence, as the README's stage table shows it."""

    name: str
    paper: str
    output: str


STAGES = (
    Stage(DENOISERS, "setup (§5.1): the models, their guidance sweep",
          "`guidance_sweep.csv`, `figures/00_guidance_*.png`"),
    Stage(MULTIQUANTIZER, "§3.1: every option of every layer", "`multiquantizer.safetensors`, `layer_damage.csv`"),
    Stage(LABELS, "§3.2: labelled random configurations", "`labels.sqlite`, `regime.csv`"),
    Stage(PREDICTOR, "§3.3-§4: the GNN predictor, 5 folds", "`predictors/`, `metrics.csv`"),
    Stage(SCORES, "§3.4, §5: node and subgraph scores", "`scores.parquet`, `insights.json`"),
    Stage(CONFIGS, "§3.4, §6: W3.x configurations; beyond: the search loop",
          "`frontier.csv`, `search.csv`, `configs/*.json`"),
    Stage(COMPARISON, "§6, Fig. 1: W3.x A6 vs W4A6 baselines",
          "`comparison.csv`, `rules.csv`, `figures/06_pareto_*.png`"),
    Stage(EXPORT, "beyond the paper: real low-bit weights", "`<model_id>_packed.safetensors`"),
)

KeyPath = tuple[str, ...]
Format = Callable[[object], str]


# ---------------------------------------------------------------------- reading a run
@dataclass(frozen=True)
class StageRecord:
    """What a run holds of one stage: its summary (None: not run) and its notebook's papermill record."""

    summary: dict | None
    seconds: float | None
    failed: bool = False
    git_sha: str | None = None
    smoke: bool | None = None
    compute_dtype: str | None = None
    """The denoiser's compute precision while sampling (a sampling stage's resolved setting)."""


@dataclass(frozen=True)
class Run:
    directory: Path
    stages: dict[str, StageRecord]

    @property
    def model_id(self) -> str:
        return self.directory.parent.name

    @property
    def run_id(self) -> str:
        return self.directory.name

    def value(self, stage: str, path: KeyPath) -> object:
        """The summary field at `path` of `stage`, or `NOT_RUN`."""
        return lookup(self.stages[stage].summary, path)


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CorruptFileError(f"{path} is not valid JSON ({error}); re-run its stage or delete the file") from error


def read_stage(directory: Path, name: str) -> StageRecord:
    """One stage's record; a stage that never ran (no folder, no summary, no notebook) gives Nones."""
    folder = directory / name
    summary = _read_json(folder / "summary.json")
    notebook = _read_json(folder / f"{name}.ipynb") or {}
    papermill = notebook.get("metadata", {}).get("papermill", {})
    seconds = papermill.get("duration")
    provenance = _read_json(folder / "provenance.json") or {}
    settings = _read_json(folder / "settings.json") or {}
    return StageRecord(summary=summary, seconds=None if seconds is None else float(seconds),
                       failed=bool(papermill.get("exception")), git_sha=provenance.get("git_sha"),
                       smoke=settings.get("smoke"), compute_dtype=settings.get("compute_dtype"))


def read_run(directory: str | Path) -> Run:
    """Every stage of `directory` (a run folder `data/runs/<model_id>/<run_id>`)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise MissingFileError(
            f"no run folder at {directory}: run the notebooks first (`make reproduce`, or "
            f"`make reproduce MODEL=<model_id> RUN=<run_id>` for another run), then `make results`")
    return Run(directory, {stage.name: read_stage(directory, stage.name) for stage in STAGES})


def lookup(summary: Mapping | None, path: KeyPath) -> object:
    """`summary[path[0]][path[1]]...`, or `NOT_RUN` where the summary or any key is missing."""
    value: object = summary
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return NOT_RUN
        value = value[key]
    return value


# ---------------------------------------------------------------------- formatting
def duration_text(seconds: float | None) -> str:
    """Papermill seconds as '1 min 35 s' (or '26 s'); None as `NOT_RUN`."""
    if seconds is None:
        return NOT_RUN
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def stage_minutes(record: StageRecord) -> str:
    """A stage's papermill minutes; `NOT_TIMED` when it ran without papermill, `NOT_RUN` when it did not run."""
    if record.seconds is None:
        return NOT_RUN if record.summary is None else NOT_TIMED
    return duration_text(record.seconds) + (" (failed)" if record.failed else "")


def number(spec: str = "") -> Format:
    """A formatter: floats with `spec` (e.g. '.1f'), negatives with a minus sign; everything else as `text`."""

    def show(value: object) -> str:
        if isinstance(value, float) and not isinstance(value, bool):
            return (format(value, spec) if spec else f"{value:.4g}").replace("-", MINUS)
        return text(value)

    return show


def text(value: object) -> str:
    """A summary value as markdown text: booleans as JSON writes them, lists and dicts flattened."""
    if value is NOT_RUN:
        return NOT_RUN
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:,}".replace("-", MINUS)
    if isinstance(value, float):
        return number()(value)
    if isinstance(value, list):
        return ", ".join(text(v) for v in value) if value else "none"
    if isinstance(value, Mapping):
        return "; ".join(f"{k} {text(v)}" for k, v in value.items()) if value else "none"
    return str(value)


def each(spec: str) -> Format:
    """A formatter for a list or a dict of numbers, every one with `spec`."""
    show = number(spec)

    def flat(value: object) -> str:
        if isinstance(value, list):
            return " / ".join(show(v) for v in value) if value else "none"
        if isinstance(value, Mapping):
            return "; ".join(f"{k} {show(v)}" for k, v in value.items()) if value else "none"
        return show(value)

    return flat


def paired(value: object) -> str:
    """Stage 06's paired FID differences (baseline − Qua²SeDiMo, per baseline): 'mean ± std (beaten)'."""
    if not isinstance(value, Mapping):
        return text(value)
    show = number(".1f")
    return "; ".join(f"{name} {show(d.get('mean'))} ± {show(d.get('std'))}" + (" beaten" if d.get("beaten") else "")
                     for name, d in value.items()) or "none"


def dominated(value: object) -> str:
    """`qsd_dominates`: each dominated baseline row with the Qua²SeDiMo row that dominates it and both rows' bits."""
    if not isinstance(value, Mapping):
        return text(value)
    if not value:
        return "none"
    return "; ".join(f"{name} ({d['baseline_bits']:.2f} bits) by {d['by']} ({d['qsd_bits']:.2f} bits, "
                     f"{d['paired']['mean']:+.1f} FID)" for name, d in value.items())


def frontier(value: object) -> str:
    """Stage 05's frontier: per budget, the configuration, its FID and average bits."""
    if not isinstance(value, Mapping):
        return text(value)
    return "; ".join(f"≤{budget}: {d['name']} {d['fid']:.1f} ({d['avg_bits']:.2f} bits)"
                     for budget, d in value.items()) or "none"


def spread(value: object) -> str:
    """Per key, 'mean ± std' of a {'mean', 'std'} mapping."""
    if not isinstance(value, Mapping):
        return text(value)
    show = number(".1f")
    return "; ".join(f"{k} {show(d['mean'])} ± {show(d['std'])}" for k, d in value.items()) or "none"


def region_spearman(value: object) -> str:
    """Per predictor, its budget-region Spearman (stage 05's `search_predictor` record)."""
    if not isinstance(value, Mapping):
        return text(value)
    show = number(".2f")
    return "; ".join(f"{k} {show(d['spearman_region'])}" for k, d in value.items()) or "none"


def count(value: object) -> str:
    return text(len(value)) if isinstance(value, list | Mapping) else text(value)


# ---------------------------------------------------------------------- docs/results.md
@dataclass(frozen=True)
class Field:
    path: KeyPath
    show: Format = text


FIELDS: dict[str, tuple[Field, ...]] = {
    DENOISERS: (
        Field(("protocol", "n_images")), Field(("protocol", "guidance")), Field(("guidance_fid_optimal",)),
        Field(("entry_guidance_is_fid_optimal",)), Field(("fid",), number(".1f")),
        Field(("prompt_accuracy",), number(".3f")), Field(("fid_real_heldout",), number(".1f")),
        Field(("classifier", "test_accuracy"), number(".3f")),
    ),
    MULTIQUANTIZER: (
        Field(("n_units",)), Field(("n_weights",)), Field(("uniform_avg_bits",), each(".2f")),
        Field(("damage_spearman_error_vs_sample_mse",), each(".2f")),
    ),
    LABELS: (
        Field(("by_kind",)), Field(("float_fid",), number(".1f")), Field(("float_seed_fids",), each(".1f")),
        Field(("float_seed_fid_spread",), number(".1f")), Field(("float_is_best",)), Field(("w3_worse_than_w4",)),
        Field(("best_w4",)), Field(("best_w4_fid_ratio",), number(".2f")),
        Field(("fid_by_reference_row",), each(".1f")), Field(("proxy_spearman_vs_fid",), each(".3f")),
    ),
    PREDICTOR: tuple(
        Field(("targets", target, key), show) for target in ("fid", "paper") for key, show in (
            ("expression", text), ("gnn_spearman_mean", number(".3f")), ("gnn_spearman_std", number(".3f")),
            ("gnn_ndcg10_mean", number(".3f")), ("best_baseline", text), ("best_baseline_spearman", number(".3f")),
            ("gnn_beats_every_baseline", text), ("hop_spearman_mean", each(".2f")), ("test_configs", text),
            ("test_spearman", each(".3f")), ("gnn_beats_every_baseline_on_test", text))
    ) + (Field(("n_configs",)), Field(("train_seconds_per_fold",), number(".1f"))),
    SCORES: (
        Field(("variants_scored",)), Field(("insights", "t-embed vs c-embed")), Field(("insights", "unit types")),
        Field(("insights", "op types")), Field(("insights", "depth")), Field(("insights", "methods")),
        Field(("insights", "error proxy")),
    ),
    CONFIGS: (
        Field(("constructed",)), Field(("best_uniform_w4",)), Field(("best_uniform_w4_fid",), number(".1f")),
        Field(("best_uniform_w4_bits",), number(".2f")), Field(("best_sub35",)),
        Field(("best_sub35_fid",), number(".1f")), Field(("best_sub35_bits",), number(".2f")),
        Field(("sub35_beats_uniform_w4",)), Field(("gnn_beats_error_knapsack",)), Field(("search", "stopped")),
        Field(("search", "labels_at_start")), Field(("search", "labels_spent")), Field(("frontier",), frontier),
        Field(("search_seed_spread",), spread), Field(("random_best_fid",), each(".1f")),
        Field(("random_labels_to_match",)), Field(("frontier_beats_random_labelling",)),
        Field(("search_predictor", "setting")), Field(("search_predictor", "chosen")),
        Field(("search_predictor", "cross_validated"), region_spearman),
        Field(("search_predictor", "test_stream"), region_spearman), Field(("search_predictor", "test_configs")),
    ),
    COMPARISON: (
        Field(("float_fid",), number(".1f")), Field(("qsd_w3x_config",)), Field(("qsd_w3x_a6_bits",), number(".2f")),
        Field(("qsd_w3x_a6_fid",), number(".1f")), Field(("qsd_w3x_a6_fid_std",), number(".1f")),
        Field(("best_baseline_w4a6",)), Field(("best_baseline_w4a6_fid",), number(".1f")),
        Field(("best_baseline_w4a6_fid_std",), number(".1f")),
        Field(("qsd_w3x_a6_beats_every_w4a6_baseline_beyond_spread",)),
        Field(("w4a6_baselines_beaten_beyond_spread",)), Field(("w4a6_baselines_beaten_paired",)),
        Field(("w4a6_paired_fid_differences",), paired), Field(("evaluation_seeds",)),
        Field(("qsd_dominates",), dominated), Field(("baseline_rows",)), Field(("extended_run",)),
        Field(("extended_dominates",), dominated),
    ),
    EXPORT: (
        Field(("config_source",)), Field(("avg_bits",), number(".3f")), Field(("packed_equals_fake_quantized",)),
        Field(("packed_layers_ratio_vs_fp16",), number(".3f")), Field(("denoiser_ratio_vs_fp16",), number(".3f")),
        Field(("n_images",)), Field(("steps",)), Field(("sampling_seconds",), each(".2f")),
    ),
}


def results_markdown(run: Run) -> str:
    """docs/results.md: a table of every stage's minutes, then each stage's headline fields."""
    lines = [f"# Results of run `{run.model_id}/{run.run_id}`", "",
             "Generated by `python -m qsd.report` (`make results`) from "
             f"`data/runs/{run.model_id}/{run.run_id}/`: each stage's `summary.json` and the minutes papermill "
             "recorded in its executed notebook. Do not edit by hand; what the numbers mean and how they were "
             "measured: [stages.md](stages.md), [measurements.md](measurements.md).", "",
             "| stage | minutes | code (git SHA) | smoke |", "|---|---|---|---|"]
    for stage in STAGES:
        record = run.stages[stage.name]
        sha = record.git_sha[:12] if record.git_sha else NOT_RUN
        lines.append(f"| `{stage.name}` | {stage_minutes(record)} | {sha} | {text(record.smoke)} |"
                     if record.summary is not None or record.seconds is not None
                     else f"| `{stage.name}` | {NOT_RUN} | {NOT_RUN} | {NOT_RUN} |")
    lines += ["", f"All notebooks: {total_minutes(run)}."]
    extra = {COMPARISON: ["", "### The table at A6", "", *comparison_lines(run), "", "### Rules", "",
                          *rule_lines(run)]}
    for stage in STAGES:
        record = run.stages[stage.name]
        lines += ["", f"## {stage.name} ({stage_minutes(record)})", ""]
        if record.summary is None:
            lines.append(f"{NOT_RUN} (no `{stage.name}/summary.json`)")
            continue
        lines += ["| field | value |", "|---|---|"]
        for field in FIELDS[stage.name]:
            value = lookup(record.summary, field.path)
            shown = NOT_RUN if value is NOT_RUN else field.show(value).replace("|", "\\|")
            lines.append(f"| `{'.'.join(field.path)}` | {shown} |")
        lines += extra.get(stage.name, [])
    return "\n".join(lines) + "\n"


def total_minutes(run: Run) -> str:
    """The sum of the stages' papermill durations, naming the stages that have none."""
    missing = [s.name[:2] for s in STAGES if run.stages[s.name].seconds is None]
    if len(missing) == len(STAGES):
        return NOT_TIMED if any(r.summary is not None for r in run.stages.values()) else NOT_RUN
    total = duration_text(sum(r.seconds for r in run.stages.values() if r.seconds is not None))
    return total if not missing else f"{total} (no minutes for {', '.join(missing)})"


# ---------------------------------------------------------------------- README blocks
def glance_lines(run: Run) -> list[str]:
    """The results at a glance: one line per headline, its numbers read from the run."""

    def v(stage: str, *path: str, spec: str = "") -> str:
        value = run.value(stage, path)
        return NOT_RUN if value is NOT_RUN else (number(spec)(value) if spec else text(value))

    def name(stage: str, *path: str) -> str:
        value = run.value(stage, path)
        return f"`{value}`" if isinstance(value, str) and value is not NOT_RUN else text(value)

    s02, s03, s05, s06, s07 = LABELS, PREDICTOR, CONFIGS, COMPARISON, EXPORT
    beaten = run.value(s06, ("w4a6_baselines_beaten_paired",))
    baselines = run.value(s06, ("w4a6_paired_fid_differences",))
    fid03, paper03 = ("targets", "fid"), ("targets", "paper")
    return [
        f"From `data/runs/{run.model_id}/{run.run_id}/` (`make results`; every field: "
        "[docs/results.md](docs/results.md)).",
        "",
        f"- **Labels** (stage 02, {v(s02, 'by_kind', 'random')} random configurations, computed in "
        f"{run.stages[s02].compute_dtype or NOT_RUN}): "
        f"float FID {v(s02, 'float_fid', spec='.1f')}; "
        f"best uniform W4 ({name(s02, 'best_w4')}) at {v(s02, 'best_w4_fid_ratio', spec='.2f')}× the float FID; "
        f"every uniform W3 worse than its W4: {v(s02, 'w3_worse_than_w4')}; "
        f"float best beyond its seed spread: {v(s02, 'float_is_best')}.",
        f"- **Predictor** (stage 03): GNN test Spearman on FID "
        f"{v(s03, *fid03, 'gnn_spearman_mean', spec='.3f')} ± {v(s03, *fid03, 'gnn_spearman_std', spec='.3f')} "
        f"(best baseline {v(s03, *fid03, 'best_baseline')} {v(s03, *fid03, 'best_baseline_spearman', spec='.3f')}), "
        f"on the paper's target {v(s03, *paper03, 'gnn_spearman_mean', spec='.3f')} ± "
        f"{v(s03, *paper03, 'gnn_spearman_std', spec='.3f')} (best baseline {v(s03, *paper03, 'best_baseline')} "
        f"{v(s03, *paper03, 'best_baseline_spearman', spec='.3f')}); on stage 02's test stream "
        f"({v(s03, *fid03, 'test_configs')} configurations no fold saw), Spearman on FID: "
        f"{each('.3f')(run.value(s03, (*fid03, 'test_spearman')))}.",
        f"- **Sub-4-bit** (stage 05): best at ≤ 3.5 bits {name(s05, 'best_sub35')}, "
        f"FID {v(s05, 'best_sub35_fid', spec='.1f')} at {v(s05, 'best_sub35_bits', spec='.2f')} bits; "
        f"best uniform W4 {name(s05, 'best_uniform_w4')}, FID {v(s05, 'best_uniform_w4_fid', spec='.1f')} "
        f"at {v(s05, 'best_uniform_w4_bits', spec='.2f')} bits. "
        f"≤ 3.5 bits as good as W4: **{v(s05, 'sub35_beats_uniform_w4')}**. Search loop: "
        f"{v(s05, 'search', 'stopped')}, {v(s05, 'search', 'labels_spent')} labels on top of "
        f"{v(s05, 'search', 'labels_at_start')}; frontier better than the best random label at every budget: "
        f"**{v(s05, 'frontier_beats_random_labelling')}**; built by (predictor: fits) "
        f"{v(s05, 'search_predictor', 'chosen')}.",
        f"- **Central claim** (stage 06): {name(s06, 'qsd_w3x_config')} at A6, "
        f"FID {v(s06, 'qsd_w3x_a6_fid', spec='.1f')} ± {v(s06, 'qsd_w3x_a6_fid_std', spec='.1f')} "
        f"({v(s06, 'qsd_w3x_a6_bits', spec='.2f')} bits); best W4A6 baseline {v(s06, 'best_baseline_w4a6')}, "
        f"FID {v(s06, 'best_baseline_w4a6_fid', spec='.1f')} ± {v(s06, 'best_baseline_w4a6_fid_std', spec='.1f')}; "
        f"float {v(s06, 'float_fid', spec='.1f')}. W3.x A6 beats every W4A6 baseline beyond the seed spread: "
        f"**{v(s06, 'qsd_w3x_a6_beats_every_w4a6_baseline_beyond_spread')}**; baselines it beats at every noise seed: "
        f"{count(beaten)} of {count(baselines)}. At matched cost (same float-layer convention and activation bits, no "
        f"more weight bits, lower FID at every held-out seed) Qua²SeDiMo dominates "
        f"{count(run.value(s06, ('qsd_dominates',)))} of {v(s06, 'baseline_rows')} baseline rows"
        + ("." if run.value(s06, ("extended_run",)) == NOT_RUN else
           f"; the extended search space's rows (run `{v(s06, 'extended_run')}`) dominate "
           f"{count(run.value(s06, ('extended_dominates',)))}."),
        f"- **Real low-bit weights** (stage 07): {v(s07, 'avg_bits', spec='.3f')} bits, "
        f"packed layers {v(s07, 'packed_layers_ratio_vs_fp16', spec='.3f')}× their fp16 bytes; "
        f"packed images equal fake-quantized ones: {v(s07, 'packed_equals_fake_quantized')}.",
        f"- **Time** (papermill, notebooks 00-07): {total_minutes(run)}.",
    ]


def cell(value: object) -> str:
    return str(value).replace("|", "\\|")


def comparison_lines(run: Run) -> list[str]:
    """Stage 06's rows at A6: per row, average bits and FID (mean ± std over the held-out seeds) under the method's
    released float layers and under the first/last-float convention, and the Qua²SeDiMo row that dominates it
    (`qsd_dominates`); `NOT_RUN` without comparison.csv."""
    path = run.directory / COMPARISON / COMPARISON_FILE
    if not path.is_file():
        return [f"Stage 06: {NOT_RUN}."]
    table = pd.read_csv(path)
    verdicts = [run.value(COMPARISON, (key,)) for key in ("qsd_dominates", "extended_dominates")]
    verdicts = [v for v in verdicts if isinstance(v, Mapping)]
    seeds = text(run.value(COMPARISON, ("evaluation_seeds",)))
    float_fid = table.loc[table["family"] == "float", "fid_mean"]
    at = table[(table["a_bits"] == HEADLINE_A_BITS) & (table["family"] != "float")]
    lines = [f"Stage 06 on `{run.model_id}` at A{HEADLINE_A_BITS} (W4 baselines), FID mean ± std over the held-out "
             f"noise seeds {seeds}; float {float_fid.iloc[0]:.1f}. Left: each method with its released float "
             "layers; right: the first and last layer float for every method. A baseline dominated by a Qua²SeDiMo "
             "row (same convention and activations, no more bits, lower FID at every seed) names it (Qua²SeDiMo-ext: "
             "the extended search space's, when stage 06 ran with `extended_run`).", "",
             "| row | bits | FID | dominated by | bits, first/last float | FID, first/last float | dominated by |",
             "|---|---|---|---|---|---|---|"]
    by_name = {r["name"]: r for _, r in at.iterrows()}

    def shown(name: str) -> list[str]:
        if name not in by_name:
            return ["", "", ""]
        r = by_name[name]
        by = "; ".join(v[name]["by"] for v in verdicts if name in v)
        return [f"{r['avg_bits']:.2f}", f"{r['fid_mean']:.1f} ± {r['fid_std']:.1f}", cell(by)]

    released = [n for n in by_name if by_name[n]["convention"] != FIRST_LAST]
    only_first_last = [n.removesuffix(FIRST_LAST_SUFFIX) for n in by_name
                       if by_name[n]["convention"] == FIRST_LAST and n.removesuffix(FIRST_LAST_SUFFIX) not in by_name]
    for name in released + only_first_last:
        lines.append(f"| {cell(name)} | " + " | ".join(shown(name) + shown(name + FIRST_LAST_SUFFIX)) + " |")
    return lines


def rule_lines(run: Run) -> list[str]:
    """Stage 06's rule table (rules.csv): per method the rules this run applied and the release's."""
    path = run.directory / COMPARISON / RULES_FILE
    if not path.is_file():
        return [f"Rule table: {NOT_RUN}."]
    rules = pd.read_csv(path).fillna("")
    lines = ["| " + " | ".join(rules.columns) + " |", "|" + "---|" * len(rules.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rules.itertuples(index=False)]
    return lines


def stage_table(run: Run) -> list[str]:
    """The README's stage table: notebook, paper section, minutes of this run, key output."""
    lines = ["| notebook | paper | minutes | key output |", "|---|---|---|---|"]
    for stage in STAGES:
        lines.append(f"| [`{stage.name}`](notebooks/{stage.name}.ipynb) | {stage.paper} | "
                     f"{stage_minutes(run.stages[stage.name])} | {stage.output} |")
    return lines


def blocks(run: Run) -> dict[str, list[str]]:
    """The README's generated blocks, by marker name."""
    return {"results": glance_lines(run), "stages": stage_table(run),
            "comparison": [*comparison_lines(run), "", "<details><summary>The rules each method followed in this run, "
                           "beside its release's (stage 06's rule table)</summary>", "", *rule_lines(run), "",
                           "</details>"]}


def replace_block(text_: str, name: str, lines: list[str]) -> str:
    """`text_` with everything between `<!-- name:begin -->` and `<!-- name:end -->` replaced by `lines`."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if text_.count(begin) != 1 or text_.count(end) != 1 or text_.index(begin) > text_.index(end):
        raise InvalidSettingError(
            f"expected one '{begin}' before one '{end}' in the README (found {text_.count(begin)} and "
            f"{text_.count(end)}); put the two markers, each on its own line, around the generated block")
    head, rest = text_.split(begin, 1)
    _, tail = rest.split(end, 1)
    return head + begin + "\n" + "\n".join(lines) + "\n" + end + tail


def rewrite_readme(path: str | Path, run: Run) -> str:
    """Rewrite the generated blocks of the README at `path`; the text outside them is kept byte for byte."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no README at {path}")
    new = path.read_text()
    for name, lines in blocks(run).items():
        new = replace_block(new, name, lines)
    atomic_write(path, lambda tmp: tmp.write_text(new))
    return new


def write_results(run: Run, out: str | Path) -> Path:
    markdown = results_markdown(run)
    return atomic_write(out, lambda tmp: tmp.write_text(markdown))


def main(argv: list[str] | None = None) -> None:
    root = project_root()
    parser = argparse.ArgumentParser(prog="python -m qsd.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=str(root / "data" / "runs" / "tiny_pixart" / "default"),
                        help="the run folder data/runs/<model_id>/<run_id> (default: the default run)")
    parser.add_argument("--out", default=str(root / "docs" / "results.md"), help="where results.md goes")
    parser.add_argument("--readme", help="also rewrite this README's generated blocks (e.g. README.md)")
    args = parser.parse_args(argv)
    run = read_run(args.run)
    print(f"wrote {write_results(run, args.out)}")
    if args.readme:
        rewrite_readme(args.readme, run)
        print(f"rewrote the generated blocks of {args.readme}")


if __name__ == "__main__":
    main()
