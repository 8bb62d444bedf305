"""Quantifiable sensitivity insights from score tables (paper §5, Figs. 7, 12, 13; code.md §7).

A candidate's (a layer's or a subgraph's) *sensitivity* is the spread of its variants' scores (max − min): how much
the choice of quantization for that candidate moves the predicted quality. Box plots pool all variants' scores per
category as the paper does; the statements below compare spreads and report each statistic, so a reader can hold
them against the paper's.

Statements (each only where the model has the categories):
  1. t-embed vs c-embed (paper: t-embed is more sensitive in every architecture);
  2. the most and least sensitive op types and subgraph types;
  3. which methods and bit widths the top-1 variants of the layers prefer (paper: K-Means in DiTs, UAQ in U-Nets);
  4. whether sensitivity changes with depth (Spearman of block index against block spread);
  5. whether the predictor agrees with the per-layer quantization error (Spearman of score against −error).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from qsd.bits import FLOAT_BITS
from qsd.config import FLOAT_KEY, option_method, parse_option
from qsd.search.scores import SEPARATOR


@dataclass(frozen=True)
class Insight:
    """One statement and the numbers behind it."""

    topic: str
    text: str
    statistics: dict = field(default_factory=dict)


def spreads(scores: pd.DataFrame, by: str = "unit") -> pd.DataFrame:
    """Per candidate (`by`: the score table's `unit` column): its category columns and the spread (max − min),
    median and max of its variants' scores."""
    grouped = scores.groupby(by, sort=False)
    table = grouped[["type", "block", "roles"]].first()
    table["spread"] = grouped["score"].max() - grouped["score"].min()
    table["median"] = grouped["score"].median()
    table["max"] = grouped["score"].max()
    return table.reset_index()


def winners(scores: pd.DataFrame) -> pd.DataFrame:
    """Every layer's option in its candidate's top-1 variant: columns layer, role, option, method, bits."""
    top = scores.loc[scores.groupby("unit", sort=False)["score"].idxmax()]
    rows = [(layer, role, option) for _, r in top.iterrows()
            for layer, role, option in zip(r["layers"].split(SEPARATOR), r["roles"].split(SEPARATOR),
                                           r["options"].split(SEPARATOR), strict=True)]
    table = pd.DataFrame(rows, columns=["layer", "role", "option"])
    specs = [parse_option(key) for key in table["option"]]
    table["method"] = [option_method(spec) for spec in specs]
    table["bits"] = [FLOAT_BITS if spec is None else spec.w_bits for spec in specs]
    return table


def insights(node_scores: pd.DataFrame, subgraph_scores: pd.DataFrame) -> list[Insight]:
    """The statements the score tables support (see the module docstring), with their statistics."""
    out = []
    nodes = spreads(node_scores)
    nodes["op"] = nodes["roles"]
    by_op = nodes.groupby("op")["spread"].mean().sort_values(ascending=False)
    subgraphs = spreads(subgraph_scores)
    by_type = subgraphs.groupby("type")["spread"].mean().sort_values(ascending=False)
    if {"t-embed", "c-embed"} <= set(by_type.index):
        t, c = float(by_type["t-embed"]), float(by_type["c-embed"])
        out.append(Insight("t-embed vs c-embed",
                           f"t-embed {'more' if t > c else 'less'} sensitive than c-embed "
                           f"(mean subgraph score spread {t:.3f} vs {c:.3f}; paper: more)",
                           {"t_embed_spread": t, "c_embed_spread": c}))
    out.append(Insight("op types", f"most sensitive op type: {by_op.index[0]} (mean spread {by_op.iloc[0]:.3f}); "
                       f"least: {by_op.index[-1]} ({by_op.iloc[-1]:.3f})",
                       {"op_spread": {k: round(float(v), 4) for k, v in by_op.items()}}))
    out.append(Insight("unit types", f"most sensitive unit type: {by_type.index[0]} (mean spread "
                       f"{by_type.iloc[0]:.3f}); least: {by_type.index[-1]} ({by_type.iloc[-1]:.3f})",
                       {"unit_spread": {k: round(float(v), 4) for k, v in by_type.items()}}))
    chosen = winners(node_scores)
    methods = chosen["method"].value_counts(normalize=True)
    kmeans = float(methods[methods.index.str.startswith("kmeans")].sum())
    low = float((chosen["bits"] == chosen["bits"].min()).mean())
    kept_float = float(methods.get(FLOAT_KEY, 0.0))  # the extended space's float choice
    out.append(Insight("methods", f"top-1 per layer: K-Means {kmeans:.0%}, UAQ {methods.get('uaq', 0.0):.0%}"
                       + (f", float {kept_float:.0%}" if kept_float else "") + f" of {len(chosen)} layers "
                       f"({'K-Means' if kmeans > methods.get('uaq', 0.0) else 'UAQ'} preferred among the quantizers; "
                       f"paper: K-Means in DiTs, UAQ in U-Nets); {low:.0%} at {chosen['bits'].min()} bits",
                       {"method_share": {k: round(float(v), 4) for k, v in methods.items()},
                        "low_bit_share": round(low, 4)}))
    blocks = subgraphs[subgraphs["block"] >= 0].groupby("block")["spread"].mean()
    if len(blocks) >= 3:
        rho = float(spearmanr(blocks.index, blocks.to_numpy()).statistic)
        trend = "deeper blocks more sensitive" if rho > 0 else "earlier blocks more sensitive"
        out.append(Insight("depth", f"{trend} (Spearman of block index vs mean spread {rho:+.2f} over {len(blocks)} "
                           f"blocks; most sensitive block {int(blocks.idxmax())})",
                           {"block_spread_spearman": rho, "most_sensitive_block": int(blocks.idxmax())}))
    rho = float(spearmanr(node_scores["score"], -node_scores["error"]).statistic)
    out.append(Insight("error proxy", f"node scores vs −(quantization error) of the same options: Spearman "
                       f"{rho:+.2f} ({'agree' if rho > 0.5 else 'partly agree' if rho > 0 else 'disagree'})",
                       {"score_vs_error_spearman": rho}))
    return out


def insight_text(items: list[Insight]) -> str:
    return "\n".join(f"- {item.text}" for item in items)


def round_statistics(items: list[Insight], digits: int = 4) -> list[dict]:
    """The insights as JSON-ready records."""
    def rounded(value):
        if isinstance(value, dict):
            return {k: rounded(v) for k, v in value.items()}
        return round(value, digits) if isinstance(value, float) and np.isfinite(value) else value
    return [{"topic": i.topic, "text": i.text, "statistics": rounded(i.statistics)} for i in items]
