"""qsd.report: docs/results.md and the README's generated blocks from a run folder (issue 27)."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from qsd import report
from qsd.errors import InvalidSettingError, MissingFileError

ROOT = Path(__file__).resolve().parents[1]
README = """# title

what it is, kept as it is.

<!-- results:begin -->
old headline lines
<!-- results:end -->

between the blocks: hand-written, kept.

<!-- stages:begin -->
| old | table |
<!-- stages:end -->

<!-- comparison:begin -->
old comparison
<!-- comparison:end -->

tail, kept.
"""
SUMMARIES = {
    "02_label_configs": {"by_kind": {"float": 1, "random": 160, "uniform": 6}, "float_fid": 25.6, "float_is_best": True,
                         "w3_worse_than_w4": True, "best_w4": "uniform uaq-4", "best_w4_fid_ratio": 1.5412},
    "03_train_predictor": {"targets": {
        "fid": {"gnn_spearman_mean": 0.8881, "gnn_spearman_std": 0.0249, "best_baseline": "mlp",
                "best_baseline_spearman": 0.7931, "hop_spearman_mean": [0.7, -0.19]},
        "paper": {"gnn_spearman_mean": 0.873, "gnn_spearman_std": 0.033, "best_baseline": "mlp",
                  "best_baseline_spearman": 0.766}}},
    "06_final_comparison": {
        "float_fid": 23.1, "qsd_w3x_config": "gnn-refit ≤3.70 bits", "qsd_w3x_a6_fid": 53.3, "qsd_w3x_a6_fid_std": 6.2,
        "qsd_w3x_a6_bits": 3.697, "best_baseline_w4a6": "DMQ", "best_baseline_w4a6_fid": 25.9,
        "best_baseline_w4a6_fid_std": 2.3, "qsd_w3x_a6_beats_every_w4a6_baseline_beyond_spread": False,
        "w4a6_baselines_beaten_paired": [],
        "w4a6_paired_fid_differences": {"DMQ W4A6": {"mean": -27.4, "std": 5.4, "beaten": False},
                                        "RTN W4A6": {"mean": -23.2, "std": 5.1, "beaten": False}},
        "baseline_rows": 12, "qsd_dominates": {"RTN W4A6 (first/last float)": {
            "by": "Qua²SeDiMo W3.90A6 (first/last float)", "qsd_bits": 3.9, "baseline_bits": 4.2,
            "paired": {"mean": 4.25, "std": 1.0, "per_seed": [3.0, 4.5, 5.25], "beaten": True}}}},
}
SECONDS = {"02_label_configs": 437.2, "03_train_predictor": 399.0, "06_final_comparison": 848.4}


def without_blocks(text: str) -> str:
    """`text` with the contents of its generated blocks removed (the markers kept)."""
    for name in ("results", "stages", "comparison"):
        head, rest = text.split(f"<!-- {name}:begin -->")
        text = head + f"<!-- {name}:begin -->" + rest[rest.index(f"<!-- {name}:end -->"):]
    return text


def fake_run(root: Path, summaries=SUMMARIES, seconds=SECONDS) -> Path:
    """data/runs/tiny_pixart/default with the given stages: summary.json and a papermill-executed notebook."""
    run = root / "data" / "runs" / "tiny_pixart" / "default"
    for stage, summary in summaries.items():
        (run / stage).mkdir(parents=True)
        (run / stage / "summary.json").write_text(json.dumps(summary))
        (run / stage / "provenance.json").write_text(json.dumps({"git_sha": "0123456789abcdef"}))
        (run / stage / "settings.json").write_text(json.dumps({"smoke": False, "compute_dtype": "float32"}))
        if stage in seconds:
            notebook = {"cells": [], "nbformat": 4, "nbformat_minor": 5,
                        "metadata": {"papermill": {"duration": seconds[stage], "exception": None}}}
            (run / stage / f"{stage}.ipynb").write_text(json.dumps(notebook, indent=1))
    return run


def comparison_files(run: Path) -> None:
    """Stage 06's comparison.csv and rules.csv as the stage writes them (a few rows)."""
    def row(name, family, method, bits, a, fids, convention="released"):
        mean = sum(fids) / len(fids)
        std = (sum((f - mean) ** 2 for f in fids) / (len(fids) - 1)) ** 0.5
        return {"name": name, "family": family, "method": method, "avg_bits": bits, "a_bits": a,
                "convention": convention, "fid_mean": mean, "fid_std": std, "fid_seeds": json.dumps(fids)}
    rows = [row("float", "float", "float", 16.0, 16, [23.0, 24.0, 22.0]),
            row("RTN W4A8", "baseline", "RTN", 4.2395, 8, [30.0, 31.0, 32.0]),
            row("RTN W4A6", "baseline", "RTN", 4.2395, 6, [30.0, 32.0, 34.0]),
            row("ViDiT-Q W4A6", "baseline", "ViDiT-Q", 6.2075, 6, [40.0, 41.0, 42.0]),
            row("Qua²SeDiMo W3.90A6", "qsd", "Qua²SeDiMo", 3.9, 6, [50.0, 51.0, 52.0]),
            row("ViDiT-Q W4A6 (first/last float)", "baseline", "ViDiT-Q", 4.2395, 6, [45.0, 44.0, 46.0], "first_last"),
            row("RTN W4A6 (first/last float)", "baseline", "RTN", 4.2395, 6, [30.0, 32.0, 34.0], "first_last"),
            row("Qua²SeDiMo W3.90A6 (first/last float)", "qsd", "Qua²SeDiMo", 3.93, 6, [26.0, 27.5, 28.75],
                "first_last")]
    pd.DataFrame(rows).to_csv(run / "06_final_comparison" / "comparison.csv", index=False)
    pd.DataFrame([{"method": "RTN", "source": "this run", "float layers": "pos_embed.proj, proj_out",
                   "weights": "per-channel min–max", "activations": "static | per-tensor",
                   "attention Q, K, V / softmax": "float", "calibration": "32 images"},
                  {"method": "RTN", "source": "released", "float layers": "first and last", "weights": "",
                   "activations": "", "attention Q, K, V / softmax": "float", "calibration": ""}]).to_csv(
        run / "06_final_comparison" / "rules.csv", index=False)


