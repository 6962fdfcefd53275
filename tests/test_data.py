"""Loaders, parsers and downloader of fedlib.data, on tiny files written by the tests."""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fedlib import data as fd
from fedlib.data import download as dl
from fedlib.data.parsers import (DataFormatError, UnsafePickleError, read_cifar_batch,
                                 read_idx, restricted_loads)

RNG = np.random.default_rng(1234)


# ----------------------------------------------------------------------------- helpers

def idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    """Encode ``arr`` as an IDX file (big-endian dims and payload)."""
    dt = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    head = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    return head + np.asarray(arr, dtype=dt).tobytes()


def write(path: Path, payload: bytes, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def write_idx_set(root: Path, folder: str, n_train: int, n_test: int, *, gz: bool = True,
                  prefix=("train", "t10k"), num_classes: int = 10, side: int = 28,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Write a tiny IDX dataset; return the arrays written (as stored on disk)."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in zip(prefix, (n_train, n_test)):
        x = rng.integers(0, 256, size=(n, side, side), dtype=np.uint8)
        y = (np.arange(n) % num_classes).astype(np.uint8)
        write(root / folder / "raw" / f"{split}-images-idx3-ubyte", idx_bytes(x), gz)
        write(root / folder / "raw" / f"{split}-labels-idx1-ubyte", idx_bytes(y), gz)
        out[split] = (x, y)
    return out


def cifar_batch(n: int, seed: int = 0, labels_as: str = "list") -> dict:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n)
    lab = [int(v) for v in labels] if labels_as == "list" else labels.astype(np.int64)
    return {b"batch_label": b"test batch", b"data": data, b"labels": lab,
            b"filenames": [b"f%d.png" % i for i in range(n)]}


def write_cifar(root: Path, n: int = 4, protocol: int = pickle.DEFAULT_PROTOCOL) -> dict:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for i, fname in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        b = cifar_batch(n + i, seed=i)
        (folder / fname).write_bytes(pickle.dumps(b, protocol=protocol))
        batches[fname] = b
    return batches


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """cwd = an empty dir outside any repo, no $FEDLIB_DATA, a clean parse cache."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("FEDLIB_DATA", raising=False)
    fd.clear_cache()
    yield tmp_path
    fd.clear_cache()


# ----------------------------------------------------------------------------- IDX loaders

@pytest.mark.parametrize("gz", [True, False])
def test_mnist_loads_gz_and_raw(isolated, gz):
    root = isolated / "d"
    arrays = write_idx_set(root, "MNIST", 12, 7, gz=gz)
    train, test = fd.load("mnist", root=root)
    assert isinstance(train, fd.Dataset) and train.name == "mnist" and train.num_classes == 10
    assert train.x.shape == (12, 1, 28, 28) and test.x.shape == (7, 1, 28, 28)
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    assert len(train) == 12 and len(test) == 7
    x, y = arrays["train"]
    assert torch.equal(train.x[:, 0], torch.from_numpy(x).float() / 255)
    assert torch.equal(train.y, torch.from_numpy(y).long())
    assert 0.0 <= train.x.min() and train.x.max() <= 1.0


def test_fashion_mnist_layout_and_mixed_compression(isolated):
    root = isolated / "d"
    arrays = write_idx_set(root, "FashionMNIST", 5, 3, gz=False)
    # compress one file only: both spellings must be found
    p = root / "FashionMNIST/raw/t10k-labels-idx1-ubyte"
    p.with_name(p.name + ".gz").write_bytes(gzip.compress(p.read_bytes()))
    p.unlink()
    train, test = fd.load("fashion-mnist", root=root)
    assert len(train) == 5 and len(test) == 3
    assert torch.equal(test.y, torch.from_numpy(arrays["t10k"][1]).long())
    assert fd.load("Fashion_MNIST", root=root)[0].name == "fashion-mnist"   # alias spelling


def test_emnist_balanced_is_transposed(isolated):
    root = isolated / "d"
    rng = np.random.default_rng(3)
    upright = rng.integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    upright[:, :5, :] = 255                                  # a bar at the top
    y = np.array([0, 46, 10, 20, 30, 40], dtype=np.uint8)
    raw = root / "EMNIST" / "raw"
    for split in ("train", "test"):
        write(raw / f"emnist-balanced-{split}-images-idx3-ubyte",
              idx_bytes(upright.transpose(0, 2, 1)), gz=True)    # stored transposed
        write(raw / f"emnist-balanced-{split}-labels-idx1-ubyte", idx_bytes(y), gz=True)
    train, test = fd.load("emnist-balanced", root=root)
    assert train.num_classes == 47 and train.x.shape == (6, 1, 28, 28)
    assert torch.equal(train.x[:, 0], torch.from_numpy(upright).float() / 255)
    assert torch.all(train.x[:, 0, :5, :] == 1.0)            # bar at the top, as in MNIST
    assert train.y.tolist() == y.tolist()


def test_read_idx_other_dtypes_and_native_order(tmp_path):
    arr = np.array([[1, -2], [300, -40000]], dtype=np.int32)
    p = write(tmp_path / "a-idx2-int", idx_bytes(arr, 0x0C), gz=False)
    out = read_idx(p)
    assert out.dtype == np.int32 and out.dtype.isnative and np.array_equal(out, arr)
    f = np.array([0.5, -1.25], dtype=np.float64)
    assert np.array_equal(read_idx(write(tmp_path / "f", idx_bytes(f, 0x0E), gz=True)), f)


# ----------------------------------------------------------------------------- malformed IDX

def _good_labels(n=10) -> bytes:
    return idx_bytes(np.arange(n, dtype=np.uint8) % 10)


@pytest.mark.parametrize("case, payload, gz, match", [
    ("truncated", _good_labels()[:-3], False, "truncated"),
    ("trailing", _good_labels() + b"\x00\x01", False, "trailing"),
    ("magic", b"\x01\x00" + _good_labels()[2:], False, "magic"),
    ("dtype", b"\x00\x00\x07\x01" + _good_labels()[4:], False, "type code"),
    ("zero-dim", b"\x00\x00\x08\x00", False, "0 dimensions"),
    ("short-header", b"\x00\x00\x08\x03\x00\x00", False, "header"),
    ("tiny", b"\x00\x00", False, "too short"),
    ("truncated-gz", gzip.compress(_good_labels())[:-6], "raw", "gzip"),
    ("not-gzip", _good_labels(), "raw-as-gz", "gzip"),
    ("garbled-gz", b"\x1f\x8b" + b"garbage" * 5, "raw-as-gz", "gzip"),
    ("truncated-in-gz", _good_labels()[:-1], True, "truncated"),
])
def test_malformed_idx_raises_naming_file(tmp_path, case, payload, gz, match):
    name = "labels-idx1-ubyte"
    if gz == "raw":                       # payload is already (broken) gzip data
        path = tmp_path / (name + ".gz")
        path.write_bytes(payload)
    elif gz == "raw-as-gz":
        path = tmp_path / (name + ".gz")
        path.write_bytes(payload)
    else:
        path = write(tmp_path / name, payload, gz=bool(gz))
    with pytest.raises(DataFormatError, match=match) as info:
        read_idx(path)
    assert path.name in str(info.value)
    assert isinstance(info.value, ValueError)


def test_idx_expected_ndim_and_dtype(tmp_path):
    p = write(tmp_path / "x", idx_bytes(np.zeros((2, 3, 3), np.uint8)), gz=False)
    with pytest.raises(DataFormatError, match="1-D"):
        read_idx(p, ndim=1)
    q = write(tmp_path / "y", idx_bytes(np.zeros(4, np.int16), 0x0B), gz=False)
    with pytest.raises(DataFormatError, match="uint8"):
        read_idx(q, dtype=np.uint8)


def test_image_label_count_mismatch(isolated):
    root = isolated / "d"
    write_idx_set(root, "MNIST", 5, 3)
    write(root / "MNIST/raw/t10k-labels-idx1-ubyte", _good_labels(4), gz=True)
    with pytest.raises(DataFormatError, match="3 images but .* 4 labels"):
        fd.load("mnist", root=root)


def test_labels_out_of_range(isolated):
    root = isolated / "d"
    write_idx_set(root, "MNIST", 5, 3)
    write(root / "MNIST/raw/t10k-labels-idx1-ubyte",
          idx_bytes(np.array([0, 1, 10], np.uint8)), gz=True)
    with pytest.raises(DataFormatError, match="0..9"):
        fd.load("mnist", root=root)


def test_images_file_with_wrong_rank(isolated):
    root = isolated / "d"
    write_idx_set(root, "MNIST", 5, 3)
    write(root / "MNIST/raw/train-images-idx3-ubyte", idx_bytes(np.zeros((5, 784), np.uint8)),
          gz=True)
    with pytest.raises(DataFormatError, match="train-images-idx3-ubyte.gz.*3-D"):
        fd.load("mnist", root=root)


# ----------------------------------------------------------------------------- CIFAR

@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_loads_channel_major(isolated, protocol):
    root = isolated / "d"
    batches = write_cifar(root, n=3, protocol=protocol)
    train, test = fd.load("cifar10", root=root)
    assert train.x.shape == (3 + 4 + 5 + 6 + 7, 3, 32, 32) and test.x.shape == (8, 3, 32, 32)
    b = batches["data_batch_1"]
    c, h, w = 2, 5, 7
    assert train.x[1, c, h, w] == b[b"data"][1, c * 1024 + h * 32 + w] / 255
    assert train.y[:3].tolist() == b[b"labels"]
    assert test.y.tolist() == batches["test_batch"][b"labels"]
    assert train.num_classes == 10 and train.name == "cifar10"


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_cifar_numpy_labels_and_scalars(tmp_path, protocol):
    """numpy label arrays/scalars and protocol-0/2 bytes (_codecs.encode) are admitted."""
    b = cifar_batch(4, labels_as="numpy")
    b[b"extra"] = np.int64(7)                            # multiarray.scalar
    p = tmp_path / "batch"
    p.write_bytes(pickle.dumps(b, protocol=protocol))
    x, y = read_cifar_batch(p)
    assert x.shape == (4, 3, 32, 32) and x.dtype == np.uint8
    assert y.dtype == np.int64 and np.array_equal(y, b[b"labels"])


def _bad_batches():
    good = cifar_batch(3)
    cases = {
        "missing-key": ({b"data": good[b"data"]}, "missing keys"),
        "shape": ({b"data": good[b"data"][:, :100], b"labels": good[b"labels"]}, "3072"),
        "dtype": ({b"data": good[b"data"].astype(np.float32), b"labels": good[b"labels"]},
                  "uint8"),
        "not-array": ({b"data": [1, 2, 3], b"labels": [1, 2, 3]}, "uint8"),
        "range": ({b"data": good[b"data"], b"labels": [0, 1, 10]}, "0..9"),
        "count": ({b"data": good[b"data"], b"labels": [0, 1]}, "3 images but 2 labels"),
        "not-dict": ([good[b"data"]], "dict"),
        "str-keys": ({"data": good[b"data"], "labels": good[b"labels"]}, "missing keys"),
    }
    return [pytest.param(obj, m, id=k) for k, (obj, m) in cases.items()]


@pytest.mark.parametrize("obj, match", _bad_batches())
def test_cifar_bad_content(tmp_path, obj, match):
    p = tmp_path / "data_batch_1"
    p.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(DataFormatError, match=match) as info:
        read_cifar_batch(p)
    assert "data_batch_1" in str(info.value)


@pytest.mark.parametrize("cut", [1, 100, 5000])
def test_cifar_truncated_pickle(tmp_path, cut):
    p = tmp_path / "test_batch"
    p.write_bytes(pickle.dumps(cifar_batch(3), protocol=4)[:-cut])
    with pytest.raises(DataFormatError, match="test_batch"):
        read_cifar_batch(p)


class _Evil:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _EvilEval:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_malicious_pickle_refused_and_not_executed(isolated, protocol):
    marker = isolated / "pwned"
    payload = pickle.dumps({b"data": _Evil(f"touch {marker}"), b"labels": [0]},
                           protocol=protocol)
    assert b"system" in payload                          # it really would call os.system
    root = isolated / "d"
    write_cifar(root, n=2)
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(payload)
    with pytest.raises(pickle.UnpicklingError, match="forbidden global") as info:
        fd.load("cifar10", root=root)
    assert "data_batch_3" in str(info.value)
    assert isinstance(info.value, UnsafePickleError) and isinstance(info.value, ValueError)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):
        restricted_loads(pickle.dumps(_EvilEval(), protocol=protocol))
    with pytest.raises(pickle.UnpicklingError):                 # a class, not only calls
        restricted_loads(pickle.dumps(io.BytesIO, protocol=protocol))


def test_restricted_unpickler_allows_plain_containers():
    obj = {b"a": [1, 2.5, (b"x", None, True)], b"b": np.arange(6, dtype=np.uint8).reshape(2, 3)}
    out = restricted_loads(pickle.dumps(obj, protocol=4))
    assert out[b"a"] == obj[b"a"] and np.array_equal(out[b"b"], obj[b"b"])


# ----------------------------------------------------------------------------- in-memory sets

def test_synthetic():
    train, test = fd.load("synthetic")
    assert train.x.shape == (50_000, 2) and test.x.shape == (5_000, 2)
    assert train.x.dtype == torch.float32 and train.num_classes == 2
    # y = 1 iff ‖x‖₂ > √2 (Sinha et al.); margin and class balance: tests/test_synthetic.py
    for ds in (train, test):
        norms = ds.x.double().norm(dim=1)
        assert torch.equal(ds.y, (norms > math.sqrt(2)).long())
    assert abs(train.x.mean().item()) < 0.03
    again, _ = fd.load("synthetic")
    assert torch.equal(again.x, train.x) and torch.equal(again.y, train.y)
    assert not torch.equal(test.x, train.x[:5000])


def test_digits():
    train, test = fd.load("digits")
    assert len(train) + len(test) == 1797
    assert abs(len(train) / 1797 - 0.8) < 0.01
    assert train.x.shape[1:] == (1, 8, 8) and train.num_classes == 10
    assert train.x.min() >= 0 and train.x.max() <= 1 and train.x.max() == 1
    assert set(train.y.tolist()) == set(range(10)) == set(test.y.tolist())
    again, test2 = fd.load("digits")
    assert torch.equal(again.x, train.x) and torch.equal(test2.y, test.y)
    # the split is a partition of sklearn's digits: multiset of rows adds up
    from sklearn.datasets import load_digits
    ref = np.sort(load_digits().images.reshape(1797, -1) / 16, axis=0)
    both = torch.cat([train.x, test.x]).reshape(1797, -1).double().numpy()
    assert np.allclose(np.sort(both, axis=0), ref)


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'.*mnist"):
        fd.load("imagenet")


# ----------------------------------------------------------------------------- Dataset

def test_dataset_subset_and_validation():
    ds = fd.Dataset(torch.arange(20, dtype=torch.float32).reshape(10, 2),
                    torch.arange(10) % 3, 3, "toy")
    for idx in (np.array([1, 3, 5]), torch.tensor([1, 3, 5]), [1, 3, 5]):
        sub = ds.subset(idx)
        assert len(sub) == 3 and sub.y.tolist() == [1, 0, 2] and sub.num_classes == 3
        assert sub.name == "toy"
    assert len(ds.subset(np.array([], dtype=np.int64))) == 0
    assert len(ds.subset([])) == 0
    assert ds.subset(ds.y == 0).y.tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError):
        ds.subset(np.array([0.5]))
    with pytest.raises(AttributeError):                  # frozen dataclass
        ds.name = "other"
    with pytest.raises(ValueError, match="float32"):
        fd.Dataset(torch.zeros(3, 2, dtype=torch.float64), torch.zeros(3, dtype=torch.long),
                   2, "bad")
    with pytest.raises(ValueError, match="int64"):
        fd.Dataset(torch.zeros(3, 2), torch.zeros(3, dtype=torch.int32), 2, "bad")
    with pytest.raises(ValueError, match="rows"):
        fd.Dataset(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long), 2, "bad")


# ----------------------------------------------------------------------------- search & cache

def test_missing_files_message(isolated):
    empty = isolated / "nothing-here"
    with pytest.raises(FileNotFoundError) as info:
        fd.load("mnist", root=empty)
    msg = str(info.value)
    assert "MNIST/raw/train-images-idx3-ubyte[.gz]" in msg
    assert "MNIST/raw/t10k-labels-idx1-ubyte[.gz]" in msg
    assert str(empty) in msg and str(isolated / "cwd" / "data") in msg
    assert "make data" in msg and "python -m fedlib.data.download mnist --root" in msg
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py/test_batch"):
        fd.load("cifar10", root=empty)


def test_partial_set_is_missing(isolated):
    root = isolated / "d"
    write_idx_set(root, "MNIST", 4, 4)
    (root / "MNIST/raw/t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError) as info:
        fd.load("mnist", root=root)
    assert "t10k-images-idx3-ubyte[.gz]" in str(info.value)
    assert "train-images" not in str(info.value).split("\n")[0]


def test_search_order(isolated, monkeypatch):
    arg, env, cwd_data = isolated / "arg", isolated / "env", isolated / "cwd" / "data"
    write_idx_set(arg, "MNIST", 3, 2)
    write_idx_set(env, "MNIST", 4, 2)
    write_idx_set(cwd_data, "MNIST", 5, 2)
    assert len(fd.load("mnist")[0]) == 5                  # ./data
    monkeypatch.setenv("FEDLIB_DATA", str(env))
    assert len(fd.load("mnist")[0]) == 4                  # $FEDLIB_DATA before ./data
    assert len(fd.load("mnist", root=arg)[0]) == 3        # root argument first
    assert len(fd.load("mnist", root=isolated / "missing")[0]) == 4   # then falls back
    roots = fd.search_roots(arg)
    assert roots[:3] == [arg.resolve(), env.resolve(), cwd_data.resolve()]
    assert fd.data_root() == env.resolve() and fd.data_root(arg) == arg.resolve()


def test_repo_root_data_found_from_subdirectory(isolated, monkeypatch):
    repo = isolated / "repo"
    (repo / "fedlib").mkdir(parents=True)
    (repo / "pyproject.toml").write_text("[project]\nname='x'\n")
    (repo / "notebooks" / "deep").mkdir(parents=True)
    write_idx_set(repo / "data", "FashionMNIST", 6, 2)
    monkeypatch.chdir(repo / "notebooks" / "deep")
    assert fd.repo_root() == repo.resolve()
    assert len(fd.load("fashion-mnist")[0]) == 6
    assert fd.data_root() == (repo / "data").resolve()
    assert fd.search_roots()[-1] == (repo / "data").resolve()


def test_data_root_without_anything(isolated):
    assert fd.repo_root() is None
    assert fd.data_root() == (isolated / "cwd" / "data").resolve()


def test_cache_returns_fresh_tensors_and_sees_file_changes(isolated):
    root = isolated / "d"
    write_idx_set(root, "MNIST", 4, 2, seed=0)
    a, _ = fd.load("mnist", root=root)
    ref = a.x.clone()
    a.x.zero_()                                           # caller mutates its copy
    b, _ = fd.load("mnist", root=root)
    assert torch.equal(b.x, ref)
    write_idx_set(root, "MNIST", 9, 2, seed=1)            # rewritten on disk
    c, _ = fd.load("mnist", root=root)
    assert len(c) == 9


# ----------------------------------------------------------------------------- downloader

def _md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def _remote_mnist(src: Path, good_md5: bool = True) -> tuple[dl.Resource, ...]:
    """Tiny gzip IDX files served as file:// URLs, in the downloader's table format."""
    rng = np.random.default_rng(5)
    files = {
        "train-images-idx3-ubyte.gz": idx_bytes(rng.integers(0, 256, (6, 28, 28), np.uint8)),
        "train-labels-idx1-ubyte.gz": idx_bytes(np.arange(6, dtype=np.uint8)),
        "t10k-images-idx3-ubyte.gz": idx_bytes(rng.integers(0, 256, (2, 28, 28), np.uint8)),
        "t10k-labels-idx1-ubyte.gz": idx_bytes(np.arange(2, dtype=np.uint8)),
    }
    src.mkdir(parents=True, exist_ok=True)
    out = []
    for name, payload in files.items():
        blob = gzip.compress(payload, mtime=0)
        (src / name).write_bytes(blob)
        md5 = _md5(blob) if good_md5 else "0" * 32
        out.append(dl.Resource(name, md5, ((src / name).as_uri(),), "MNIST/raw"))
    return tuple(out)


def test_download_success_then_load(isolated, monkeypatch):
    monkeypatch.setitem(dl.RESOURCES, "mnist", _remote_mnist(isolated / "remote"))
    dest = isolated / "d"
    assert dl.download(["mnist"], root=dest, quiet=True) == dest.resolve()
    raw = dest / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(
        r.filename for r in dl.RESOURCES["mnist"])       # no temp files left
    train, test = fd.load("mnist", root=dest)
    assert len(train) == 6 and len(test) == 2


def test_load_download_true_fetches_missing(isolated, monkeypatch):
    monkeypatch.setitem(dl.RESOURCES, "mnist", _remote_mnist(isolated / "remote"))
    dest = isolated / "fresh"
    with pytest.raises(FileNotFoundError):
        fd.load("mnist", root=dest)
    train, _ = fd.load("mnist", root=dest, download=True)
    assert len(train) == 6 and (dest / "MNIST/raw/train-images-idx3-ubyte.gz").is_file()


def test_download_checksum_mismatch(isolated, monkeypatch):
    res = _remote_mnist(isolated / "remote", good_md5=False)
    monkeypatch.setitem(dl.RESOURCES, "mnist", res)
    dest = isolated / "d"
    with pytest.raises(dl.ChecksumError) as info:
        dl.download(["mnist"], root=dest, quiet=True)
    msg = str(info.value)
    actual = dl.md5sum(isolated / "remote" / "train-images-idx3-ubyte.gz")
    assert "train-images-idx3-ubyte.gz" in msg and "0" * 32 in msg and actual in msg
    assert list((dest / "MNIST" / "raw").iterdir()) == []    # temp file deleted


def test_download_skips_present_and_replaces_bad(isolated, monkeypatch):
    res = _remote_mnist(isolated / "remote")
    dest = isolated / "d"
    raw = dest / "MNIST" / "raw"
    raw.mkdir(parents=True)
    good = (isolated / "remote" / res[0].filename).read_bytes()
    (raw / res[0].filename).write_bytes(good)
    (raw / res[1].filename).write_bytes(b"stale")           # wrong checksum: fetched again
    gone = isolated / "gone" / "x.gz"
    patched = (dl.Resource(res[0].filename, res[0].md5, (gone.as_uri(),), "MNIST/raw"),
               *res[1:])
    monkeypatch.setitem(dl.RESOURCES, "mnist", patched)
    dl.download(["mnist"], root=dest, quiet=True)            # the dead URL is never hit
    assert (raw / res[0].filename).read_bytes() == good
    assert dl.md5sum(raw / res[1].filename) == res[1].md5
    # and with the good file absent, the dead URL fails cleanly
    (raw / res[0].filename).unlink()
    with pytest.raises(dl.DownloadError, match=res[0].filename):
        dl.download(["mnist"], root=dest, quiet=True)


def test_download_mirror_fallback(isolated, monkeypatch):
    res = _remote_mnist(isolated / "remote")
    dead = (isolated / "nope" / "f").as_uri()
    monkeypatch.setitem(dl.RESOURCES, "mnist",
                        tuple(dl.Resource(r.filename, r.md5, (dead, *r.urls), r.subdir)
                              for r in res))
    dl.download(["mnist"], root=isolated / "d", quiet=True)
    assert len(fd.load("mnist", root=isolated / "d")[0]) == 6


def _tarball(path: Path, members: dict[str, bytes], link: str | None = None) -> bytes:
    with tarfile.open(path, "w:gz") as tar:
        d = tarfile.TarInfo("cifar-10-batches-py")
        d.type = tarfile.DIRTYPE
        tar.addfile(d)
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
        if link:
            info = tarfile.TarInfo("cifar-10-batches-py/link")
            info.type = tarfile.SYMTYPE
            info.linkname = link
            tar.addfile(info)
    return path.read_bytes()


def _cifar_members() -> dict[str, bytes]:
    names = [*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]
    out = {f"cifar-10-batches-py/{n}": pickle.dumps(cifar_batch(2, seed=i), protocol=2)
           for i, n in enumerate(names)}
    out["cifar-10-batches-py/batches.meta"] = pickle.dumps({b"num_vis": 3072}, protocol=2)
    return out


def _cifar_resource(archive: Path) -> tuple[dl.Resource, ...]:
    real = dl.RESOURCES["cifar10"][0]
    return (dl.Resource(real.filename, _md5(archive.read_bytes()), (archive.as_uri(),),
                        "", "cifar-tar", real.produces),)


def test_download_cifar_tarball(isolated, monkeypatch):
    archive = isolated / "remote.tar.gz"
    _tarball(archive, _cifar_members())
    monkeypatch.setitem(dl.RESOURCES, "cifar10", _cifar_resource(archive))
    dest = isolated / "d"
    assert dl.main(["cifar10", "--root", str(dest), "-q"]) == 0
    assert not (dest / "cifar-10-python.tar.gz").exists()     # archive removed
    train, test = fd.load("cifar10", root=dest)
    assert len(train) == 10 and len(test) == 2
    # present now: a second run skips without touching the (deleted) archive URL
    archive.unlink()
    assert dl.main(["cifar10", "--root", str(dest), "-q"]) == 0


@pytest.mark.parametrize("evil", ["../escaped", "/tmp/fedlib-abs-escape",
                                  "cifar-10-batches-py/../../escaped", "link",
                                  "stray/readme.txt"])
def test_download_tarball_refuses_traversal(isolated, monkeypatch, evil):
    members = _cifar_members()
    link = None
    if evil == "link":
        link = "../../escaped"
    else:
        members[evil] = b"owned"
    archive = isolated / "remote.tar.gz"
    _tarball(archive, members, link=link)
    monkeypatch.setitem(dl.RESOURCES, "cifar10", _cifar_resource(archive))
    dest = isolated / "a" / "b" / "d"
    with pytest.raises(ValueError, match="refusing|unsafe|unexpected member"):
        dl.download(["cifar10"], root=dest, quiet=True)
    assert not (dest / "stray").exists()
    assert not (isolated / "a" / "escaped").exists()
    assert not (isolated / "a" / "b" / "escaped").exists()
    assert not Path("/tmp/fedlib-abs-escape").exists()
    assert not (dest / "cifar-10-batches-py" / "data_batch_1").exists()   # nothing extracted
    assert dl.main(["cifar10", "--root", str(dest), "-q"]) == 1


def test_download_emnist_zip_keeps_only_balanced(isolated, monkeypatch):
    archive = isolated / "gzip.zip"
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(archive, "w") as zf:
        for split in ("balanced", "letters"):
            for part in ("train", "test"):
                x = rng.integers(0, 256, (3, 28, 28), np.uint8)
                y = np.array([0, 1, 46 if split == "balanced" else 2], np.uint8)
                zf.writestr(f"gzip/emnist-{split}-{part}-images-idx3-ubyte.gz",
                            gzip.compress(idx_bytes(x)))
                zf.writestr(f"gzip/emnist-{split}-{part}-labels-idx1-ubyte.gz",
                            gzip.compress(idx_bytes(y)))
    real = dl.RESOURCES["emnist-balanced"][0]
    monkeypatch.setitem(dl.RESOURCES, "emnist-balanced", (dl.Resource(
        real.filename, _md5(archive.read_bytes()), (archive.as_uri(),), real.subdir,
        real.extract, real.produces),))
    dest = isolated / "d"
    dl.download(["emnist"], root=dest, quiet=True, keep_archives=True)
    raw = dest / "EMNIST" / "raw"
    names = sorted(p.name for p in raw.iterdir())
    assert names == sorted(["gzip.zip", *(Path(p).name for p in real.produces)])
    train, test = fd.load("emnist-balanced", root=dest)
    assert len(train) == 3 and train.y.tolist() == [0, 1, 46]


def test_download_rejects_generated_sets(isolated):
    with pytest.raises(ValueError, match="nothing to download"):
        dl.download(["synthetic"], root=isolated, quiet=True)
    assert dl.main(["digits", "--root", str(isolated), "-q"]) == 1


def test_download_table_matches_torchvision():
    """The published MD5s (torchvision/datasets/{mnist,cifar}.py)."""
    md5 = {r.filename: r.md5 for r in dl.RESOURCES["mnist"]}
    assert md5["train-images-idx3-ubyte.gz"] == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert md5["t10k-labels-idx1-ubyte.gz"] == "ec29112dd5afa0611ce80d1b7f02629c"
    fmd5 = {r.filename: r.md5 for r in dl.RESOURCES["fashion-mnist"]}
    assert fmd5["train-images-idx3-ubyte.gz"] == "8d4fb7e6c68d591d4c3dfef9ec88bf0d"
    assert dl.RESOURCES["cifar10"][0].md5 == "c58f30108f718f92721af3b95e74349a"
    assert dl.RESOURCES["emnist-balanced"][0].md5 == "58c8d27c78d21e728a6bc7b3cc06412e"
    assert set(dl.DEFAULT_NAMES) == set(dl.RESOURCES)


# ----------------------------------------------------------------------------- resumable downloads
# A local HTTP server on 127.0.0.1 stands in for the dataset hosts.

class _Host:
    """Files served over HTTP on 127.0.0.1, with byte ranges and scripted interruptions."""

    def __init__(self, files: dict[str, bytes], honor_range: bool = True) -> None:
        import http.server
        import threading

        self.files, self.honor_range = files, honor_range
        self.cut: dict[str, int] = {}          # path -> bytes sent before dropping, once
        self.log: list[tuple[str, str | None]] = []
        host = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                host.log.append((self.path, rng))
                blob = host.files.get(self.path)
                if blob is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and host.honor_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(blob):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(blob) - 1}/{len(blob)}")
                else:
                    self.send_response(200)
                body = blob[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = host.cut.pop(self.path, None)
                self.wfile.write(body if cut is None else body[:cut])
                self.wfile.flush()
                if cut is not None:
                    self.close_connection = True

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def host():
    hosts: list[_Host] = []

    def make(files: dict[str, bytes], honor_range: bool = True) -> _Host:
        hosts.append(_Host(files, honor_range))
        return hosts[-1]

    yield make
    for h in hosts:
        h.close()


def _dead_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (connection refused at once)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/gone"


def _one_file(url: str, blob: bytes) -> tuple[dl.Resource, ...]:
    return (dl.Resource("blob.bin", _md5(blob), (url,), "MNIST/raw"),)


def test_download_resumes_interrupted_transfer(isolated, monkeypatch, host):
    blob = RNG.integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    h = host({"/blob.bin": blob})
    h.cut["/blob.bin"] = 120_000
    monkeypatch.setitem(dl.RESOURCES, "mnist", _one_file(h.url("/blob.bin"), blob))
    dest = isolated / "d"
    with pytest.raises(dl.DownloadError, match="resumes"):
        dl.download(["mnist"], root=dest, quiet=True)
    part = dl.part_path(dest / "MNIST/raw/blob.bin")
    assert part.stat().st_size == 120_000 and not (dest / "MNIST/raw/blob.bin").exists()
    dl.download(["mnist"], root=dest, quiet=True)
    assert h.log == [("/blob.bin", None), ("/blob.bin", "bytes=120000-")]
    assert (dest / "MNIST/raw/blob.bin").read_bytes() == blob and not part.exists()


def test_download_restarts_when_range_is_ignored(isolated, monkeypatch, host):
    blob = RNG.integers(0, 256, 5_000, dtype=np.uint8).tobytes()
    h = host({"/blob.bin": blob}, honor_range=False)
    monkeypatch.setitem(dl.RESOURCES, "mnist", _one_file(h.url("/blob.bin"), blob))
    raw = isolated / "d" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    dl.part_path(raw / "blob.bin").write_bytes(blob[:1000])
    dl.download(["mnist"], root=isolated / "d", quiet=True)
    assert h.log == [("/blob.bin", "bytes=1000-")]           # one request, answered in full
    assert (raw / "blob.bin").read_bytes() == blob
    assert sorted(p.name for p in raw.iterdir()) == ["blob.bin"]


@pytest.mark.parametrize("stale", [b"x" * 700, b"y" * 6_000])    # wrong prefix / past the end
def test_download_restarts_a_bad_partial_file(isolated, monkeypatch, host, stale):
    blob = RNG.integers(0, 256, 5_000, dtype=np.uint8).tobytes()
    h = host({"/blob.bin": blob})
    monkeypatch.setitem(dl.RESOURCES, "mnist", _one_file(h.url("/blob.bin"), blob))
    raw = isolated / "d" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    dl.part_path(raw / "blob.bin").write_bytes(stale)
    dl.download(["mnist"], root=isolated / "d", quiet=True)
    assert h.log == [("/blob.bin", f"bytes={len(stale)}-"), ("/blob.bin", None)]
    assert (raw / "blob.bin").read_bytes() == blob
    assert sorted(p.name for p in raw.iterdir()) == ["blob.bin"]


def _served_mnist(h: _Host, src: Path) -> tuple[dl.Resource, ...]:
    """The tiny MNIST of ``_remote_mnist``, served by ``h`` instead of file:// URLs."""
    out = []
    for r in _remote_mnist(src):
        h.files["/" + r.filename] = (src / r.filename).read_bytes()
        out.append(dl.Resource(r.filename, r.md5, (h.url("/" + r.filename),), r.subdir))
    return tuple(out)


def test_ensure_fetches_only_what_no_search_root_holds(isolated, monkeypatch, host):
    h = host({})
    monkeypatch.setitem(dl.RESOURCES, "mnist", _served_mnist(h, isolated / "remote"))
    dead = _dead_url()
    monkeypatch.setitem(dl.RESOURCES, "fashion-mnist", tuple(
        dl.Resource(r.filename, r.md5, (dead,), r.subdir) for r in dl.RESOURCES["fashion-mnist"]))
    env = isolated / "env"
    write_idx_set(env, "FashionMNIST", 3, 2)        # present (non-canonical bytes): never fetched
    monkeypatch.setenv("FEDLIB_DATA", str(env))
    dest = isolated / "d"
    assert dl.ensure(["mnist", "fashion-mnist"], root=dest, quiet=True) == dest.resolve()
    assert sorted(p for p, _ in h.log) == sorted("/" + r.filename for r in dl.RESOURCES["mnist"])
    assert len(fd.load("mnist", root=dest)[0]) == 6
    assert not (dest / "FashionMNIST").exists()
    h.log.clear()
    assert dl.main(["--if-missing", "mnist", "fmnist", "--root", str(dest), "-q"]) == 0
    assert h.log == []                                # everything present: nothing requested


def test_ensure_offline_stops_at_once_naming_every_missing_file(isolated, monkeypatch, capsys):
    import time

    dead = _dead_url()
    for key in ("mnist", "cifar10"):
        monkeypatch.setitem(dl.RESOURCES, key, tuple(
            dl.Resource(r.filename, r.md5, (dead, dead), r.subdir, r.extract, r.produces)
            for r in dl.RESOURCES[key]))
    dest = isolated / "d"
    write_idx_set(dest, "MNIST", 3, 2)
    (dest / "MNIST/raw/t10k-labels-idx1-ubyte.gz").unlink()
    t0 = time.perf_counter()
    with pytest.raises(dl.MissingDatasetsError) as info:
        dl.ensure(["mnist", "cifar10"], root=dest, quiet=True)
    assert time.perf_counter() - t0 < 10
    msg = str(info.value)
    assert "offline" in msg and str(dest.resolve()) in msg and "data/README.md" in msg
    assert "MNIST/raw/t10k-labels-idx1-ubyte[.gz]" in msg
    assert "MNIST/raw/train-images-idx3-ubyte" not in msg          # present: not listed
    for rel in fd.loaders.FILE_DATASETS["cifar10"].files:
        assert rel in msg
    assert not list(dest.rglob("*.part"))
    assert dl.main(["--if-missing", "mnist", "cifar10", "--root", str(dest)]) == 1
    err = capsys.readouterr().err
    assert "error: missing datasets" in err and "cifar-10-batches-py/test_batch" in err


def test_ensure_rejects_generated_and_unknown_names(isolated):
    with pytest.raises(ValueError, match="nothing to download"):
        dl.ensure(["mnist", "digits"], root=isolated, quiet=True)
    with pytest.raises(ValueError, match="unknown dataset"):
        dl.ensure(["mnist", "imagenet"], root=isolated, quiet=True)
    with pytest.raises(ValueError, match="timeout"):
        dl.download(["mnist"], root=isolated, quiet=True, timeout=0)


def test_missing_files_names_what_no_root_completes(isolated):
    from fedlib.data import paths

    root = isolated / "d"
    assert paths.missing_files("mnist", root) == [f"{rel}[.gz]" for rel in
                                                  paths.FILE_DATASETS["mnist"].files]
    write_idx_set(root, "MNIST", 3, 2)
    assert paths.missing_files("MNIST", root) == []
    (root / "MNIST/raw/train-labels-idx1-ubyte.gz").unlink()
    assert paths.missing_files("mnist", root) == ["MNIST/raw/train-labels-idx1-ubyte[.gz]"]
    assert paths.missing_files("digits") == [] and paths.missing_files("synthetic") == []
    with pytest.raises(ValueError, match="unknown dataset"):
        paths.missing_files("imagenet")
