"""Simple yardsticks the GNN predictor is compared against, on the same folds and metrics (paper §4, Tab. 1).

Each yardstick scores configurations, higher = predicted better (as the targets, paper §3.3):

- `summed_error`: −(sum of the units' relative weight-quantization errors), the store's `summed_error` column
  or a per-unit error table (`MultiQuantizer.errors`); no training, and its score has no units.
- `ridge`: `RidgeCV` on the one-hot per-unit choices (`config_features`), α picked on a log grid by
  leave-one-out CV inside the training fold. Its per-(unit, option) coefficients are per-layer sensitivities.
- `mlp`: an `MLPRegressor` (64, 64) on the same one-hot features (no per-unit error: the features say which
  option each unit has, and the error of that option is a constant of the model), fit by L-BFGS on
  standardised targets with `random_state = seed`, so deterministic for a seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import pandas as pd
from sklearn.compose import TransformedTargetRegressor
from sklearn.linear_model import RidgeCV
from sklearn.neural_network import MLPRegressor
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from qsd.config import FLOAT_KEY, QuantConfig, QuantSpec
from qsd.errors import InvalidSettingError, closest_names
from qsd.predictor.metrics import mae, ranking_metrics

YARDSTICKS = ("summed_error", "ridge", "mlp")
RIDGE_ALPHAS = np.logspace(-3, 3, 13)
MLP_HIDDEN = (64, 64)
MLP_L2 = 1e-2
MLP_MAX_ITER = 500

ErrorTable = Mapping[str, Mapping[QuantSpec, float]]
"""unit name -> option -> relative weight error (the shape of `MultiQuantizer.errors`)."""


class Yardstick(Protocol):
    name: str
    predicts_target: bool
    """True when `score` is a prediction in the target's units (so an MAE means something)."""

    def fit(self, configs: Sequence[QuantConfig], targets: np.ndarray, frame: pd.DataFrame | None = None
            ) -> Yardstick: ...

    def score(self, configs: Sequence[QuantConfig], frame: pd.DataFrame | None = None) -> np.ndarray: ...


# ---------------------------------------------------------------------- features
def feature_columns(unit_names: Sequence[str], options: Sequence[QuantSpec]) -> list[tuple[str, str]]:
    """(unit, option label) of every column of `config_features`: per unit, `float` then each option's key."""
    return [(unit, option) for unit in unit_names for option in (FLOAT_KEY, *(spec.key for spec in options))]


def config_features(configs: Sequence[QuantConfig], unit_names: Sequence[str], options: Sequence[QuantSpec]
                    ) -> np.ndarray:
    """One-hot per-unit choices, shape (configs, units × (1 + options)), column order of `feature_columns`."""
    for what, values in (("unit names", list(unit_names)), ("options", list(options))):
        if len(set(values)) != len(values):
            raise InvalidSettingError(f"config_features: the {what} must be distinct; got {values}")
    column = {None: 0, **{spec: j + 1 for j, spec in enumerate(options)}}
    width = len(column)
    features = np.zeros((len(configs), len(unit_names) * width))
    for row, config in enumerate(configs):
        config.validate(unit_names, options)
        for u, unit in enumerate(unit_names):
            features[row, u * width + column[config[unit]]] = 1.0
    return features


