"""Stage 06's comparison rules: held-out evaluation seeds (disjoint from every seed the run labelled, selected or
calibrated with), the Pareto verdict `qsd_dominates` (checked against values worked out by hand) and the common
float-layer convention."""

import dataclasses
import json

import pandas as pd
import pytest

from qsd import run_folder
from qsd.baselines import BASELINES, baseline, baseline_settings, dmq
from qsd.baselines.calibration import CalibrationSet
from qsd.baselines.common import first_and_last
from qsd.errors import InvalidSettingError
from qsd.models.random_init import example_steps, random_denoiser
from qsd.run_folder import DENOISERS, LABELS, MULTIQUANTIZER, RunFolder
from qsd.stages import final_comparison as stage


@pytest.fixture
def run(tmp_path, monkeypatch) -> RunFolder:
    """A run whose stages 00 and 02 ran at seed 0 (stage 02 with 3 float seeds) and stage 01 at seed 7."""
    monkeypatch.setattr(run_folder, "project_root", lambda: tmp_path)
    folder = RunFolder("tiny_pixart", "default")
    for name, settings in ((DENOISERS, {"seed": 0}), (MULTIQUANTIZER, {"seed": 7}),
                           (LABELS, {"seed": 0, "float_seeds": 3})):
        folder.path(name).mkdir(parents=True)
        (folder.path(name) / "settings.json").write_text(json.dumps(settings))
    return folder


def test_the_run_knows_every_seed_it_sampled_with(run):
    assert run.sampled_seeds() == {0, 1, 2, 7}


def test_evaluation_seeds_are_held_out_from_labelling_selection_and_calibration(run):
    seeds = stage.evaluation_seeds([run], stage.Settings(noise_seeds=3))
    assert seeds == [8, 9, 10], "one past every sampled seed, consecutive"
    assert not set(seeds) & (run.sampled_seeds() | {stage.Settings().calibration_seed})
    assert stage.evaluation_seeds([run], stage.Settings(noise_seeds=2, evaluation_seed=20)) == [20, 21]
    with pytest.raises(InvalidSettingError, match=r"include \[1, 2\].*leave it None \(seeds from 8\)"):
        stage.evaluation_seeds([run], stage.Settings(noise_seeds=3, evaluation_seed=1))
    with pytest.raises(InvalidSettingError, match=r"include \[9\].*calibration: 9"):
        stage.evaluation_seeds([run], stage.Settings(noise_seeds=3, calibration_seed=9))


def test_evaluation_seeds_are_held_out_from_the_extended_runs_seeds_too(run):
    extended = RunFolder("tiny_pixart", "extended")
    extended.path(LABELS).mkdir(parents=True)
    (extended.path(LABELS) / "settings.json").write_text(json.dumps({"seed": 8, "float_seeds": 3}))
    settings = stage.Settings(noise_seeds=3, extended_run="extended")
    assert [r.run_id for r in stage.selection_runs(settings)] == ["default", "extended"]
    assert stage.evaluation_seeds(stage.selection_runs(settings), settings) == [11, 12, 13]


def row(name: str, family: str, bits: float, fids: list[float], a_bits: int = 6, convention: str = "released") -> dict:
    return {"name": name, "family": family, "avg_bits": bits, "a_bits": a_bits, "fid_seeds": fids,
            "convention": convention}


