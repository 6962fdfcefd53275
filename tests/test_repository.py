"""Repository hygiene: no machine paths in tracked files, every module imports, no import cycles."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "fedlib"

# Built from parts so that this file does not match itself.
_HOMES = ("home", "root", "work", "Users")
MACHINE_PATH = re.compile(r"(?<![\w.~/-])/(?:" + "|".join(_HOMES) + r")/")


def _project_files() -> list[Path]:
    """Tracked files plus new ones git does not ignore (what a commit would hold)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=REPO, capture_output=True, check=True).stdout
    names = sorted({n for n in out.decode().split("\0") if n})
    return [REPO / n for n in names if (REPO / n).is_file()]


def machine_path_hits(files: list[Path], root: Path) -> list[str]:
    """'file:line: text' for every absolute home or work path in the text files given."""
    hits = []
    for path in files:
        blob = path.read_bytes()
        if b"\0" in blob[:8192]:
            continue                                    # binary
        text = blob.decode("utf-8", errors="replace")
        for lineno, line in enumerate(text.splitlines(), 1):
            if MACHINE_PATH.search(line):
                hits.append(f"{path.relative_to(root)}:{lineno}: {line.strip()[:120]}")
    return hits


def test_machine_path_pattern():
    for bad in ["see /" "work/main/x", "'/" "root/.cache'", "(/" "home/u/data)", "/" "Users/me"]:
        assert MACHINE_PATH.search(bad), bad
    for ok in ["https://example.org/" "home/x", "data/" "work/x", "~/" "work/x", "./" "root/",
               "a-/" "home/"[:-1], "fedlib/romoa/scan.py"]:
        assert not MACHINE_PATH.search(ok), ok


def test_machine_path_scan_names_file_and_line(tmp_path):
    (tmp_path / "a.md").write_text("fine\nrun /" "work/main/.venv/bin/python\n")
    (tmp_path / "b.bin").write_bytes(b"\0/" b"home/x/")
    assert machine_path_hits([tmp_path / "a.md", tmp_path / "b.bin"], tmp_path) == [
        "a.md:2: run /" "work/main/.venv/bin/python"]


def test_no_machine_paths_in_the_repository():
    hits = machine_path_hits(_project_files(), REPO)
    assert not hits, "absolute machine paths (use relative ones):\n" + "\n".join(hits)


# ----------------------------------------------------------------------------- imports

def _module_names() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        names.append(".".join(parts))
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that runs, at module level or in a function (not TYPE_CHECKING)."""
    out = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for sub in child.orelse:
                    visit_stmt(sub)
                continue
            visit_stmt(child)

    def visit_stmt(node: ast.AST) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        visit(node)

    visit(tree)
    return out


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the modules of ``modules`` it imports (from the AST, lazy imports included)."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        package = mod if is_pkg else mod.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base_parts = package.split(".")
                    base_parts = base_parts[:len(base_parts) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]
            for t in targets:
                while t and t not in modules:                 # fedlib.x.y.attr -> fedlib.x.y
                    t = t.rpartition(".")[0]
                if t and t != mod:
                    graph[mod].add(t)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return sorted(out)


def test_cycle_finder_on_a_toy_package(tmp_path):
    pkg = tmp_path / "toy"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "toy/__init__.py": "from .a import f\n",
        "toy/a.py": "def f():\n    from .b import g\n    return g\n",
        "toy/b.py": "from toy.a import f\nimport numpy\n",
        "toy/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .d import x\n",
        "toy/d.py": "from . import c\n",
        "toy/sub/__init__.py": "",
        "toy/sub/e.py": "from .. import b\nfrom ..sub import e\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).write_text(text)
    mods = {"toy": pkg / "__init__.py", "toy.a": pkg / "a.py", "toy.b": pkg / "b.py",
            "toy.c": pkg / "c.py", "toy.d": pkg / "d.py", "toy.sub": pkg / "sub/__init__.py",
            "toy.sub.e": pkg / "sub/e.py"}
    graph = import_graph(mods)
    assert graph["toy.a"] == {"toy.b"} and graph["toy.b"] == {"toy.a"}
    assert graph["toy.c"] == set() and graph["toy.d"] == {"toy.c"}
    assert graph["toy.sub.e"] == {"toy.b"}
    assert import_cycles(graph) == [["toy.a", "toy.b"]]


def test_no_import_cycles_between_fedlib_modules():
    modules = {name: (REPO / name.replace(".", "/")).with_suffix(".py") for name in _module_names()}
    modules = {m: (p if p.is_file() else p.with_suffix("") / "__init__.py")
               for m, p in modules.items()}
    graph = import_graph(modules)
    assert graph["fedlib.data.loaders"] >= {"fedlib.data.paths", "fedlib.data.download"}
    cycles = import_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("name", _module_names())
def test_every_module_imports(name):
    importlib.import_module(name)


# ----------------------------------------------------------------------------- the two commands

def _make_rules() -> dict[str, tuple[list[str], list[str]]]:
    """Makefile target -> (prerequisites, recipe lines); variables as written."""
    rules: dict[str, tuple[list[str], list[str]]] = {}
    current = None
    for line in (REPO / "Makefile").read_text().splitlines():
        if line.startswith("\t") and current is not None:
            rules[current][1].append(line.strip())
            continue
        m = re.match(r"^([\w.$()/-]+)\s*:(?!=)\s*(.*)$", line)
        current = m.group(1) if m else None
        if m:
            rules[current] = (m.group(2).split(), [])
    return rules


def _make_variable(name: str) -> list[str]:
    m = re.search(rf"^{name}\s*:?=\s*(.*)$", (REPO / "Makefile").read_text(), re.M)
    assert m, f"Makefile defines no {name}"
    return m.group(1).split()


def _notebook_datasets() -> set[str]:
    """File-backed datasets named by a string literal in a notebook's code or params file."""
    import json

    import yaml

    from fedlib.data.paths import FILE_DATASETS, canonical_name

    def named(value: str) -> str | None:
        try:
            key = canonical_name(value)
        except ValueError:
            return None
        return key if key in FILE_DATASETS else None

    found: set[str] = set()
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            if cell["cell_type"] == "code":
                for lit in re.findall(r"""["']([\w-]+)["']""", "".join(cell["source"])):
                    found.add(named(lit) or "")
    for params in sorted((REPO / "params").glob("*.yaml")):
        stack = [yaml.safe_load(params.read_text())]
        while stack:
            v = stack.pop()
            if isinstance(v, dict):
                stack.extend(v.values())
            elif isinstance(v, list):
                stack.extend(v)
            elif isinstance(v, str):
                found.add(named(v) or "")
    return found - {""}


