"""Search spaces: which per-unit choices the multiquantizer builds and the search may pick (paper §3.1; issue 31).

`paper`: the paper's space, three weight quantizers at 3 and 4 bits; every unit is quantized. It is the
reproduction's default. `extended`: the paper's options, 8-bit UAQ, and keeping the unit float (FP16: 16 bits a
weight, no error), so the search can make the choice practical toolkits make by rule (e.g. the first and last
layer float). 2-bit options are left out: nothing measured says the search would use them.

A run's space is a setting of stage 01 and is recorded with every label (`qsd.label_session`: the options of the
protocol), so a dataset of one space never mixes with the other's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from qsd.config import QuantSpec
from qsd.errors import InvalidSettingError
from qsd.multiquant import DEFAULT_OPTIONS


@dataclass(frozen=True)
class SearchSpace:
    """What a space adds to the quantized options of the paper's methods × bit widths, and whether a unit may
    also stay float."""

    name: str
    extra_options: tuple[QuantSpec, ...]
    float_option: bool

    @property
    def default_design(self) -> str:
        """The label design of stage 02 unless one is asked for (`qsd.design`): the paper's scheme for the paper's
        space, the budget-stratified design for a space that scheme cannot draw from."""
        return "paper" if self.name == "paper" else "stratified"

    def options(self, base: Sequence[QuantSpec] = DEFAULT_OPTIONS) -> tuple[QuantSpec, ...]:
        """The quantized options the multiquantizer builds: `base` (methods × bits), then the extras."""
        return tuple(dict.fromkeys((*base, *self.extra_options)))


SPACES = {
    "paper": SearchSpace("paper", (), float_option=False),
    "extended": SearchSpace("extended", (QuantSpec("uaq", 8),), float_option=True),
}


def search_space(name: str) -> SearchSpace:
    """The space called `name`; an unknown name is an error listing the spaces."""
    if name not in SPACES:
        raise InvalidSettingError(f"unknown search space {name!r}; choose one of {sorted(SPACES)}")
    return SPACES[name]

