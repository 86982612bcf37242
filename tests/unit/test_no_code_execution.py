"""No path in the package executes code from a file: pickle, unsafe torch.load / np.load / yaml.load, eval, exec."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "addunet_edge"
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _dotted(node: ast.AST) -> str:
    """'torch.load' for torch.load, 'load' for a bare name, '?.eval' for a method of an expression."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner or '?'}.{node.attr}"
    return ""


def findings(source: str, filename: str) -> list[str]:
    """Every construct in `source` that could run code taken from a file, as 'file:line: what'."""
    tree = ast.parse(source, filename)
    out: list[str] = []

    def flag(node: ast.AST, what: str) -> None:
        out.append(f"{filename}:{getattr(node, 'lineno', '?')}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PICKLE_MODULES:
                    flag(node, f"imports {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            module = (node.module or "").split(".")[0]
            if module in PICKLE_MODULES:
                flag(node, f"imports from {node.module}")
            if module == "torch" and any(a.name == "load" for a in node.names):
                flag(node, "imports torch.load by name (call it as torch.load(..., weights_only=True))")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            last = name.rsplit(".", 1)[-1]
            if name in ("eval", "exec", "builtins.eval", "builtins.exec"):
                flag(node, f"calls {name}()")
            elif name in ("torch.load", "th.load") and not _is_true(_keyword(node, "weights_only")):
                flag(node, "torch.load without weights_only=True")
            elif name in ("np.load", "numpy.load") and _is_true(_keyword(node, "allow_pickle")):
                flag(node, "np.load with allow_pickle=True")
            elif name in ("yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.full_load"):
                loader = _keyword(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
                if loader is None or "Safe" not in _dotted(loader):
                    flag(node, f"{name} without a SafeLoader (use yaml.safe_load)")
            elif (last in ("loads", "load", "Unpickler") and name.split(".")[0] in PICKLE_MODULES) or name in (
                "compile",
                "builtins.compile",
                "__import__",
            ):
                flag(node, f"calls {name}()")
    return out


def test_the_package_never_executes_code_from_a_file() -> None:
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 20, f"found only {len(sources)} files under {PACKAGE}"
    problems = [f for path in sources for f in findings(path.read_text(encoding="utf-8"), str(path))]
    assert not problems, "code execution from files:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("snippet", "what"),
    [
        ("import pickle", "imports pickle"),
        ("from pickle import loads", "imports from pickle"),
        ("import torch\ntorch.load('x')", "weights_only"),
        ("import torch\ntorch.load('x', weights_only=False)", "weights_only"),
        ("eval('1')", "eval"),
        ("exec('x = 1')", "exec"),
        ("import yaml\nyaml.load(open('c'))", "SafeLoader"),
        ("import yaml\nyaml.load(open('c'), Loader=yaml.FullLoader)", "SafeLoader"),
        ("import numpy as np\nnp.load('a.npy', allow_pickle=True)", "allow_pickle"),
    ],
)
def test_the_scanner_catches_each_unsafe_construct(snippet: str, what: str) -> None:
    found = findings(snippet, "snippet.py")
    assert found and what in found[0], found
    assert found[0].startswith("snippet.py:"), found


@pytest.mark.parametrize(
    "snippet",
    [
        "import torch\ntorch.load('x', weights_only=True)",
        "import numpy as np\nnp.load('a.npz', allow_pickle=False)",
        "import yaml\nyaml.load(open('c'), Loader=yaml.SafeLoader)",
        "import yaml\nyaml.safe_load(open('c'))",
        "model.eval()",
        "model.to('cpu').eval()",
        "import json\njson.loads('{}')",
    ],
)
def test_the_scanner_accepts_the_safe_forms(snippet: str) -> None:
    assert findings(snippet, "snippet.py") == []