def test_qsd_dominates_needs_no_more_bits_the_same_activations_and_a_paired_win():
    table = pd.DataFrame([
        row("DMQ W4A6", "baseline", 5.6, [30.0, 40.0, 35.0]),
        row("RTN W4A6", "baseline", 4.2, [50.0, 60.0, 55.0]),
        row("ViDiT-Q W4A6", "baseline", 4.2, [20.0, 25.0, 22.0]),
        row("RTN W4A8", "baseline", 4.2, [50.0, 60.0, 55.0], a_bits=8),
        row("Q W3.70A6", "qsd", 3.7, [40.0, 50.0, 45.0]),
        row("Q W4.00A6", "qsd", 4.0, [28.0, 38.0, 33.0]),
        row("Q W4.00A16", "qsd", 4.0, [1.0, 1.0, 1.0], a_bits=16),
    ])
    dominated = stage.qsd_dominates(table)
    # DMQ: both Qua²SeDiMo A6 rows have fewer bits; W4.00 is lower by 2 at every seed (std 0 < mean 2);
    # W3.70 is higher. RTN: both are lower, W3.70 by 10 and W4.00 by 22 at every seed: the larger mean wins.
    # ViDiT-Q is lower than both; RTN W4A8 has no Qua²SeDiMo row at A8 (the A16 one does not count).
    assert set(dominated) == {"DMQ W4A6", "RTN W4A6"}
    assert dominated["DMQ W4A6"]["by"] == "Q W4.00A6" and dominated["DMQ W4A6"]["paired"]["mean"] == 2.0
    assert dominated["DMQ W4A6"]["qsd_bits"] == 4.0 and dominated["DMQ W4A6"]["baseline_bits"] == 5.6
    assert dominated["RTN W4A6"]["by"] == "Q W4.00A6" and dominated["RTN W4A6"]["paired"]["per_seed"] == [22.0] * 3
    cheaper = table.assign(avg_bits=table["avg_bits"].where(table["family"] != "baseline", 3.8))
    other_rule = pd.concat([table, pd.DataFrame([row("Q W3.00A6 (first/last float)", "qsd", 3.0, [1.0, 1.0, 1.0],
                                                     convention="first_last")])])
    assert stage.qsd_dominates(other_rule) == dominated, "rows of another float-layer convention do not compete"
    at_38 = stage.qsd_dominates(cheaper)  # every baseline at 3.8 bits: only W3.70 has no more bits
    assert set(at_38) == {"RTN W4A6"} and at_38["RTN W4A6"]["by"] == "Q W3.70A6"
    assert at_38["RTN W4A6"]["paired"]["mean"] == 10.0


def test_the_pareto_figure_has_a_panel_per_activation_width_and_draws_dominated_baselines_hollow(tmp_path):
    table = pd.DataFrame([
        row("float", "float", 16.0, [10.0, 11.0, 12.0], a_bits=16),
        row("DMQ W4A6", "baseline", 5.6, [30.0, 40.0, 35.0]),
        row("RTN W4A6", "baseline", 4.2, [50.0, 60.0, 55.0]),
        row("RTN W4A8", "baseline", 4.2, [45.0, 50.0, 47.0], a_bits=8),
        row("Qua²SeDiMo W3.70A6", "qsd", 3.7, [40.0, 50.0, 45.0]),
        row("Qua²SeDiMo W4.00A6", "qsd", 4.0, [28.0, 38.0, 33.0]),
    ])
    table["fid_mean"] = table["fid_seeds"].map(lambda f: sum(f) / len(f))
    table["fid_std"] = 1.0
    settings = stage.Settings(smoke=True)
    result = stage.Result(settings, tmp_path, table, pd.DataFrame(), {}, {"qsd_dominates": stage.qsd_dominates(table)})
    fig = stage.plot_pareto(result)
    assert [ax.get_title().split(":")[0] for ax in fig.axes] == ["A8", "A6"]
    a6 = fig.axes[1]
    label_at = {tuple(text.xy): text.get_text() for text in a6.texts}
    hollow = {label_at[(line.get_xdata()[0], line.get_ydata()[0])] for line in a6.lines
              if line.get_marker() == "o" and line.get_markerfacecolor() == "white"}
    assert hollow == {"DMQ", "RTN"}, "both A6 baselines are dominated by Qua²SeDiMo W4.00A6 (4.0 bits, lower by 2+)"
    assert len(label_at) == 4, "every A6 point is labelled"
    assert (tmp_path / "06_pareto_tiny_pixart.png").is_file()
    extended = pd.concat([table, pd.DataFrame([row("Qua²SeDiMo-ext W3.60A6", stage.EXTENDED, 3.6, [30.0, 31.0, 32.0])
                                               | {"fid_mean": 31.0, "fid_std": 1.0}])], ignore_index=True)
    result.table = extended
    assert "Qx W3.60A6" in {text.get_text() for text in stage.plot_pareto(result).axes[1].texts}
    assert len(stage.plot_fid_a6(result).axes[0].get_yticklabels()) == 5, "every A6 row, the extended one too"


