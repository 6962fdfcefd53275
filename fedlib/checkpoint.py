"""Checkpoints of long runs: a federation's full state as tensors and plain data, atomically.

A checkpoint holds what :meth:`fedlib.federation.Federation.snapshot` holds — θ, the round counter,
the protocol state (Romoa's participant states), every aggregator's and attack's state (Romoa's
sanitizing factors F, centered clipping's momentum) — plus the recorder histories so far. It is a
single ``torch.save`` file of tensors, numbers, strings, lists and dicts only, so it loads with
``torch.load(weights_only=True)``: no Python object is pickled. Aggregator and attack state is
taken by a generic walk of the objects' ``__dict__`` (:func:`plain_state`) and put back onto
freshly built objects of the same config (:func:`load_plain_state`); functions and modules are
skipped (the config rebuilds them), nested fedlib objects are walked in turn. An object that
holds live objects the walk cannot rebuild (L2A's online RL attack: its policy network, the
distribution learner, the simulator) says what its state is instead, with ``state_dict()`` and
``load_state_dict(state)`` (not ``torch.nn.Module``s, whose weights are stored as such).

Every random draw of a federation comes from streams keyed by (seed, purpose, round), so the round
counter and these tensors describe the state fully: a run resumed from a checkpoint finishes
bit-identical to the uninterrupted run on CPU (same torch thread count).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import os
import tempfile
import types
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["plain_state", "load_plain_state", "federation_state", "load_federation_state",
           "save_checkpoint", "load_checkpoint", "FORMAT", "STATE_DICT"]

FORMAT = 1
"""Version of the checkpoint layout (a checkpoint of another layout is ignored)."""

_TAG = "__fedlib_state__"
STATE_DICT = "__state_dict__"
"""The key under which :func:`plain_state` stores the ``state_dict()`` of an object that has one."""
_SKIP = (types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.ModuleType, type,
         functools.partial)


def _skipped(value: Any) -> bool:
    """Values the config rebuilds — functions, closures, classes, modules and the task (data and
    model template) an attack's ``prepare(task)`` keeps: not state."""
    from .engine import Task
    return isinstance(value, (*_SKIP, Task)) or (callable(value) and not hasattr(value, "__dict__"))


def _own(t: Tensor) -> Tensor:
    """A view of a larger tensor as its own copy (torch.save would store the whole storage)."""
    return t.clone() if t.untyped_storage().nbytes() > t.numel() * t.element_size() else t


