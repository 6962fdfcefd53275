"""The Romoa notebooks' one-hop links to the code name functions that Romoa actually runs."""

import functools
import importlib
import json
import re
from pathlib import Path

import torch

import fedlib.romoa as romoa_pkg
from fedlib.romoa import Romoa

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
LINK = re.compile(r"\[`(fedlib\.romoa(?:\.\w+)+)`\]\(\.\./fedlib/romoa/\w+\.py\)")


def resolve(name: str):
    """(module, attribute name, object) for a dotted ``fedlib.romoa...`` name, or None."""
    mod_name, _, attr = name.rpartition(".")
    try:
        module = importlib.import_module(mod_name)
    except ImportError:
        return None                                    # a method or attribute of a class
    return module, attr, getattr(module, attr, None)


def linked_functions(texts: list[str]) -> set[str]:
    """Every ``fedlib.romoa...`` name linked from markdown that resolves to a plain function."""
    names = set()
    for text in texts:
        for name in LINK.findall(text):
            found = resolve(name)
            if found is not None and callable(found[2]) and not isinstance(found[2], type):
                names.add(name)
    return names


def called_by_romoa(names: set[str], monkeypatch) -> set[str]:
    """The subset of ``names`` that one literal and one calibrated Romoa iteration call."""
    called = set()
    for name in names:
        module, _, fn = resolve(name)
        home = importlib.import_module(fn.__module__)

        def spy(*a, _name=name, _fn=fn, **k):
            called.add(_name)
            return _fn(*a, **k)

        for where in {home, module, romoa_pkg}:
            if getattr(where, fn.__name__, None) is fn:
                monkeypatch.setattr(where, fn.__name__, functools.wraps(fn)(spy))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 400, generator=g)
    x[0] *= 8.0
    for reading in ("literal", "calibrated"):
        Romoa(reading)(x)
    monkeypatch.undo()
    return called


def markdown(path: Path) -> list[str]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown"]


def test_linked_functions_are_on_romoas_path(monkeypatch):
    texts = [t for p in sorted(NOTEBOOKS.glob("romoa_*.ipynb")) for t in markdown(p)]
    names = linked_functions(texts)
    assert {"fedlib.romoa.similarity.lookahead_scan", "fedlib.romoa.sanitizing.selected_signs",
            "fedlib.romoa.sanitizing.layer_momentum"} <= names
    assert called_by_romoa(names, monkeypatch) == names


def test_a_reference_only_link_is_detected(monkeypatch):
    text = "[`fedlib.romoa.parameter_selection`](../fedlib/romoa/similarity.py)"
    names = linked_functions([text])
    assert names == {"fedlib.romoa.parameter_selection"}
    assert called_by_romoa(names, monkeypatch) == set()