def test_first_last_float_keeps_exactly_the_end_layers_for_every_baseline():
    """The common convention: each baseline's FIRST_LAST_FLOAT overrides leave exactly the first and last layer a
    forward pass calls float, whatever the method keeps float as released. Every method on PixArt; on the U-Net
    (many timestep layers that DMQ keeps float as released) those whose float layers need no reconstruction."""
    for arch, methods in (("pixart", tuple(BASELINES)), ("sd15_unet", ("rtn", "viditq"))):
        denoiser = random_denoiser(arch, 0)
        calibration = CalibrationSet.from_inputs(example_steps(arch, 2, (900, 100)))
        ends = sorted(first_and_last(denoiser, calibration))
        for name in methods:
            module = baseline(name)
            settings = baseline_settings(name, module.SMOKE | module.FIRST_LAST_FLOAT)
            result = module.quantize(denoiser, calibration, 4, None, settings, seed=0)
            assert sorted(result.settings["float_layers"]) == ends, (arch, name)
        dmq_settings = baseline_settings("dmq", dmq.FIRST_LAST_FLOAT)
        assert sorted(dmq.float_layers(denoiser, calibration, dmq_settings)["all"]) == ends
        assert len(dmq.float_layers(denoiser, calibration)["all"]) > 2, "as released DMQ keeps more"


def test_baselines_whose_release_keeps_the_end_layers_are_not_measured_twice():
    settings = stage.Settings(baseline_a_bits=(8, 6), first_last_a_bits=(6, 4))
    # RTN, Q-Diffusion and TFMQ-DM keep the first and last layer as released; DMQ and ViDiT-Q keep other layers
    assert stage.first_last_aliases(settings) == {
        "RTN W4A6 (first/last float)": "RTN W4A6", "Q-Diffusion W4A6 (first/last float)": "Q-Diffusion W4A6",
        "TFMQ-DM W4A6 (first/last float)": "TFMQ-DM W4A6"}, "A4 has no released row to share"
    assert stage.first_last_aliases(stage.Settings(conventions=("released",))) == {}
    with pytest.raises(InvalidSettingError, match="conventions"):
        stage.Settings(conventions=("first_last",))