def _class_path(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


def _class_of(path: str) -> type:
    """The class a state names; only fedlib's own classes are rebuilt from a name."""
    module, _, name = path.partition(":")
    if module != "fedlib" and not module.startswith("fedlib."):
        raise TypeError(f"cannot store a {path} in a checkpoint (only fedlib's own classes)")
    try:
        obj: Any = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise TypeError(f"cannot store or rebuild a {path} in a checkpoint: {err}") from None
    if not isinstance(obj, type):
        raise ValueError(f"checkpoint names {path!r}, which is not a class")
    return obj


def encode(value: Any) -> Any:
    """A value as tensors and plain data (lists, dicts, numbers, strings), tagged where needed."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Tensor):
        return _own(value.detach())
    if isinstance(value, torch.nn.Module):                      # its weights, not the network
        return {_TAG: "module", "state": {k: _own(v.detach()) for k, v in
                                          value.state_dict().items()}}
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, np.ndarray):
        return {_TAG: "ndarray", "data": torch.from_numpy(np.ascontiguousarray(value))}
    if isinstance(value, torch.Generator):
        return {_TAG: "generator", "state": value.get_state()}
    if isinstance(value, torch.device):
        return {_TAG: "device", "name": str(value)}
    if isinstance(value, torch.dtype):
        return {_TAG: "dtype", "name": str(value).removeprefix("torch.")}
    if isinstance(value, slice):
        return {_TAG: "slice", "args": [value.start, value.stop, value.step]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, tuple):
        if hasattr(value, "_fields"):                              # a NamedTuple
            return {_TAG: "namedtuple", "class": _class_path(value),
                    "items": [encode(v) for v in value]}
        return {_TAG: "tuple", "items": [encode(v) for v in value]}
    if isinstance(value, dict):
        return {_TAG: "dict", "items": [[encode(k), encode(v)] for k, v in value.items()]}
    if hasattr(value, "__dict__") and not _skipped(value):
        _class_of(_class_path(value))                           # fedlib's own classes only
        return {_TAG: "object", "class": _class_path(value), "state": plain_state(value)}
    raise TypeError(f"cannot store a {type(value).__name__} in a checkpoint")


def decode(value: Any, into: Any = None) -> Any:
    """Inverse of :func:`encode`; a nested object is restored onto ``into`` if of its class."""
    if isinstance(value, list):
        return [decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    kind = value.get(_TAG)
    if kind == "ndarray":
        return value["data"].numpy()
    if kind == "generator":
        g = into if isinstance(into, torch.Generator) else torch.Generator()
        return g.set_state(value["state"])
    if kind == "module":
        if not isinstance(into, torch.nn.Module):
            raise ValueError("checkpoint holds a network's weights but the rebuilt object has none")
        into.load_state_dict(value["state"])
        return into
    if kind == "device":
        return torch.device(value["name"])
    if kind == "dtype":
        return getattr(torch, value["name"])
    if kind == "slice":
        return slice(*value["args"])
    if kind == "tuple":
        return tuple(decode(v) for v in value["items"])
    if kind == "namedtuple":
        return _class_of(value["class"])(*(decode(v) for v in value["items"]))
    if kind == "dict":
        old = into if isinstance(into, dict) else {}
        return {decode(k): decode(v, old.get(decode(k))) for k, v in value["items"]}
    if kind == "object":
        cls = _class_of(value["class"])
        obj = into if type(into) is cls else cls.__new__(cls)
        load_plain_state(obj, value["state"])
        return obj
    raise ValueError(f"unknown checkpoint entry {kind!r}")


def _states_itself(obj: Any) -> bool:
    """Whether ``obj``'s class defines ``state_dict``/``load_state_dict`` (not a network)."""
    cls = type(obj)
    return (not isinstance(obj, torch.nn.Module) and callable(getattr(cls, "state_dict", None))
            and callable(getattr(cls, "load_state_dict", None)))


def plain_state(obj: Any) -> dict[str, Any]:
    """The state of an aggregator or attack: its ``__dict__`` as tensors and plain data (functions,
    classes, modules and networks skipped: the config rebuilds them), or its ``state_dict()``."""
    if _states_itself(obj):
        return {STATE_DICT: encode(obj.state_dict())}
    return {k: encode(v) for k, v in vars(obj).items() if not _skipped(v)}


def load_plain_state(obj: Any, state: dict[str, Any]) -> None:
    """Put a :func:`plain_state` back onto ``obj`` (freshly built from the same config)."""
    if STATE_DICT in state:
        if not _states_itself(obj):
            raise ValueError(f"the checkpoint holds a state_dict but a {type(obj).__name__} "
                             "cannot load one")
        obj.load_state_dict(decode(state[STATE_DICT]))
        return
    fields = {f.name for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else set()
    for k, v in state.items():
        value = decode(v, getattr(obj, k, None) if k in vars(obj) or k in fields else None)
        object.__setattr__(obj, k, value)              # frozen dataclasses too


def federation_state(fed: Any) -> dict[str, Any]:
    """A federation's full state (θ, each replica's round counter, protocol, aggregator and attack
    state) as plain data."""
    return {"round": int(fed.rounds[0]), "rounds": [int(r) for r in fed.rounds],
            "theta": fed.theta.detach().clone(),
            "seeds": [int(s) for s in fed.seeds],
            "protocol_state": encode(dict(fed.protocol_state)),
            "aggregators": [plain_state(a) for a in fed.aggregators],
            "attacks": [None if a is None else plain_state(a) for a in fed.attacks]}


def load_federation_state(fed: Any, state: dict[str, Any]) -> None:
    """Load a :func:`federation_state` into a federation freshly built from the same config."""
    theta = state["theta"]
    if tuple(theta.shape) != tuple(fed.theta.shape) or state["seeds"] != list(fed.seeds):
        raise ValueError(f"the checkpoint holds θ {tuple(theta.shape)} for seeds {state['seeds']}, "
                         f"this federation θ {tuple(fed.theta.shape)} for seeds {fed.seeds}")
    if len(state["aggregators"]) != len(fed.aggregators) or \
            [a is None for a in state["attacks"]] != [a is None for a in fed.attacks]:
        raise ValueError("the checkpoint's aggregators/attacks do not match this federation's")
    for agg, s in zip(fed.aggregators, state["aggregators"]):
        load_plain_state(agg, s)
    for attack, s in zip(fed.attacks, state["attacks"]):
        if attack is not None:
            load_plain_state(attack, s)
    fed.protocol_state = {k: v.to(fed.device) if isinstance(v, Tensor) else v
                          for k, v in decode(state["protocol_state"]).items()}
    fed.theta = theta.to(fed.device)
    fed.rounds = [int(r) for r in state.get("rounds", [state["round"]] * len(fed.seeds))]


def save_checkpoint(path: Path, key: str, fed: Any, histories: Sequence[dict]) -> None:
    """Write ``fed``'s state and the recorders' ``histories`` to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"format": FORMAT, "key": key, "federation": federation_state(fed),
            "histories": json.dumps(list(histories))}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(blob, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, key: str) -> Optional[dict[str, Any]]:
    """The checkpoint at ``path`` for run ``key`` (``weights_only``), or None: missing, or
    unreadable / of another run (then with a warning, and the run restarts from scratch)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        blob = torch.load(path, weights_only=True, map_location="cpu")
        if blob.get("format") != FORMAT or blob.get("key") != key:
            raise ValueError("written by another run or checkpoint format")
        blob["histories"] = json.loads(blob["histories"])
        blob["federation"]["round"]                          # noqa: B018 (must be present)
    except Exception as err:  # corrupt: restart rather than trust it
        warnings.warn(f"ignoring unreadable checkpoint {path}: {err}; the run restarts from "
                      "round 0", RuntimeWarning, stacklevel=3)
        return None
    return blob