def test_the_comparison_table_pairs_both_conventions_and_names_the_dominating_row(tmp_path):
    run = fake_run(tmp_path)
    assert report.comparison_lines(report.read_run(run)) == ["Stage 06: not run."]
    comparison_files(run)
    lines = report.comparison_lines(report.read_run(run))
    assert "float 23.0" in lines[0] and "A6" in lines[0]
    body = lines[4:]
    assert body == [
        "| RTN W4A6 | 4.24 | 32.0 ± 2.0 |  | 4.24 | 32.0 ± 2.0 | Qua²SeDiMo W3.90A6 (first/last float) |",
        "| ViDiT-Q W4A6 | 6.21 | 41.0 ± 1.0 |  | 4.24 | 45.0 ± 1.0 |  |",
        "| Qua²SeDiMo W3.90A6 | 3.90 | 51.0 ± 1.0 |  | 3.93 | 27.4 ± 1.4 |  |"], "A6 only, one line per method"
    rules = report.rule_lines(report.read_run(run))
    assert rules[0].startswith("| method | source | float layers |")
    assert "| RTN | this run | pos_embed.proj, proj_out | per-channel min–max | static \\| per-tensor |" in rules[2]
    assert "| RTN | released | first and last |  |" in rules[3]


def test_the_extended_spaces_verdict_joins_the_table_and_the_headline(tmp_path):
    extended = {"by": "Qua²SeDiMo-ext W3.60A6", "qsd_bits": 3.6, "baseline_bits": 4.24,
                "paired": {"mean": 2.0, "std": 0.5, "per_seed": [1.5, 2.0, 2.5], "beaten": True}}
    summaries = SUMMARIES | {"06_final_comparison": SUMMARIES["06_final_comparison"] | {
        "extended_run": "extended", "extended_dominates": {"RTN W4A6": extended,
                                                           "RTN W4A6 (first/last float)": extended}}}
    run = fake_run(tmp_path, summaries)
    comparison_files(run)
    lines = report.comparison_lines(report.read_run(run))
    assert lines[4] == ("| RTN W4A6 | 4.24 | 32.0 ± 2.0 | Qua²SeDiMo-ext W3.60A6 | 4.24 | 32.0 ± 2.0 | "
                        "Qua²SeDiMo W3.90A6 (first/last float); Qua²SeDiMo-ext W3.60A6 |")
    headline = "\n".join(report.glance_lines(report.read_run(run)))
    assert "Qua²SeDiMo dominates 1 of 12 baseline rows; the extended search space's rows (run `extended`) " \
           "dominate 2." in headline


def test_stages_are_the_notebooks():
    assert [s.name for s in report.STAGES] == sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert set(report.FIELDS) == {s.name for s in report.STAGES}


@pytest.mark.parametrize(("seconds", "expected"), [(None, "not run"), (26.4, "26 s"), (95.0, "1 min 35 s"),
                                                   (59.6, "1 min 0 s"), (848.4, "14 min 8 s")])
def test_duration_text(seconds, expected):
    assert report.duration_text(seconds) == expected