def test_the_rule_table_is_read_from_each_rows_settings():
    """Each 'this run' cell comes from the row's settings record: change a setting, the cell changes."""
    def record(name: str, **changes) -> dict:
        extra = ({"les": {"layers": 3}, "attention_matmuls": "float"} if name == "dmq" else
                 {"smoothed": ["transformer_blocks.3.ff.net.2"]} if name == "viditq" else {})
        keep = ["pos_embed.proj", "proj_out"] if name != "viditq" else ["pos_embed.proj"]
        settings = dataclasses.replace(baseline(name).Settings(), **changes)
        return dataclasses.asdict(settings) | {"float_layers": keep} | extra

    def table_of(**viditq_changes) -> pd.DataFrame:
        rows = [row(f"{BASELINES[name]} W4A6", "baseline", 4.2, [1.0]) | {"method": BASELINES[name],
                "settings": record(name, **(viditq_changes if name == "viditq" else {}))} for name in BASELINES]
        rows.append(row("Qua²SeDiMo W3.70A6", "qsd", 3.7, [1.0]) | {"config": "gnn ≤3.70", "float_layers": []})
        summary = {"qsd_w3x_config": "gnn ≤3.70"}
        return stage.rule_table(stage.Result(stage.Settings(), None, pd.DataFrame(rows), pd.DataFrame(), {}, summary))

    table = table_of()
    assert list(table.columns) == list(stage.RULE_COLUMNS)
    assert len(table) == 2 * (len(BASELINES) + 1), "this run and released, per method"
    assert table.loc[("Q-Diffusion", "this run"), "weights"] == "per-channel minmax grid, AdaRound 300 it/block"
    assert table.loc[("Q-Diffusion", "this run"), "attention Q, K, V / softmax"] == "static A6 / A8"
    assert table.loc[("RTN", "this run"), "float layers"] == "pos_embed.proj, proj_out"
    assert "α 0.3" in table.loc[("ViDiT-Q", "this run"), "activations"]
    assert "transformer_blocks.3.ff.net.2 (moving average" in table.loc[("ViDiT-Q", "this run"), "activations"]
    assert "α 0.5" in table_of(alpha=0.5).loc[("ViDiT-Q", "this run"), "activations"]
    assert table.loc[("ViDiT-Q", "this run"), "weights"].endswith("(no rotation)")
    assert table_of(rotation="hadamard").loc[("ViDiT-Q", "this run"), "weights"].endswith("(hadamard rotation)")
    assert table_of(quantize_attention=False).loc[("ViDiT-Q", "this run"), "attention Q, K, V / softmax"] == "float"
    assert table.loc[("Qua²SeDiMo", "this run"), "float layers"] == "none"
    assert table.loc[("DMQ", "released"), "attention Q, K, V / softmax"] == "float"


def test_rtn_at_dmqs_float_layers_keeps_what_dmq_keeps_and_costs_dmqs_bits():
    """DMQ's neighbour at equal bits: RTN with `keep_time_embedding` keeps exactly DMQ's float layers (its timestep
    path, then the ends of the call order without it) and so counts the same average bits; without it, RTN keeps
    only the ends and costs fewer."""
    from qsd.baselines import rtn
    from qsd.baselines.common import average_bits, quantized_units

    for arch in ("pixart", "sd15_unet"):
        denoiser = random_denoiser(arch, 0)
        calibration = CalibrationSet.from_inputs(example_steps(arch, 2, (900, 100)))
        kept = dmq.float_layers(denoiser, calibration)["all"]
        matched = rtn.quantize(denoiser, calibration, 4, None, rtn.Settings(keep_time_embedding=True))
        plain = rtn.quantize(denoiser, calibration, 4, None)
        assert sorted(matched.settings["float_layers"]) == kept, arch
        assert matched.avg_bits == pytest.approx(average_bits(denoiser, quantized_units(denoiser, kept), 4))
        assert matched.avg_bits > plain.avg_bits + 0.05, arch
        assert sorted(plain.settings["float_layers"]) == sorted(first_and_last(denoiser, calibration))


def test_variant_rows_are_measured_but_not_a_release_in_the_headline_or_rule_table():
    settings = stage.Settings()
    assert stage.method_settings(settings, "rtn", extra={"keep_time_embedding": True}).keep_time_embedding
    with pytest.raises(InvalidSettingError, match="unknown variant"):
        stage.Settings(variants=("fp8",))
    table = pd.DataFrame([
        row("float", "float", 16.0, [10.0, 11.0]) | {"method": "float"},
        row("RTN W4A6", "baseline", 4.2, [50.0, 52.0]) | {"method": "RTN"},
        row("RTN W4A6 (DMQ's float layers)", "baseline", 5.6, [20.0, 22.0]) | {"method": "RTN"},
        row("ViDiT-Q W4A6 (mixed precision)", "baseline", 4.8, [19.0, 22.0]) | {"method": "ViDiT-Q"},
        row("DMQ W4A6", "baseline", 5.6, [30.0, 33.0]) | {"method": "DMQ"},
        row("Qua²SeDiMo W3.70A6", "qsd", 3.7, [40.0, 41.0]) | {"method": "Qua²SeDiMo", "config": "gnn ≤3.70"}])
    table["fid_mean"] = table["fid_seeds"].map(lambda f: sum(f) / len(f))
    table["fid_std"] = table["fid_seeds"].map(lambda f: abs(f[0] - f[1]) / 2 ** 0.5)
    assert list(stage.as_released(table)["name"]) == ["RTN W4A6", "DMQ W4A6"]
    summary = stage._summary(settings, table, "gnn ≤3.70", pd.DataFrame())
    assert summary["best_baseline_w4a6"] == "DMQ", "the variant rows (FID 21, 20.5) are not methods as released"
    assert set(summary["w4a6_paired_fid_differences"]) == {"RTN W4A6", "DMQ W4A6"}
    assert set(summary["qsd_dominates"]) == {"RTN W4A6"}, "the Pareto verdict covers every baseline row"
    assert summary["baseline_rows"] == 4


