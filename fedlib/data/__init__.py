"""The data layer: datasets, federated partitions and FLTrust root sets.

* :func:`load` ``(name, root=None, download=False) -> (train, test)`` for "mnist",
  "fashion-mnist", "emnist-balanced", "cifar10" (raw files in torchvision's layout, read by
  our own validating parsers in :mod:`fedlib.data.parsers`), "synthetic" (L2A App. E.2 /
  Sinha et al.: x ~ N(0, I₂), y = 1 iff ‖x‖₂ > √2, the band √2/1.3 < ‖x‖₂ < 1.3·√2
  removed) and "digits" (scikit-learn's 8×8).
  Images are float32 (N, C, H, W) in [0, 1], not normalised.
* :func:`partition` (iid, Fang et al.'s q-noniid, Romoa's one-class, Dirichlet) and
  :func:`root_set` (FLTrust's root set with bias q0) in :mod:`fedlib.data.partition`.
* :func:`data_root` / :func:`search_roots`: where the files are looked for;
  ``python -m fedlib.data.download`` fetches them (:mod:`fedlib.data.download`).
"""

from .dataset import Dataset
from .loaders import DATASETS, clear_cache, data_root, load, repo_root, search_roots
from .parsers import DataFormatError, UnsafePickleError, read_cifar_batch, read_idx
from .partition import SCHEMES, partition, root_set

__all__ = [
    "Dataset", "load", "partition", "root_set", "data_root", "search_roots", "repo_root",
    "clear_cache", "DATASETS", "SCHEMES", "DataFormatError", "UnsafePickleError",
    "read_idx", "read_cifar_batch",
]
