"""qsd.plotting.label_points: labels of points at the same x are pushed apart and never written twice."""

from qsd.plotting import label_points, new_figure


def test_labels_at_the_same_bits_are_spread_apart_and_repeats_are_written_once():
    fig, ax = new_figure(4, 3)
    points = [(4.24, 30.0, "RTN"), (4.24, 30.2, "TFMQ-DM"), (4.23, 30.1, "Q-Diffusion"), (4.24, 30.0, "RTN"),
              (1.0, 30.0, "Q W3.70"), (7.0, 31.0, "far right")]
    ax.plot([p[0] for p in points], [p[1] for p in points], "o")
    ax.set_yscale("log")
    label_points(ax, points, gap_points=8.0)
    texts = {t.get_text(): t for t in ax.texts}
    assert sorted(texts) == ["Q W3.70", "Q-Diffusion", "RTN", "TFMQ-DM", "far right"], "RTN is written once"
    heights = sorted(texts[n].get_position()[1] + ax.transData.transform(texts[n].xy)[1] * 72 / fig.dpi
                     for n in ("RTN", "Q-Diffusion", "TFMQ-DM"))
    assert all(b - a >= 8.0 - 1e-6 for a, b in zip(heights, heights[1:], strict=False))
    assert texts["Q W3.70"].get_position() == (6, 2), "a point alone at its x keeps its label beside it"


def test_a_tall_stack_of_labels_terminates_despite_rounding():
    """Stacking many labels at one point moves each up by exactly the gap; a float sum that lands a hair under the gap
    must not count as a clash again (it looped forever on the smoke run's Pareto figure)."""
    fig, ax = new_figure(4, 3)
    points = [(3.2, 100.0 + 0.37 * i, f"row {i}") for i in range(60)]
    ax.plot([p[0] for p in points], [p[1] for p in points], "o")
    ax.set_yscale("log")
    label_points(ax, points, gap_points=8.0)
    assert len(ax.texts) == 60
