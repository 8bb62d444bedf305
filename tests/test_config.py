import json

import pytest

from qsd import (
    CorruptFileError,
    MissingLayerError,
    ModelMismatchError,
    QuantConfig,
    QuantSpec,
    UnknownLayerError,
    UnsupportedSpecError,
)

UNITS = ["blocks.0.attn.to_q", "blocks.0.attn.to_k", "blocks.0.ff", "proj_out"]


def test_spec_validation_lists_supported_values():
    with pytest.raises(UnsupportedSpecError, match="supported: uaq, kmeans_c, kmeans_a.*did you mean 'kmeans_c'"):
        QuantSpec("kmeans-c", 4)
    with pytest.raises(UnsupportedSpecError, match="supported: 2..8"):
        QuantSpec("uaq", 1)
    with pytest.raises(UnsupportedSpecError, match="supported: 2..8"):
        QuantSpec("uaq", 4.0)


def test_activation_bits_round_trip_and_keep_weight_only_fingerprints():
    spec = QuantSpec("kmeans_c", 3, a_bits=6)
    assert spec.key == "kmeans_c-3-a6" and QuantSpec.parse(spec.key) == spec
    assert spec.weights_only == QuantSpec("kmeans_c", 3) and spec.to_json()["a_bits"] == 6
    assert QuantSpec("uaq", 4, a_bits=None) == QuantSpec("uaq", 4)
    assert QuantSpec("uaq", 4).to_json() == {"method": "uaq", "w_bits": 4}
    config = QuantConfig.uniform(UNITS, QuantSpec("uaq", 4)).with_layers({UNITS[0]: None})
    activated = config.with_a_bits(6)
    assert activated[UNITS[0]] is None and activated.a_bits == 6 and config.a_bits is None
    assert QuantConfig.loads(activated.dumps()) == activated and activated.fingerprint != config.fingerprint
    assert activated.with_a_bits(None) == config
    for a_bits in (1, 9, 6.0, 16):
        with pytest.raises(UnsupportedSpecError, match="activation bit width"):
            QuantSpec("uaq", 4, a_bits=a_bits)
    mixed = activated.with_layers({UNITS[1]: QuantSpec("uaq", 4, 8)})
    with pytest.raises(UnsupportedSpecError, match="mixes activation bit widths"):
        _ = mixed.a_bits


def test_spec_key_roundtrip():
    assert QuantSpec.parse("kmeans_a-3") == QuantSpec("kmeans_a", 3)
    assert QuantSpec("uaq", 4).key == "uaq-4"
    with pytest.raises(UnsupportedSpecError, match="expected '<method>-<bits>"):
        QuantSpec.parse("uaq4")


def test_json_roundtrip_and_fingerprint(tmp_path):
    cfg = QuantConfig({UNITS[0]: QuantSpec("uaq", 4), UNITS[1]: QuantSpec("kmeans_c", 3),
                       UNITS[2]: None, UNITS[3]: QuantSpec("kmeans_a", 4)})
    again = QuantConfig.loads(cfg.dumps())
    assert again == cfg and again.fingerprint == cfg.fingerprint
    cfg.save(tmp_path / "c.json")
    assert QuantConfig.load(tmp_path / "c.json") == cfg
    # insertion order does not change the fingerprint; a different spec does
    assert QuantConfig(dict(reversed(list(cfg.items())))).fingerprint == cfg.fingerprint
    assert cfg.with_layers({UNITS[2]: QuantSpec("uaq", 3)}).fingerprint != cfg.fingerprint
    assert len(cfg.fingerprint) == 16


def test_corrupt_json_is_refused():
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        QuantConfig.loads("{")
    with pytest.raises(CorruptFileError, match="format='qsd.QuantConfig'"):
        QuantConfig.loads(json.dumps({"layers": {}}))
    bad = QuantConfig.uniform(UNITS, None).to_json()
    bad["layers"][UNITS[0]] = {"method": "uaq", "w_bits": 9}
    with pytest.raises(UnsupportedSpecError):
        QuantConfig.from_json(bad)


def test_validate_unknown_layer_suggests_closest():
    cfg = QuantConfig.uniform(UNITS[:-1] + ["proj_outt"], None)
    with pytest.raises(UnknownLayerError, match=r"'proj_outt' \(closest: proj_out"):
        cfg.validate(UNITS)


def test_validate_missing_layers():
    with pytest.raises(MissingLayerError, match="leaves 1 of 4 units unassigned"):
        QuantConfig.uniform(UNITS[:-1], None).validate(UNITS)


def test_validate_other_model():
    other = QuantConfig.uniform([f"down_blocks.{i}.conv" for i in range(6)], QuantSpec("uaq", 4))
    with pytest.raises(ModelMismatchError, match="built for another model"):
        other.validate(UNITS)


def test_validate_unsupported_option():
    cfg = QuantConfig.uniform(UNITS, QuantSpec("uaq", 2))
    with pytest.raises(UnsupportedSpecError, match="did not precompute; available: uaq-3, uaq-4"):
        cfg.validate(UNITS, [QuantSpec("uaq", 4), QuantSpec("uaq", 3)])


def test_config_is_immutable():
    cfg = QuantConfig.uniform(UNITS, None)
    with pytest.raises(TypeError):
        cfg[UNITS[0]] = QuantSpec("uaq", 4)
    with pytest.raises(UnknownLayerError, match="closest"):
        cfg["blocks.0.attn.to_qq"]


def test_shared_spec_is_the_spec_of_a_uniform_config():
    spec = QuantSpec("kmeans_c", 3)
    assert QuantConfig.uniform(UNITS, spec).shared_spec() == spec
    assert QuantConfig.uniform(UNITS, spec).with_a_bits(6).shared_spec() == QuantSpec("kmeans_c", 3, 6)
    assert QuantConfig.uniform(UNITS, None).shared_spec() is None
    assert QuantConfig.uniform(UNITS, spec).with_layers({UNITS[0]: None}).shared_spec() is None
    assert QuantConfig.uniform(UNITS, spec).with_layers({UNITS[0]: QuantSpec("uaq", 3)}).shared_spec() is None
