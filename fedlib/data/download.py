"""Fetch the canonical dataset files into torchvision's layout.

    python -m fedlib.data.download [mnist fashion-mnist emnist-balanced cifar10] --root DIR
    python -m fedlib.data.download --if-missing mnist fashion-mnist cifar10

Each file is streamed to ``<file>.part`` beside its destination, its MD5 checked against
torchvision's published value, and only then moved into place (``os.replace``); files
already present with the right checksum are skipped. An interrupted download leaves its
``.part`` file, and the next run resumes it with an HTTP ``Range`` request (a server that
ignores the range, or a resumed file whose checksum fails, restarts the file from scratch).
Archives are unpacked member by member (regular files only, no path traversal): the CIFAR-10
tarball into ``cifar-10-batches-py/``, and from EMNIST's ``gzip.zip`` only the four
balanced-split files into ``EMNIST/raw/``. The archives are deleted afterwards unless
``--keep-archives``.

``--if-missing`` (:func:`ensure`) fetches only the datasets that :func:`fedlib.data.load`
cannot already find in any searched data directory, whatever their checksums; when the
hosts cannot be reached it stops at the first failure with one message naming every
missing file and the folder to put it in.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import posixpath
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable, Sequence

from .paths import canonical_name, data_root, missing_files

__all__ = ["RESOURCES", "DEFAULT_NAMES", "Resource", "ChecksumError", "DownloadError",
           "MissingDatasetsError", "download", "ensure", "main", "md5sum", "part_path"]


@dataclass(frozen=True)
class Resource:
    """One file to fetch: saved as ``<root>/<subdir>/<filename>``, tried at each URL."""

    filename: str
    md5: str
    urls: tuple[str, ...]
    subdir: str = ""
    extract: str | None = None           # None, "cifar-tar" or "emnist-zip"
    produces: tuple[str, ...] = ()       # paths (relative to root) an archive yields


class ChecksumError(RuntimeError):
    """A downloaded file's MD5 differs from the published one."""


class DownloadError(OSError):
    """No mirror delivered a file; ``unreachable`` when no mirror answered at all."""

    def __init__(self, message: str, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


class MissingDatasetsError(OSError):
    """Datasets that are neither on disk nor downloadable now (e.g. offline)."""


_MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                  "http://yann.lecun.com/exdb/mnist/")
_FASHION_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
_IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_MNIST_MD5 = ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
              "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c")
_FASHION_MD5 = ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310")
_EMNIST_BALANCED = tuple(f"emnist-balanced-{s}-{k}-ubyte.gz" for s in ("train", "test")
                         for k in ("images-idx3", "labels-idx1"))


def _idx_resources(mirrors: Sequence[str], md5s: Sequence[str], subdir: str
                   ) -> tuple[Resource, ...]:
    return tuple(Resource(f"{n}.gz", m, tuple(u + f"{n}.gz" for u in mirrors), subdir)
                 for n, m in zip(_IDX_NAMES, md5s))


