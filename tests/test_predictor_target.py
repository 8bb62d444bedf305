"""The predictor's target expression (paper §3.3): parsed from a whitelist, never eval'd."""

import json
import pickle
import re

import numpy as np
import pandas as pd
import pytest

from qsd.errors import InvalidSettingError
from qsd.predictor.target import MAX_LENGTH, PAPER_TARGET, TargetExpression

FRAME = pd.DataFrame({"fid": [10.0, 20.0, 15.0], "avg_bits": [3.5, 4.0, 3.0], "clip_score": [0.3, 0.2, 0.25]})


def test_paper_target_evaluates_minus_fid_minus_lambda_bits():
    target = TargetExpression(PAPER_TARGET, {"lambda": 10.0})
    np.testing.assert_allclose(target.evaluate(FRAME), [-45.0, -60.0, -45.0])
    assert target.variables == ("fid", "avg_bits") and target.constants == {"lambda": 10.0}
    assert target == TargetExpression("-fid - lambda * avg_bits", {"lambda": 10})


def test_constants_functions_and_dict_input():
    target = TargetExpression("-log(fid) + w * clip_score ** 2 / 2", {"w": 4.0})
    expected = -np.log(FRAME["fid"]) + 4.0 * FRAME["clip_score"] ** 2 / 2
    np.testing.assert_allclose(target.evaluate(FRAME), expected)
    np.testing.assert_allclose(TargetExpression("log(fid)").evaluate({"fid": [1.0, np.e]}), [0.0, 1.0])
    np.testing.assert_allclose(TargetExpression("sqrt(abs(-fid)) + exp(0) - log10(100)").evaluate({"fid": [4.0]}),
                               [1.0])


@pytest.mark.parametrize("text, message", [
    ("__import__('os')", r"calling __import__\(\) is not allowed"),
    ("fid.__class__", "attribute 'fid.__class__' is not allowed"),
    ("[fid][0]", "subscript .* is not allowed"),
    ("lambda: 1", "lambda .* is not allowed"),
    ("open('x')", r"calling open\(\) is not allowed"),
    ("log('x')", "the literal 'x' is not allowed"),
    ("fid if fid else 1", "not allowed"),
    ("log(fid, 2)", "exactly one argument"),
    ("fid; 1", "not a valid expression"),
    ("3 * 4", "uses no metric column"),
    ("x" * (MAX_LENGTH + 1), "at most 500"),
    ("-" * 200 + "fid", "nested more than"),
])
def test_forbidden_constructs_are_refused_with_what_is_allowed(text, message):
    with pytest.raises(InvalidSettingError, match=message) as info:
        TargetExpression(text)
    if "not allowed" in message:
        assert "allowed: numbers, the metric columns" in str(info.value)


def test_unknown_names_get_a_hint_and_keywords_need_constants():
    with pytest.raises(InvalidSettingError, match=r"unknown name 'fdi' \(did you mean 'fid'\?\)"):
        TargetExpression("-fdi")
    with pytest.raises(InvalidSettingError, match="'lambda' is a Python keyword: pass it in constants"):
        TargetExpression("-fid - lambda * avg_bits")
    with pytest.raises(InvalidSettingError, match="would shadow"):
        TargetExpression("fid", {"log": 1.0})
    with pytest.raises(InvalidSettingError, match="finite number"):
        TargetExpression("fid", {"w": float("nan")})


def test_missing_values_are_reported_unless_dropped():
    frame = FRAME.assign(fid=[10.0, None, np.nan])
    target = TargetExpression(PAPER_TARGET, {"lambda": 1.0})
    with pytest.raises(InvalidSettingError, match=r"column 'fid' is missing \(NaN/None\) in 2 of 3 rows"):
        target.evaluate(frame)
    usable = target.usable_rows(frame)
    assert usable.tolist() == [True, False, False]
    np.testing.assert_allclose(target.evaluate(frame[usable]), [-13.5])
    with pytest.raises(InvalidSettingError, match="needs column 'avg_bits'"):
        target.evaluate({"fid": [1.0]})
    with pytest.raises(InvalidSettingError, match="not finite in 1 of 2 rows"):
        TargetExpression("log(fid)").evaluate({"fid": [1.0, 0.0]})


def test_json_round_trip_str_and_slug():
    target = TargetExpression(PAPER_TARGET, {"lambda": 10.0})
    restored = TargetExpression.from_json(json.loads(json.dumps(target.to_json())))
    assert restored == target and restored.slug == target.slug and pickle.loads(pickle.dumps(target)) == target
    np.testing.assert_array_equal(restored.evaluate(FRAME), target.evaluate(FRAME))
    assert str(target) == "-fid - lambda * avg_bits (lambda=10)"
    assert target.slug == "neg_fid_minus_10_times_avg_bits"
    assert TargetExpression(PAPER_TARGET, {"lambda": 0.5}).slug == "neg_fid_minus_0p5_times_avg_bits"
    for text in ("log(fid) / (1 + avg_bits) ** 2", "-fid*1e-3 - -avg_bits", "+" * 40 + "fid"):
        slug = TargetExpression(text).slug
        assert re.fullmatch(r"[A-Za-z0-9_]+", slug) and len(slug) <= 120
        assert slug == TargetExpression(text).slug
    assert TargetExpression("(fid - avg_bits) * 2").slug != TargetExpression("fid - avg_bits * 2").slug
    with pytest.raises(InvalidSettingError, match="keys text and constants"):
        TargetExpression.from_json({"text": "fid"})