# ---------------------------------------------------------------------- yardsticks
class SummedErrorYardstick:
    """Score = −Σ units' relative errors; from `errors` when given, else from the frame's `summed_error` column
    (NaN there is read as 0 for an all-float configuration, which has no error)."""

    name = "summed_error"
    predicts_target = False

    def __init__(self, errors: ErrorTable | None = None):
        self.errors = errors

    def fit(self, configs: Sequence[QuantConfig], targets: np.ndarray, frame: pd.DataFrame | None = None
            ) -> SummedErrorYardstick:
        return self

    def score(self, configs: Sequence[QuantConfig], frame: pd.DataFrame | None = None) -> np.ndarray:
        if self.errors is not None:
            return -np.array([self._summed(config) for config in configs], dtype=np.float64)
        if frame is None or "summed_error" not in frame.columns:
            raise InvalidSettingError("the summed_error yardstick needs the store rows of the configurations (a frame "
                                      "with a summed_error column) or a per-unit error table")
        _check_aligned(configs, frame)
        summed = frame["summed_error"].to_numpy(np.float64)
        all_float = np.array([all(spec is None for spec in config.values()) for config in configs], dtype=bool)
        summed = np.where(np.isnan(summed) & all_float, 0.0, summed)
        missing = np.flatnonzero(np.isnan(summed))
        if missing.size:
            raise InvalidSettingError(
                f"summed_error is missing for {missing.size} quantized configuration(s) (e.g. row {missing[0]}); "
                "relabel them or pass the per-unit error table (MultiQuantizer.errors)")
        return -summed

    def _summed(self, config: QuantConfig) -> float:
        try:
            return float(sum(self.errors[unit][spec] for unit, spec in config.items() if spec is not None))
        except KeyError as exc:
            raise InvalidSettingError(f"the per-unit error table has no entry {exc.args[0]!r}; build it from the "
                                      "same model and options as the configurations") from None


class OneHotRegressor:
    """A scikit-learn regressor on `config_features`, predicting the target itself. BLAS runs on one thread: the
    matrices are tiny, threads only contend (with torch's) and one thread keeps results bitwise reproducible."""

    predicts_target = True

    def __init__(self, name: str, estimator, unit_names: Sequence[str], options: Sequence[QuantSpec]):
        self.name = name
        self.estimator = estimator
        self.unit_names = list(unit_names)
        self.options = tuple(options)
        self.fitted = False

    def fit(self, configs: Sequence[QuantConfig], targets: np.ndarray, frame: pd.DataFrame | None = None
            ) -> OneHotRegressor:
        targets = np.asarray(targets, dtype=np.float64)
        if targets.shape != (len(configs),) or not np.isfinite(targets).all():
            raise InvalidSettingError(f"{self.name}: need one finite target per configuration; got shape "
                                      f"{targets.shape} for {len(configs)} configurations")
        features = config_features(configs, self.unit_names, self.options)
        with threadpool_limits(1):
            self.estimator.fit(features, targets)
        self.fitted = True
        return self

    def score(self, configs: Sequence[QuantConfig], frame: pd.DataFrame | None = None) -> np.ndarray:
        if not self.fitted:
            raise InvalidSettingError(f"the {self.name} yardstick is not fitted; call fit(configs, targets) first")
        features = config_features(configs, self.unit_names, self.options)
        with threadpool_limits(1):
            return np.asarray(self.estimator.predict(features), dtype=np.float64)


class RidgeYardstick(OneHotRegressor):
    """`RidgeCV` on the one-hot choices; `coefficients()` are per-(unit, option) effects on the target."""

    def __init__(self, unit_names: Sequence[str], options: Sequence[QuantSpec]):
        super().__init__("ridge", RidgeCV(alphas=RIDGE_ALPHAS), unit_names, options)

    def coefficients(self) -> pd.DataFrame:
        """Columns unit, option (a `QuantSpec.key` or `float`), coefficient (target units; higher = better)."""
        if not self.fitted:
            raise InvalidSettingError("the ridge yardstick is not fitted; call fit(configs, targets) first")
        frame = pd.DataFrame(feature_columns(self.unit_names, self.options), columns=["unit", "option"])
        frame["coefficient"] = self.estimator.coef_
        return frame


def make_yardstick(name: str, unit_names: Sequence[str], options: Sequence[QuantSpec], seed: int = 0,
                   errors: ErrorTable | None = None) -> Yardstick:
    """A fresh, unfitted yardstick by name (one of `YARDSTICKS`)."""
    if name == "summed_error":
        return SummedErrorYardstick(errors)
    if name == "ridge":
        return RidgeYardstick(unit_names, options)
    if name == "mlp":
        mlp = MLPRegressor(hidden_layer_sizes=MLP_HIDDEN, solver="lbfgs", alpha=MLP_L2, max_iter=MLP_MAX_ITER,
                           random_state=seed)
        return OneHotRegressor("mlp", TransformedTargetRegressor(mlp, transformer=StandardScaler()),
                               unit_names, options)
    hint = closest_names(str(name), YARDSTICKS, n=1)
    raise InvalidSettingError(f"unknown yardstick {name!r}; available: {', '.join(YARDSTICKS)}"
                              + (f" (did you mean {hint[0]!r}?)" if hint else ""))


