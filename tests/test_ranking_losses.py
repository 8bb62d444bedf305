"""The ranking losses of the predictor (paper §3.3 L_rank): soft ranks, soft Spearman, LambdaRank, the combined loss."""

import math

import pytest
import torch
import torch.nn.functional as F
from margins import above, below

from qsd.errors import InvalidSettingError
from qsd.predictor.lambdarank import lambdarank_loss
from qsd.predictor.losses import RANK_LOSSES, predictor_loss
from qsd.predictor.metrics import ndcg_at_k, spearman
from qsd.predictor.soft_rank import exact_rank, soft_rank, soft_spearman_loss

RANK_FUNCTIONS = {"srcc": soft_spearman_loss, "lambdarank": lambdarank_loss}


pytestmark = pytest.mark.usefixtures("one_thread")


def ranking_task(n=200, d=8, seed=0):
    """Features, and a relevance that is a nonlinear (mostly monotone) function of one direction of them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    direction = torch.randn(d, generator=g)
    return x, torch.exp(x @ direction / 2) + 0.3 * torch.sin(3 * x[:, 0]), direction


def fit_linear(loss_fn, x, y, start, steps=100):
    w = start.clone().requires_grad_()
    optimizer = torch.optim.Adam([w], lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn(x @ w, y).backward()
        optimizer.step()
    return (x @ w).detach()


def test_exact_rank_is_one_based_with_mean_ranks_for_ties():
    assert exact_rank(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_soft_rank_approaches_exact_ranks_at_low_temperature():
    scores = torch.randn(50, generator=torch.Generator().manual_seed(0))
    exact = exact_rank(scores)
    errors = [float((soft_rank(scores, t) - exact).abs().max()) for t in (1.0, 0.1, 1e-2, 1e-4)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-3 and errors[0] > 1


def test_soft_rank_ignores_the_scale_of_the_scores():
    scores = torch.randn(20, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(soft_rank(scores), soft_rank(7 * scores + 3))


@pytest.mark.parametrize("name", sorted(RANK_FUNCTIONS))
@pytest.mark.parametrize("scores, targets", [
    ([0.3], [1.0]),
    ([0.3, -0.2], [1.0, 2.0]),
    ([0.3, -0.2], [1.0, 1.0]),
    ([0.5, 0.5, 0.5, 0.5], [1.0, 2.0, 3.0, 4.0]),
    ([0.1, 0.5, -1.0, 2.0], [3.0, 3.0, 3.0, 3.0]),
    ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0]),
], ids=["n1", "n2", "n2-tied-targets", "constant-scores", "constant-targets", "all-constant"])
def test_losses_and_gradients_are_finite_on_degenerate_batches(name, scores, targets):
    scores = torch.tensor(scores, requires_grad=True)
    loss = RANK_FUNCTIONS[name](scores, torch.tensor(targets))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(scores.grad).all()


@pytest.mark.parametrize("name", sorted(RANK_FUNCTIONS))
def test_columns_are_independent_lists(name):
    g = torch.Generator().manual_seed(4)
    scores, targets = torch.randn(15, 3, generator=g), torch.randn(15, generator=g)
    columns = torch.stack([RANK_FUNCTIONS[name](scores[:, c], targets) for c in range(3)])
    torch.testing.assert_close(RANK_FUNCTIONS[name](scores, targets), columns)
    torch.testing.assert_close(soft_rank(scores)[:, 1], soft_rank(scores[:, 1]))


@pytest.mark.parametrize("name", sorted(RANK_FUNCTIONS))
def test_constant_targets_give_no_gradient(name):
    scores = torch.randn(6, requires_grad=True)
    RANK_FUNCTIONS[name](scores, torch.full((6,), 2.0)).backward()
    assert float(scores.grad.abs().max()) == 0.0


def test_soft_spearman_loss_is_zero_for_a_perfect_order_and_two_for_the_reverse():
    targets = torch.tensor([1.0, 5.0, 2.0, 9.0, 4.0])
    assert float(soft_spearman_loss(targets, targets, 1e-4)) == pytest.approx(0.0, abs=1e-4)
    assert float(soft_spearman_loss(-targets, targets, 1e-4)) == pytest.approx(2.0, abs=1e-4)


def test_lambdarank_is_log2_at_ties_and_smaller_for_a_better_order():
    targets = torch.arange(30.0)
    assert float(lambdarank_loss(torch.zeros(30), targets)) == pytest.approx(math.log(2))
    assert float(lambdarank_loss(targets, targets)) < math.log(2) < float(lambdarank_loss(-targets, targets))


def test_lambdarank_k_at_least_n_is_the_full_loss_and_bad_k_is_refused():
    scores, targets = torch.randn(12), torch.randn(12)
    assert float(lambdarank_loss(scores, targets, k=12)) == pytest.approx(float(lambdarank_loss(scores, targets)))
    with pytest.raises(InvalidSettingError):
        lambdarank_loss(scores, targets, k=0)
    with pytest.raises(InvalidSettingError):
        lambdarank_loss(scores, targets, sigma=0.0)
    with pytest.raises(InvalidSettingError):
        soft_rank(scores, temperature=0.0)


@pytest.mark.comparison
@pytest.mark.parametrize("k", [None, 10])
def test_lambdarank_alone_raises_ndcg_at_10(k):
    x, y, direction = ranking_task()
    before = -x @ direction  # start from the reversed order
    after = fit_linear(lambda s, t: lambdarank_loss(s, t, k=k), x, y, start=-direction)
    above(ndcg_at_k(after, y, 10), ndcg_at_k(before, y, 10) + 0.5, 0.3, "NDCG@10 after vs before + 0.5")
    above(ndcg_at_k(after, y, 10), 0.8, 0.02, "NDCG@10 after vs 0.8")


@pytest.mark.comparison
@pytest.mark.parametrize("name", ["srcc", "lambdarank", "hybrid"])
def test_each_ranking_loss_reduces_its_own_ranking_error(name):
    x, y, direction = ranking_task(seed=1)
    start = torch.randn(x.shape[1], generator=torch.Generator().manual_seed(2))
    terms = ["srcc", "lambdarank"] if name == "hybrid" else [name]
    after = fit_linear(lambda s, t: sum(RANK_FUNCTIONS[term](s, t) for term in terms), x, y, start)
    before = x @ start
    for term in terms:
        below(float(RANK_FUNCTIONS[term](after, y)), 0.5 * float(RANK_FUNCTIONS[term](before, y)), 0.5,
              f"{term} loss after vs half the loss before")
    if "srcc" in terms:
        below(1 - spearman(after.numpy(), y.numpy()), 0.5 * (1 - spearman(before.numpy(), y.numpy())), 0.5,
              "1 − Spearman after vs half of it before")
    if "lambdarank" in terms:
        below(1 - ndcg_at_k(after, y, len(y)), 0.5 * (1 - ndcg_at_k(before, y, len(y))), 0.5,
              "1 − NDCG after vs half of it before")


def hop_batch(b=16, hops=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, generator=g), torch.randn(b, generator=g), torch.rand(b, hops + 1, generator=g) * 10


def test_mse_is_the_regression_loss_alone():
    prediction, y, norms = hop_batch()
    total, parts = predictor_loss(prediction, y, norms, "mse")
    assert float(total) == pytest.approx(float(F.mse_loss(prediction, y)))
    assert set(parts) == {"mse", "total"}


def test_ranking_terms_average_over_hops_and_scale_with_rank_weight():
    prediction, y, norms = hop_batch()
    _, parts = predictor_loss(prediction, y, norms, "srcc")
    per_hop = [float(soft_spearman_loss(norms[:, m], y)) for m in range(norms.shape[1])]
    assert parts["srcc"] == pytest.approx(sum(per_hop) / len(per_hop))
    total, _ = predictor_loss(prediction, y, norms, "srcc", rank_weight=0.25)
    assert float(total) == pytest.approx(parts["mse"] + 0.25 * parts["srcc"])


def test_hybrid_is_srcc_plus_lambdarank():
    prediction, y, norms = hop_batch(seed=3)
    total, parts = predictor_loss(prediction, y, norms, "hybrid")
    _, srcc = predictor_loss(prediction, y, norms, "srcc")
    _, lambdarank = predictor_loss(prediction, y, norms, "lambdarank")
    assert parts["srcc"] == pytest.approx(srcc["srcc"])
    assert parts["lambdarank"] == pytest.approx(lambdarank["lambdarank"])
    assert float(total) == pytest.approx(parts["mse"] + srcc["srcc"] + lambdarank["lambdarank"])


def test_every_kind_gives_finite_gradients_to_the_hop_norms():
    prediction, y, norms = hop_batch()
    for kind in RANK_LOSSES:
        prediction_, norms_ = prediction.clone().requires_grad_(), norms.clone().requires_grad_()
        predictor_loss(prediction_, y, norms_, kind)[0].backward()
        assert torch.isfinite(prediction_.grad).all()
        assert (norms_.grad is None) if kind == "mse" else bool(torch.isfinite(norms_.grad).all())


def test_bad_loss_arguments_are_refused():
    prediction, y, norms = hop_batch()
    with pytest.raises(InvalidSettingError, match="unknown predictor loss"):
        predictor_loss(prediction, y, norms, "ndcg")
    with pytest.raises(InvalidSettingError, match="rank_weight"):
        predictor_loss(prediction, y, norms, "srcc", rank_weight=-1.0)
