"""Label designs: how stage 02 draws the random configurations it labels (paper §3.2; issue 31 item 2).

`paper`: the paper's scheme (`MultiQuantizer.sample`): p ~ U(0, 1), each unit low-bit with probability p, the
method uniform. Its average bits cluster around the middle of the space, and a UAQ-heavy low-bit configuration
is rare (two thirds of the draws are K-Means), so the knapsack's low-bit region has few labels.

`stratified`: configuration i aims at average bits t_i, spread evenly over `bits_range` for every prefix of the
stream (t_i = lo + (hi - lo) · frac(1/2 + i / golden ratio), so asking for more configurations extends the same
design). Each configuration draws its own preference over the space's methods (Dirichlet(1), float counting as a
method, shared evenly among a method's bit widths: some configurations are UAQ-heavy, some hold many float units),
starts every unit from that preference, and then moves one unit at a time
to a choice that brings the total size strictly closer to t_i, until it is within `tolerance` bits a weight.
A target below what the space can reach (e.g. 3.0 bits where uniform UAQ-3 costs 3.2 with its overhead) is
raised to the space's lowest average bits.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from qsd.config import QuantConfig, option_key, option_method
from qsd.errors import InvalidSettingError
from qsd.multiquant import MultiQuantizer

DESIGNS = ("paper", "stratified")
DEFAULT_BITS_RANGE = (3.0, 4.5)
GOLDEN = (1 + 5 ** 0.5) / 2

ConfigSampler = Callable[[np.random.Generator, int], QuantConfig]
"""(generator of configuration i, i) -> configuration i."""


class StratifiedDesign:
    """Configurations whose average bits cover `bits_range` evenly (module docstring)."""

    def __init__(self, multiquantizer: MultiQuantizer, bits_range: tuple[float, float] = DEFAULT_BITS_RANGE,
                 tolerance: float = 0.02) -> None:
        low, high = map(float, bits_range)
        if not low < high:
            raise InvalidSettingError(f"bits_range must be (low, high) with low < high; got {bits_range}")
        table = multiquantizer.search_space()
        self.units = multiquantizer.unit_names
        self.choices = multiquantizer.choices
        sizes = table.pivot(index="unit", columns="option", values="size_bits")
        self.sizes = sizes.loc[self.units, [option_key(c) for c in self.choices]].to_numpy(dtype=float)
        self.n_weights = float(table.drop_duplicates("unit")["n_weights"].sum())
        lowest, highest = self.sizes.min(axis=1).sum() / self.n_weights, self.sizes.max(axis=1).sum() / self.n_weights
        if high <= lowest or low >= highest:
            raise InvalidSettingError(f"bits_range {bits_range} lies outside what this search space reaches "
                                      f"({lowest:.2f}-{highest:.2f} average bits)")
        self.bits_range = (max(low, lowest), min(high, highest))
        methods = [option_method(c) for c in self.choices]
        self.method_of_choice = np.array([list(dict.fromkeys(methods)).index(m) for m in methods])
        self.n_methods = int(self.method_of_choice.max()) + 1
        self.tolerance = tolerance

    def target(self, index: int) -> float:
        """The average bits configuration `index` aims at."""
        low, high = self.bits_range
        return low + (high - low) * ((0.5 + index / GOLDEN) % 1.0)

    def config(self, rng: np.random.Generator, index: int) -> QuantConfig:
        weights = rng.dirichlet(np.ones(self.n_methods))[self.method_of_choice]
        preference = weights / np.bincount(self.method_of_choice)[self.method_of_choice]
        preference /= preference.sum()
        current = rng.choice(len(self.choices), size=len(self.units), p=preference)
        rows = np.arange(len(self.units))
        gap = self.sizes[rows, current].sum() - self.target(index) * self.n_weights
        moved = True
        while abs(gap) > self.tolerance * self.n_weights and moved:
            moved = False
            for unit in rng.permutation(len(self.units)):
                new_gaps = gap + self.sizes[unit] - self.sizes[unit, current[unit]]
                closer = np.abs(new_gaps) < abs(gap)
                if closer.any():  # the preference is positive everywhere, so some closer choice has weight
                    weights = preference * closer
                    choice = rng.choice(len(self.choices), p=weights / weights.sum())
                    current[unit], gap, moved = choice, new_gaps[choice], True
                    if abs(gap) <= self.tolerance * self.n_weights:
                        break
        return QuantConfig({unit: self.choices[c] for unit, c in zip(self.units, current, strict=True)})


def stream_generator(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    """The generator of configuration `index` of a seed stream: stream 0 is stage 02's random stream, seeded by
    (seed, index); any other stream adds the spawn key (stream,), which no plain entropy list reproduces (numpy pads
    entropy with zeros, so a list like (seed, stream, 0) would equal (seed, stream), configuration `stream` of
    stream 0)."""
    if stream == 0:
        return np.random.default_rng([seed, index])
    return np.random.default_rng(np.random.SeedSequence([seed, index], spawn_key=(stream,)))


def config_sampler(design: str, multiquantizer: MultiQuantizer,
                   bits_range: tuple[float, float] = DEFAULT_BITS_RANGE) -> ConfigSampler:
    """The sampler of `design` over `multiquantizer`'s search space."""
    if design == "paper":
        return lambda rng, index: multiquantizer.sample(rng)
    if design == "stratified":
        return StratifiedDesign(multiquantizer, bits_range).config
    raise InvalidSettingError(f"unknown label design {design!r}; choose one of {DESIGNS}")
