"""qsd.files: the one atomic write and the one tensor digest."""

import json

import pytest
import torch

from qsd.files import atomic_write, tensor_digest, write_json


def test_atomic_write_replaces_the_file_only_when_the_writer_finished(tmp_path):
    path = tmp_path / "deep" / "labels.json"
    write_json(path, {"b": 1, "a": [1, 2]})
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1}

    def interrupted(tmp):
        tmp.write_text("half a fi")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, interrupted)
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1}, "the previous file survives"
    assert sorted(p.name for p in path.parent.iterdir()) == ["labels.json"], "no temporary file is left"


def test_tensor_digest_sees_names_dtypes_shapes_and_bytes():
    weight = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    base = tensor_digest([("w", weight)])
    assert base == tensor_digest([("w", weight.clone())])
    assert base == tensor_digest([("w", weight.t().contiguous().t())]), "layout in memory does not matter"
    variants = [[("v", weight)], [("w", weight.double())], [("w", weight.reshape(3, 2))],
                [("w", weight + torch.tensor(1e-7))], [("w", weight), ("w", weight)]]
    assert len({base, *(tensor_digest(v) for v in variants)}) == 1 + len(variants)