# ---------------------------------------------------------------------- evaluation
def evaluate_yardsticks(configs: Sequence[QuantConfig], frame: pd.DataFrame | None, targets: np.ndarray,
                        splits: Sequence[tuple[np.ndarray, np.ndarray]], unit_names: Sequence[str],
                        options: Sequence[QuantSpec], seed: int = 0, yardsticks: Sequence[str] = YARDSTICKS,
                        errors: ErrorTable | None = None) -> pd.DataFrame:
    """Fit each yardstick on each fold's training part and rank its test part.

    `frame` holds the store rows of `configs` in the same order (needed by `summed_error` without `errors`).
    Returns one row per (yardstick, fold): yardstick, fold, n_train, n_test, spearman, kendall, ndcg10 and mae
    (target units; NaN for a yardstick whose score is not a prediction of the target).
    """
    targets = np.asarray(targets, dtype=np.float64)
    if targets.shape != (len(configs),):
        raise InvalidSettingError(f"need one target per configuration; got {targets.shape} for {len(configs)}")
    if frame is not None:
        _check_aligned(configs, frame)
    rows = []
    for name in yardsticks:
        for fold, (train, test) in enumerate(splits):
            model = make_yardstick(name, unit_names, options, seed, errors)
            model.fit([configs[i] for i in train], targets[train], None if frame is None else frame.iloc[train])
            scores = model.score([configs[i] for i in test], None if frame is None else frame.iloc[test])
            rows.append({"yardstick": name, "fold": fold, "n_train": len(train), "n_test": len(test),
                         **ranking_metrics(scores, targets[test]),
                         "mae": mae(scores, targets[test]) if model.predicts_target else np.nan})
    return pd.DataFrame(rows)


def fold_models(name: str, configs: Sequence[QuantConfig], targets: np.ndarray,
                splits: Sequence[tuple[np.ndarray, np.ndarray]], unit_names: Sequence[str],
                options: Sequence[QuantSpec], seed: int = 0, errors: ErrorTable | None = None) -> list[Yardstick]:
    """Yardstick `name` fitted on each split's training part, in split order."""
    targets = np.asarray(targets, dtype=np.float64)
    return [make_yardstick(name, unit_names, options, seed, errors).fit([configs[i] for i in train], targets[train])
            for train, _ in splits]


def fold_mean_scores(name: str, configs: Sequence[QuantConfig], targets: np.ndarray,
                     splits: Sequence[tuple[np.ndarray, np.ndarray]], unit_names: Sequence[str],
                     options: Sequence[QuantSpec], test_configs: Sequence[QuantConfig], seed: int = 0,
                     errors: ErrorTable | None = None) -> np.ndarray:
    """The `fold_models` of yardstick `name`, their scores of `test_configs` averaged over the splits (how a fold
    ensemble scores configurations none of its folds saw)."""
    models = fold_models(name, configs, targets, splits, unit_names, options, seed, errors)
    return np.mean([model.score(test_configs) for model in models], axis=0)


def _check_aligned(configs: Sequence[QuantConfig], frame: pd.DataFrame) -> None:
    """`frame` must hold the rows of `configs`, in order (checked by fingerprint when the frame has one)."""
    if len(frame) != len(configs):
        raise InvalidSettingError(f"the frame has {len(frame)} rows for {len(configs)} configurations; pass the store "
                                  "rows of exactly these configurations, in the same order")
    if "fingerprint" in frame.columns:
        mismatched = np.flatnonzero(frame["fingerprint"].to_numpy() != np.array([c.fingerprint for c in configs]))
        if mismatched.size:
            raise InvalidSettingError(f"frame row {mismatched[0]} is not the store row of configuration "
                                      f"{mismatched[0]} ({mismatched.size} rows differ); align frame and configs")