def test_extended_rows_are_built_from_the_extended_multiquantizer_and_judged_on_their_own():
    """`extended_run`: its configurations become 'Qua²SeDiMo-ext' rows applied through its own multiquantizer (float
    layers and 8-bit UAQ), priced by it, and `qsd_dominates(..., EXTENDED)` judges only them."""
    from types import SimpleNamespace

    import torch

    from qsd.config import QuantSpec
    from qsd.multiquant import MultiQuantizer
    from qsd.space import search_space

    denoiser = random_denoiser("pixart", 0).eval()
    weights = {n: m.weight.detach().clone() for n, m in denoiser.named_modules()
               if isinstance(getattr(m, "weight", None), torch.Tensor)}
    mq = MultiQuantizer.build(denoiser, progress=False)
    ext_mq = MultiQuantizer.build(denoiser, search_space("extended").options(), progress=False, float_option=True)
    units = ext_mq.unit_names
    config = ext_mq.uniform(QuantSpec("uaq", 3)).with_layers({units[0]: None, units[1]: QuantSpec("uaq", 8)})
    config_row = {"name": "searched 1", "avg_bits": ext_mq.cost(config)["avg_bits"], "source": "searched"}
    settings = stage.Settings(smoke=True, baselines=(), variants=(), dmq_a_bits=(), qsd_a_bits=(16,),
                              conventions=("released",))
    context = stage.Context(settings, None, SimpleNamespace(denoiser=denoiser), mq, None, None, 8, {}, None)
    rows = stage.plan(context, {}, lambda: None, (ext_mq, {"searched 1": (config, config_row)}))
    name, build, depends_on = rows[-1]
    assert name == f"Qua²SeDiMo-ext W{config_row['avg_bits']:.2f}A16" and depends_on["space"] == "extended"
    _, columns = build()
    assert columns["family"] == stage.EXTENDED and columns["float_layers"] == [units[0]]
    assert columns["avg_bits"] == pytest.approx(config_row["avg_bits"])
    modules = dict(denoiser.named_modules())
    assert torch.equal(modules[units[0]].weight, weights[units[0]])
    assert torch.equal(modules[units[1]].weight, ext_mq.option(units[1], QuantSpec("uaq", 8)).dequantize())
    assert not torch.equal(modules[units[2]].weight, weights[units[2]])
    mq.restore()
    assert all(torch.equal(modules[n].weight, w) for n, w in weights.items() if n in modules)
    table = pd.DataFrame([row("RTN W4A6", "baseline", 4.2, [50.0, 60.0, 55.0]),
                          row("Q W3.70A6", "qsd", 3.7, [60.0, 70.0, 65.0]),
                          row("Qx W3.60A6", stage.EXTENDED, 3.6, [40.0, 50.0, 45.0])])
    assert stage.qsd_dominates(table) == {}
    assert stage.qsd_dominates(table, stage.EXTENDED)["RTN W4A6"]["by"] == "Qx W3.60A6"
