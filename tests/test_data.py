import gzip
import shutil

import pytest
import torch

from ddpmlab import cli
from ddpmlab.data import DEBIAN_DIR, DataError, find_fashion_mnist, load_fashion_mnist, to_model_range, to_uint8


def test_real_fashion_mnist_loads_as_uint8_tensors():
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 1, 28, 28)
    assert train.labels.dtype == torch.int64 and set(train.labels.unique().tolist()) == set(range(10))
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    x = to_model_range(train.images[:10])
    assert x.min() >= -1 and x.max() <= 1
    assert torch.equal(to_uint8(x), train.images[:10])


@pytest.fixture
def data_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    src = find_fashion_mnist(download=False)
    d = tmp_path / "fm"
    shutil.copytree(src, d)
    return d


def test_missing_file_names_it(data_copy):
    (data_copy / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.*missing.*fix"):
        load_fashion_mnist("test", data_copy)


def test_truncated_file_names_it(data_copy):
    p = data_copy / "t10k-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:100000])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz is truncated or corrupt"):
        load_fashion_mnist("test", data_copy)


def test_corrupt_file_fails_checksum(data_copy):
    p = data_copy / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(p.read_bytes()))
    raw[-1] ^= 1
    p.unlink()
    (data_copy / "t10k-labels-idx1-ubyte").write_bytes(bytes(raw))   # uncompressed copies are accepted too
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte is corrupt: SHA-256 mismatch"):
        load_fashion_mnist("test", data_copy)


def test_cli_data_error_is_one_line_exit_2(data_copy, capsys):
    (data_copy / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    assert cli.main(["data", "--data-dir", str(data_copy)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train-images-idx3-ubyte.gz" in err and "Traceback" not in err


def test_cli_data_reports_location(capsys):
    assert cli.main(["data"]) == 0
    out = capsys.readouterr().out
    assert "SHA-256 verified" in out and "60000 train" in out


def test_search_order(data_copy, monkeypatch, tmp_path):
    assert find_fashion_mnist(data_copy) == data_copy                  # --data-dir first
    monkeypatch.setenv("DDPMLAB_DATA", str(data_copy))
    assert find_fashion_mnist(tmp_path / "empty") == data_copy         # then $DDPMLAB_DATA
    monkeypatch.delenv("DDPMLAB_DATA")
    if (DEBIAN_DIR / "train-images-idx3-ubyte.gz").exists():
        assert find_fashion_mnist(None) == DEBIAN_DIR                  # the cache is empty here