def test_make_test_and_figures_fetch_the_notebooks_datasets_first():
    rules = _make_rules()
    for target in ("test", "figures", "notebooks"):
        assert "datasets" in rules[target][0], f"`make {target}` must depend on `datasets`"
    assert "datasets" not in rules["unit"][0]                   # unit tests need no downloads
    recipe = " ".join(rules["datasets"][1])
    assert "fedlib.data.download --if-missing $(NOTEBOOK_DATASETS)" in recipe
    declared = set(_make_variable("NOTEBOOK_DATASETS"))
    needed = _notebook_datasets() - {"emnist-balanced"}          # optional, said per notebook
    assert needed <= declared, f"add {sorted(needed - declared)} to NOTEBOOK_DATASETS"
    assert {"mnist", "cifar10"} <= needed                       # the scan does see the notebooks


def test_ci_lints_then_tests():
    lines = [ln.strip() for ln in (REPO / ".ci/run").read_text().splitlines()]
    assert "make lint" in lines and "make test" in lines
    assert lines.index("make lint") < lines.index("make test")
    assert "ruff check fedlib tests benchmarks" in " ".join(_make_rules()["lint"][1])


def test_version_is_written_once():
    """``fedlib.__version__`` is the only version; pyproject.toml reads it (and lists ruff)."""
    import fedlib

    text = (REPO / "pyproject.toml").read_text()
    project = text.split("[project]", 1)[1].split("\n[", 1)[0]
    assert not re.search(r"^version\s*=", project, re.M)
    assert re.search(r'^dynamic\s*=\s*\[[^]]*"version"', project, re.M)
    assert re.search(r'^\[tool\.setuptools\.dynamic\]\s*\nversion\s*=\s*\{\s*attr\s*=\s*'
                     r'"fedlib\.__version__"\s*\}', text, re.M)
    assert re.fullmatch(r"\d+\.\d+\.\d+", fedlib.__version__)
    assert re.search(r'^dev\s*=\s*\[[^]]*"ruff', text, re.M)


def _resolve(dotted: str) -> object:
    """The module or attribute a dotted ``fedlib.…`` name refers to."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def test_contributor_guide_names_exist():
    text = (REPO / "docs" / "CONVENTIONS.md").read_text()
    names = set(re.findall(r"`(fedlib(?:\.\w+)+)", text))
    assert len(names) >= 5
    missing = []
    for name in sorted(names):
        try:
            _resolve(name)
        except (ImportError, AttributeError):
            missing.append(name)
    assert not missing, f"docs/CONVENTIONS.md names what does not exist: {missing}"
    for rel in re.findall(r"`((?:fedlib|tests|notebooks|params|benchmarks)/[\w/.<>-]+)`", text):
        if "<" not in rel:
            assert (REPO / rel).exists(), rel


def test_attack_plugins_name_importable_classes():
    """The attacks named by path (to keep fedlib.attacks free of import cycles) resolve."""
    from fedlib import attacks
    for key in attacks.PLUGINS:
        assert isinstance(attacks._plugin(key), type)
        assert key in attacks.available()