# name -> resources; MD5s are torchvision's (torchvision/datasets/{mnist,cifar}.py).
# Tests monkeypatch this table with file:// URLs.
RESOURCES: dict[str, tuple[Resource, ...]] = {
    "mnist": _idx_resources(_MNIST_MIRRORS, _MNIST_MD5, "MNIST/raw"),
    "fashion-mnist": _idx_resources(_FASHION_MIRRORS, _FASHION_MD5, "FashionMNIST/raw"),
    "emnist-balanced": (Resource(
        "gzip.zip", "58c8d27c78d21e728a6bc7b3cc06412e",
        ("https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip",
         "https://www.itl.nist.gov/iaui/vip/cs_links/EMNIST/gzip.zip"),
        "EMNIST/raw", "emnist-zip", tuple(f"EMNIST/raw/{f}" for f in _EMNIST_BALANCED)),),
    "cifar10": (Resource(
        "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
        ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
        "", "cifar-tar",
        tuple(f"cifar-10-batches-py/{f}" for f in
              (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"))),),
}
DEFAULT_NAMES = ("mnist", "fashion-mnist", "emnist-balanced", "cifar10")
_CHUNK = 1 << 20


def md5sum(path: str | os.PathLike) -> str:
    """Hex MD5 of a file (streamed)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def _temp_beside(dest: Path) -> tuple[IO[bytes], Path]:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    return os.fdopen(fd, "wb"), Path(tmp)


def part_path(dest: Path) -> Path:
    """Where the bytes of ``dest`` accumulate until its checksum is verified."""
    return dest.with_name(dest.name + ".part")


def _resumed(resp, offset: int) -> bool:
    """Whether ``resp`` continues a file at byte ``offset`` (206 with a matching range)."""
    if getattr(resp, "status", None) != 206:
        return False
    content_range = resp.headers.get("Content-Range", "")
    return content_range.strip().startswith(f"bytes {offset}-")


def _stream(url: str, part: Path, timeout: float, quiet: bool) -> str:
    """Append ``url`` to ``part`` (resuming from its size when the server allows); its MD5."""
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url)
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    h = hashlib.md5()
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        if offset and _resumed(resp, offset):
            _log(f"resuming {url} at byte {offset}", quiet)
            with open(part, "rb") as f:
                for block in iter(lambda: f.read(_CHUNK), b""):
                    h.update(block)
            mode = "ab"
        else:
            mode = "wb"
        expected = resp.headers.get("Content-Length")
        received = 0
        with open(part, mode) as f:
            for block in iter(lambda: resp.read(_CHUNK), b""):
                h.update(block)
                f.write(block)
                received += len(block)
    if expected is not None and expected.isdigit() and received < int(expected):
        raise ConnectionError(f"transfer cut off after {received} of {expected} bytes")
    return h.hexdigest()


def _fetch(res: Resource, dest: Path, quiet: bool, timeout: float = 30.0) -> None:
    """Download ``res`` to ``dest`` via ``dest.part`` (resumable), verifying its MD5."""
    errors: list[str] = []
    mismatch: ChecksumError | None = None
    answered = False                          # did any mirror answer at all?
    part = part_path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for url in res.urls:
        for attempt in (0, 1):                # a resumed file that fails restarts once
            resumed = attempt == 0 and part.is_file() and part.stat().st_size > 0
            _log(f"downloading {url}", quiet)
            try:
                got = _stream(url, part, timeout, quiet)
            except urllib.error.HTTPError as exc:
                answered = True
                if exc.code == 416 and resumed:      # range past the end: restart cleanly
                    part.unlink(missing_ok=True)
                    continue
                errors.append(f"{url}: {exc}")
                break
            except urllib.error.URLError as exc:
                errors.append(f"{url}: {exc.reason}")
                break
            except (OSError, http.client.HTTPException, ValueError) as exc:
                answered = True                      # cut off mid-transfer: .part is kept
                errors.append(f"{url}: {type(exc).__name__}: {exc} "
                              f"(partial file kept: {part.name}, the next run resumes it)")
                break
            answered = True
            if got == res.md5:
                os.replace(part, dest)
                return
            part.unlink(missing_ok=True)
            if resumed:
                continue
            mismatch = ChecksumError(
                f"{res.filename}: checksum mismatch for {url}: expected MD5 {res.md5}, "
                f"got {got} (the download was deleted)")
            errors.append(str(mismatch))
            break
    if mismatch is not None:
        raise mismatch
    raise DownloadError(f"could not download {res.filename}:\n  " + "\n  ".join(errors),
                        unreachable=not answered)


def _safe_member_name(name: str) -> str:
    """A normalised relative member path; refuses absolute paths and '..' traversal."""
    norm = posixpath.normpath(name.replace("\\", "/"))
    if name.startswith(("/", "\\")) or norm == ".." or norm.startswith("../") \
            or (len(norm) > 1 and norm[1] == ":") or ".." in norm.split("/"):
        raise ValueError(f"refusing archive member with unsafe path {name!r}")
    return norm


def _write_atomic(src: IO[bytes], dest: Path) -> None:
    f, tmp = _temp_beside(dest)
    try:
        with f:
            shutil.copyfileobj(src, f, _CHUNK)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _extract_cifar(archive: Path, root: Path) -> None:
    """Unpack the CIFAR-10 tarball's ``cifar-10-batches-py/`` regular files into ``root``."""
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for m in members:                 # validate every member before writing anything
            name = _safe_member_name(m.name)
            if not (m.isfile() or m.isdir()):
                raise ValueError(f"{archive}: refusing non-regular archive member {m.name!r}")
            if m.isfile() and not name.startswith("cifar-10-batches-py/"):
                raise ValueError(f"{archive}: unexpected member {m.name!r} outside "
                                 "cifar-10-batches-py/")
        for m in members:
            if m.isfile():
                src = tar.extractfile(m)
                assert src is not None
                with src:
                    _write_atomic(src, root / _safe_member_name(m.name))


def _extract_emnist(archive: Path, raw: Path) -> None:
    """Copy only the balanced-split IDX files out of EMNIST's ``gzip.zip`` into ``raw``."""
    with zipfile.ZipFile(archive) as zf:
        by_base = {posixpath.basename(i.filename): i for i in zf.infolist() if not i.is_dir()}
        missing = [b for b in _EMNIST_BALANCED if b not in by_base]
        if missing:
            raise ValueError(f"{archive}: archive lacks {missing}")
        for base in _EMNIST_BALANCED:
            with zf.open(by_base[base]) as src:
                _write_atomic(src, raw / base)


def _provide(res: Resource, root: Path, quiet: bool, keep_archives: bool,
             timeout: float) -> None:
    """Make ``res`` (or, for an archive, the files it yields) present under ``root``."""
    dest = root / res.subdir / res.filename
    if res.extract and all((root / p).is_file() for p in res.produces):
        _log(f"{res.filename}: extracted files already present, skipping", quiet)
        return
    if dest.is_file() and md5sum(dest) == res.md5:
        _log(f"{dest}: present with the right checksum, skipping download", quiet)
    else:
        if dest.is_file():
            _log(f"{dest}: present but its checksum differs, downloading again", quiet)
        _fetch(res, dest, quiet, timeout)
    if res.extract == "cifar-tar":
        _extract_cifar(dest, root)
    elif res.extract == "emnist-zip":
        _extract_emnist(dest, dest.parent)
    if res.extract and not keep_archives:
        dest.unlink()


def _downloadable(names: Iterable[str]) -> list[str]:
    """Canonical names, deduplicated; ValueError for sets generated in memory."""
    keys = list(dict.fromkeys(canonical_name(n) for n in names))
    bad = [k for k in keys if k not in RESOURCES]
    if bad:
        raise ValueError(f"{bad} are generated in memory, nothing to download; "
                         f"downloadable: {', '.join(RESOURCES)}")
    return keys


def download(names: Iterable[str] | None = None, root: str | os.PathLike | None = None, *,
             quiet: bool = False, keep_archives: bool = False, timeout: float = 30.0) -> Path:
    """Fetch ``names`` (default: all four image sets) into ``root`` (default data_root())."""
    keys = _downloadable(names if names is not None else DEFAULT_NAMES)
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    dest = data_root(root)
    for key in keys:
        for res in RESOURCES[key]:
            _provide(res, dest, quiet, keep_archives, timeout)
    return dest


def _missing_message(missing: dict[str, list[str]], dest: Path, cause: str) -> str:
    lines = [f"missing datasets, and they cannot be downloaded now ({cause}):"]
    lines += [f"  {name}: {', '.join(files)}" for name, files in missing.items()]
    lines += [f"Put these files under {dest} (or the folder $FEDLIB_DATA names), in the layout",
              "described in data/README.md - e.g. run `python -m fedlib.data.download "
              f"{' '.join(missing)} --root DIR` on a machine with internet and copy DIR over."]
    return "\n".join(lines)


def ensure(names: Iterable[str], root: str | os.PathLike | None = None, *, quiet: bool = False,
           timeout: float = 30.0) -> Path:
    """Download only the datasets that no searched data directory holds yet; the data root.

    A dataset counts as present when :func:`fedlib.data.load` would find all its files
    (whatever their checksums). The first failed download stops everything with one
    :class:`MissingDatasetsError` naming every file still missing and where to put it.
    """
    keys = _downloadable(names)
    dest = data_root(root)
    missing = {k: m for k in keys if (m := missing_files(k, root))}
    if not missing:
        _log(f"datasets present: {', '.join(keys) or 'none requested'}", quiet)
        return dest
    _log(f"datasets to download into {dest}: {', '.join(missing)}", quiet)
    for key in list(missing):
        try:
            download([key], dest, quiet=quiet, timeout=timeout)
        except (DownloadError, ChecksumError) as exc:
            unreachable = isinstance(exc, DownloadError) and exc.unreachable
            cause = ("the download hosts cannot be reached - offline?" if unreachable
                     else str(exc).replace("\n  ", "; "))
            raise MissingDatasetsError(_missing_message(missing, dest, cause)) from exc
        if missing_files(key, dest):
            raise MissingDatasetsError(_missing_message(
                missing, dest, f"{key}: the download did not yield every file"))
        del missing[key]
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m fedlib.data.download",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", default=list(DEFAULT_NAMES),
                        help=f"datasets to fetch (default: {' '.join(DEFAULT_NAMES)})")
    parser.add_argument("--root", default=None,
                        help="data directory (default: $FEDLIB_DATA, else ./data or <repo>/data)")
    parser.add_argument("--if-missing", action="store_true",
                        help="fetch only datasets no searched data directory holds; offline, "
                             "stop at once naming the missing files")
    parser.add_argument("--keep-archives", action="store_true",
                        help="keep the CIFAR tarball and EMNIST zip after extracting")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for a server (default 30)")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    names = args.names or DEFAULT_NAMES
    try:
        if args.if_missing:
            dest = ensure(names, args.root, quiet=args.quiet, timeout=args.timeout)
        else:
            dest = download(names, args.root, quiet=args.quiet,
                            keep_archives=args.keep_archives, timeout=args.timeout)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _log(f"data ready under {dest}", args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
