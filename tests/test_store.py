"""The results store (crash-safe SQLite, protocol guard, exports) and the original-format import."""

import os
import pickle

import numpy as np
import pandas as pd
import pytest

from qsd.config import QuantConfig, QuantSpec
from qsd.errors import CorruptFileError, MissingFileError, ProtocolMismatchError
from qsd.reference.original_format import UnsafePickleError, import_original, safe_load_pickle
from qsd.store import LabelRecord, LabelStore

PROTOCOL = {"model_id": "tiny_pixart", "n_images": 16, "steps": 4, "guidance": 3.0, "noise_seed": 0}
UNITS = ["blocks.0.attn.to_q", "blocks.0.ff.net.2"]


def record(i: int, fid: float = 10.0) -> LabelRecord:
    spec = QuantSpec("uaq", 3 + i % 2)
    config = QuantConfig({UNITS[0]: spec, UNITS[1]: QuantSpec("kmeans_c", 3 + (i // 2) % 2)})
    return LabelRecord(config, "random", f"random {i}", {"fid": fid + i, "avg_bits": 3.5}, {"device": "cpu"}, i)


def test_rows_are_keyed_by_configuration_and_never_duplicated(tmp_path):
    with LabelStore(tmp_path / "labels.sqlite", PROTOCOL) as store:
        assert store.add(record(0)) and store.add(record(1))
        assert not store.add(record(0, fid=99.0)), "a second label of the same configuration must be refused"
        assert len(store) == 2 and record(1).fingerprint in store
        frame = store.to_pandas()
    assert frame["fid"].tolist() == [10.0, 11.0]
    assert QuantConfig.loads(frame["config"][1]) == record(1).config
    with LabelStore(tmp_path / "labels.sqlite") as reopened:  # read back under the stored protocol
        assert reopened.protocol == PROTOCOL and len(reopened) == 2


def test_protocol_mismatch_is_refused_and_names_the_difference(tmp_path):
    LabelStore(tmp_path / "labels.sqlite", PROTOCOL).close()
    with pytest.raises(ProtocolMismatchError, match=r"steps: 4 -> 20"):
        LabelStore(tmp_path / "labels.sqlite", PROTOCOL | {"steps": 20})
    with LabelStore(tmp_path / "labels.sqlite", dict(reversed(PROTOCOL.items()))) as same:  # key order is irrelevant
        assert len(same) == 0


def test_exports_and_dataset_card(tmp_path):
    with LabelStore(tmp_path / "labels.sqlite", PROTOCOL) as store:
        store.add_many(record(i) for i in range(4))
        csv = pd.read_csv(store.to_csv(tmp_path / "labels.csv"))
        parquet = pd.read_parquet(store.to_parquet(tmp_path / "labels.parquet"))
        card = store.summary()
    assert len(csv) == len(parquet) == 4 and list(parquet["fid"]) == [10.0, 11.0, 12.0, 13.0]
    assert card["rows"] == 4 and card["by_kind"] == {"random": 4}
    assert card["fid_range"] == [10.0, 13.0] and card["avg_bits_range"] == [3.5, 3.5]


def test_uniform_rows_carry_their_method_and_bits_as_columns(tmp_path):
    """`to_pandas` derives `method` and `w_bits` from each configuration (uniform rows only); the exports hold the
    stored columns."""
    uniform = LabelRecord(QuantConfig.uniform(UNITS, QuantSpec("kmeans_a", 4)), "uniform", "uniform kmeans_a-4", {})
    floating = LabelRecord(QuantConfig.uniform(UNITS, None), "float", "float", {})
    with LabelStore(tmp_path / "labels.sqlite", PROTOCOL) as store:
        store.add_many([uniform, floating, record(0)])
        frame = store.to_pandas()
        csv = pd.read_csv(store.to_csv(tmp_path / "labels.csv"))
    assert frame["method"].iloc[0] == "kmeans_a" and frame["method"].isna().tolist() == [False, True, True]
    assert frame["w_bits"].iloc[0] == 4 and frame["w_bits"].isna().tolist() == [False, True, True]
    assert list(csv.columns) == list(frame.columns[:-2]) and {"method", "w_bits"}.isdisjoint(csv.columns)


def test_bad_inputs_get_clear_errors(tmp_path):
    with pytest.raises(MissingFileError, match="no label dataset"):
        LabelStore(tmp_path / "missing.sqlite")
    (tmp_path / "junk.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CorruptFileError, match="not a qsd label dataset"):
        LabelStore(tmp_path / "junk.sqlite", PROTOCOL)
    with pytest.raises(Exception, match="unknown metric"):
        LabelRecord(record(0).config, "random", "x", {"fidd": 1.0})


def original_entries() -> list[dict]:
    options = ["mse-4", "kmeans-3", "kmeans_all-4"]
    return [{"config": {UNITS[0]: ["kmeans_all-3", 4096, 1600, 0.01], UNITS[1]: [options[i], 8192, 2100, 0.002]},
             "FID-GT-1k": np.float64(25.5 + i), "avg_bits": 3.4 + i / 10, "quantized_size": 3700 + i,
             "quantized_error": 0.012, "bops": 1.5, "architecture": "alpha"} for i in range(3)]


def test_original_format_import(tmp_path):
    path = tmp_path / "quant_cache.pkl"
    path.write_bytes(pickle.dumps(original_entries()))
    store = import_original(path, tmp_path / "imported.sqlite", "pixart_alpha")
    frame = store.to_pandas()
    assert list(frame["fid"]) == [25.5, 26.5, 27.5] and list(frame["quantized_bytes"]) == [3700, 3701, 3702]
    config = QuantConfig.loads(frame["config"][0])
    assert config[UNITS[0]] == QuantSpec("kmeans_a", 3) and config[UNITS[1]] == QuantSpec("uaq", 4)
    assert QuantConfig.loads(frame["config"][1])[UNITS[1]] == QuantSpec("kmeans_c", 3)
    assert set(frame["kind"]) == {"imported"}
    store.close()
    again = import_original(path, tmp_path / "imported.sqlite", "pixart_alpha")
    assert len(again) == 3, "importing the same file twice adds nothing"


class Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_malicious_pickle_is_refused_before_it_runs(tmp_path):
    exploit = Exploit()
    exploit.target = tmp_path / "pwned"
    payload = pickle.dumps([{"config": {}, "FID-GT-1k": 1.0, "x": exploit}])
    with pytest.raises(UnsafePickleError, match="os|posix"):
        safe_load_pickle(payload)
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "bad.pkl").write_bytes(payload)
    with pytest.raises(UnsafePickleError):
        import_original(tmp_path / "bad.pkl", tmp_path / "x.sqlite", "pixart_alpha")
    with pytest.raises(CorruptFileError, match="not a readable pickle"):
        safe_load_pickle(payload[:20])
