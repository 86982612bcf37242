"""The test layout DESIGN §7 states: tests/unit needs torch only; onnx and ONNX Runtime tests are integration."""

from __future__ import annotations

import ast
from pathlib import Path

HEAVY = ("onnx", "onnxruntime", "onnxslim", "onnxscript", "tensorrt", "cv2")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "importorskip" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                names.add(arg.value.split(".")[0])
    return names


def test_unit_tests_import_no_onnx_runtime_or_gpu_package() -> None:
    offenders = {p.name: sorted(_imports(p) & set(HEAVY)) for p in sorted(Path(__file__).parent.glob("test_*.py"))}
    assert {k: v for k, v in offenders.items() if v} == {}