def test_results_markdown(tmp_path):
    markdown = report.results_markdown(report.read_run(fake_run(tmp_path)))
    assert markdown.startswith("# Results of run `tiny_pixart/default`")
    assert "| `02_label_configs` | 7 min 17 s | 0123456789ab | false |" in markdown
    assert "| `00_train_denoisers` | not run | not run | not run |" in markdown
    assert "## 00_train_denoisers (not run)\n\nnot run" in markdown
    assert "| `float_fid` | 25.6 |" in markdown and "| `best_w4_fid_ratio` | 1.54 |" in markdown
    assert "| `targets.fid.gnn_spearman_mean` | 0.888 |" in markdown
    assert "| `targets.fid.hop_spearman_mean` | 0.70 / \u22120.19 |" in markdown
    assert "| `targets.fid.expression` | not run |" in markdown  # a field the summary lacks
    assert "| `w4a6_paired_fid_differences` | DMQ W4A6 \u221227.4 ± 5.4; RTN W4A6 \u221223.2 ± 5.1 |" in markdown
    assert "| `w4a6_baselines_beaten_paired` | none |" in markdown
    assert ("| `qsd_dominates` | RTN W4A6 (first/last float) (4.20 bits) by Qua²SeDiMo W3.90A6 (first/last float) "
            "(3.90 bits, +4.2 FID) |") in markdown
    assert "All notebooks: 28 min 5 s (no minutes for 00, 01, 04, 05, 07)." in markdown
    assert "### The table at A6\n\nStage 06: not run." in markdown


def test_a_stage_run_without_papermill_is_not_timed(tmp_path):
    run = report.read_run(fake_run(tmp_path, seconds={}))
    assert report.stage_minutes(run.stages["02_label_configs"]) == "not timed"
    assert report.stage_minutes(run.stages["00_train_denoisers"]) == "not run"
    assert report.total_minutes(run) == "not timed"


def test_readme_blocks_are_rewritten_and_nothing_else(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    new = report.rewrite_readme(readme, report.read_run(fake_run(tmp_path)))
    assert readme.read_text() == new
    assert without_blocks(new) == without_blocks(README)
    assert "old headline" not in new and "| old | table |" not in new
    assert ("- **Labels** (stage 02, 160 random configurations, computed in float32): float FID 25.6; best uniform "
            "W4 (`uniform uaq-4`) at 1.54× the float FID; every uniform W3 worse than its W4: true; float best "
            "beyond its seed spread: true.") in new
    assert "GNN test Spearman on FID 0.888 ± 0.025 (best baseline mlp 0.793)" in new
    assert ("`gnn-refit ≤3.70 bits` at A6, FID 53.3 ± 6.2 (3.70 bits); best W4A6 baseline DMQ, FID 25.9 ± 2.3; "
            "float 23.1. W3.x A6 beats every W4A6 baseline beyond the seed spread: **false**; baselines it beats at "
            "every noise seed: 0 of 2. At matched cost (same float-layer convention and activation bits, no more "
            "weight bits, lower FID at every held-out seed) Qua²SeDiMo dominates 1 of 12 baseline rows.") in new
    assert "- **Sub-4-bit** (stage 05): best at ≤ 3.5 bits not run, FID not run" in new  # a missing stage
    assert "- **Real low-bit weights** (stage 07): not run bits" in new
    assert "| [`06_final_comparison`](notebooks/06_final_comparison.ipynb) | §6, Fig. 1" in new
    assert "| 14 min 8 s |" in new and "| [`07_kernels_and_export`](notebooks/07_kernels_and_export.ipynb) |" in new
    assert report.rewrite_readme(readme, report.read_run(fake_run(tmp_path / "again"))) == new  # idempotent


@pytest.mark.parametrize("broken", [README.replace("<!-- results:end -->\n", ""),
                                    README.replace("<!-- stages:begin -->", "<!-- results:begin -->")])
def test_readme_without_its_markers_is_refused(tmp_path, broken):
    readme = tmp_path / "README.md"
    readme.write_text(broken)
    with pytest.raises(InvalidSettingError, match="markers"):
        report.rewrite_readme(readme, report.read_run(fake_run(tmp_path)))
    assert readme.read_text() == broken


def test_a_missing_run_names_make_reproduce(tmp_path):
    with pytest.raises(MissingFileError, match="make reproduce"):
        report.read_run(tmp_path / "data" / "runs" / "tiny_pixart" / "default")


def test_the_command_line(tmp_path):
    run, readme, out = fake_run(tmp_path), tmp_path / "README.md", tmp_path / "docs" / "results.md"
    readme.write_text(README)
    done = subprocess.run([sys.executable, "-m", "qsd.report", "--run", str(run), "--readme", str(readme),
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.read_text() == report.results_markdown(report.read_run(run))
    assert "<!-- results:begin -->\nFrom `data/runs/tiny_pixart/default/`" in readme.read_text()
    with pytest.raises(MissingFileError, match="make reproduce"):  # in this process: an interpreter costs 10-15 s
        report.main(["--run", str(tmp_path / "nothing"), "--out", str(out)])
