"""Every TensorRT and CUDA-runtime name our code uses exists in every TensorRT / cuda-python we support.

No GPU and no `tensorrt` import: the names come from the real binding modules of the PyPI wheels, listed by
scripts/trt_binding_names.py into tests/data/tensorrt_names/<version>.txt (TensorRT 10.3 = JetPack 6,
10.13 = JetPack 7, newest 11.x) and tests/data/cuda_names/<version>.txt (cuda-python 12.3 floor, newest
12.x and 13.x). A TensorRT name is in a version when it equals or ends a line of that version's list (the
linker stores "INT8" as the tail of "UINT8"); the lists are flat, so `BuilderFlag.INT8` cannot be told from
`DataType.INT8`, but a name a version lacks everywhere (BuilderFlag.FP16, IInt8Calibrator, EXPLICIT_BATCH,
int8_calibrator in 11.x) is caught.

The rule, applied to every addunet_edge module that imports tensorrt or the CUDA runtime bindings (found by
grep, so a new module is checked too):

1. TensorRT names used: (a) every attribute read or set on a value that holds a TensorRT object: the module
   object (`trt = require("tensorrt", ...)`, `self._trt`) and anything reached from it by attribute, call, or
   `_checked(...)`, followed through local variables, `self.` attributes and the parameters of functions
   called with such a value in the same module, and the keyword names of calls on it; (b) the methods of a
   class derived from a TensorRT class (TensorRT calls `log`, `phase_start`, ... by name); (c) names probed
   with `hasattr` / `getattr` on a TensorRT object; (d) any other attribute name in these modules that is a
   line of some version's list and looks like an API name (CamelCase, UPPER_CASE, or snake_case with an
   underscore: `set_tensor_address`); plain lowercase words (`update`, `cuda`, `float`) are too common to
   count as TensorRT's when the object carrying them is not tracked.
2. Each must exist in EVERY supported version, unless it sits behind an explicit version guard:
   - `hasattr(obj, "name")` or `getattr(obj, "name", default)` with the name as a string literal guards the
     probe itself and every use of that name inside `if` blocks whose test calls that hasattr (directly or
     through a variable assigned from it): such a name must exist in at least one version (a typo is not a
     guard);
   - `if _major(trt) >= 11:` (any comparison of `_major(...)`, or of a variable whose name ends in `major`,
     with an int literal), as a statement or a conditional expression: its branches are checked only against
     the versions whose major version takes that branch.
3. CUDA: every `cudaX(...)` called on the runtime module (from `import_cudart()`) exists in every listed
   cuda-python with as many parameters as we pass; every `Enum.member` read from it exists in every one; every
   attribute read on a value a runtime call returned (through `_call`) is a field of some runtime struct.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "addunet_edge"
DATA = REPO / "tests" / "data"
PASS_THROUGH = {"_checked"}  # helpers that return their first argument (after a None check)
TRT_IMPORT = re.compile(
    r"""require\(\s*["']tensorrt["']|import_module\(\s*["']tensorrt["']\)|^\s*(import|from) tensorrt\b""", re.M
)
CUDA_IMPORT = re.compile(r"\bimport_cudart\(|cuda\.bindings|\bcudart\b")
# (d) of the rule: names distinctive enough to be TensorRT's when an untracked object carries them
API_NAME = re.compile(r"[A-Z][A-Za-z0-9_]*|[a-z][a-z0-9]*(?:_[a-z0-9]+)+")
_OPS: dict[type, Callable[[int, int], bool]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


# --------------------------------------------------------------------------------------------------------
# The committed name lists
# --------------------------------------------------------------------------------------------------------
def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


@dataclass(frozen=True)
class TrtNames:
    version: str
    lines: frozenset[str]
    suffixes: frozenset[str]

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def has(self, name: str) -> bool:
        return name in self.suffixes


@dataclass(frozen=True)
class CudaNames:
    version: str
    functions: dict[str, tuple[str, ...] | None]
    members: frozenset[str]  # "Enum.member" and "Struct.field"

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(m.split(".", 1)[1] for m in self.members)

    @property
    def owners(self) -> frozenset[str]:
        return frozenset(m.split(".", 1)[0] for m in self.members)


def load_trt_names() -> list[TrtNames]:
    out = []
    for path in sorted((DATA / "tensorrt_names").glob("*.txt"), key=lambda p: _version_key(p.stem)):
        lines = frozenset(_lines(path))
        suffixes = frozenset(line[i:] for line in lines for i in range(len(line)))
        out.append(TrtNames(path.stem, lines, suffixes))
    return out


def load_cuda_names() -> list[CudaNames]:
    out = []
    for path in sorted((DATA / "cuda_names").glob("*.txt"), key=lambda p: _version_key(p.stem)):
        functions: dict[str, tuple[str, ...] | None] = {}
        members = set()
        for line in _lines(path):
            if m := re.fullmatch(r"(\w+)\((.*)\)", line):
                functions[m.group(1)] = tuple(p.strip() for p in m.group(2).split(",") if p.strip())
            elif "." in line:
                members.add(line)
            else:
                functions[line] = None
        out.append(CudaNames(path.stem, functions, frozenset(members)))
    return out


TRT = load_trt_names()
CUDA = load_cuda_names()


# --------------------------------------------------------------------------------------------------------
# What the code uses
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Use:
    """One use of a binding name at `line`; `versions`: the TensorRT versions it must exist in."""

    line: int
    name: str
    what: str  # trt | trt-override | trt-probe | trt-known | cuda-function | cuda-member | cuda-field | cuda-name
    versions: frozenset[str]
    guarded: bool = False  # behind hasattr / getattr: one of `versions` is enough
    nargs: int = 0
    keywords: tuple[str, ...] = ()


@dataclass
class _Ctx:
    versions: frozenset[str]
    guards: frozenset[str] = frozenset()


@dataclass
class Analysis:
    """Follows TensorRT and CUDA-runtime values through one module (flow-insensitive, to a fixpoint)."""

    tree: ast.Module
    known_trt: frozenset[str]
    all_versions: frozenset[str]
    majors: dict[str, int]
    params: dict[int, dict[str, str]] = field(default_factory=dict)  # id(FunctionDef) -> param -> kind
    self_attrs: dict[str, str] = field(default_factory=dict)
    uses: list[Use] = field(default_factory=list)
    _changed: bool = False
    _collect: bool = False

    # -- kinds: "trt", "cuda" (the runtime module), "cuda-enum:<Name>", "cuda-result", "hasattr:<name>" -----
    def kind(self, node: ast.AST | None, env: dict[str, str]) -> str | None:
        if isinstance(node, ast.Name):
            return env.get(node.id)
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self" and node.attr in self.self_attrs:
                return self.self_attrs[node.attr]
            inner = self.kind(node.value, env)
            if inner == "trt":
                return None if node.attr == "__version__" else "trt"  # a str, not a TensorRT object
            if inner == "cuda":
                return f"cuda-enum:{node.attr}"
            return None
        if isinstance(node, ast.Call):
            func, args = node.func, node.args
            first = args[0] if args else None
            func_name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if func_name in ("require", "import_module") and isinstance(first, ast.Constant):
                return "trt" if first.value == "tensorrt" else None
            if func_name in ("import_cudart", "_import_cudart"):
                return "cuda"
            if func_name == "hasattr" and len(args) == 2 and isinstance(args[1], ast.Constant):
                return f"hasattr:{args[1].value}"
            if isinstance(func, ast.Name) and func.id in PASS_THROUGH and self.kind(first, env) == "trt":
                return "trt"
            if func_name == "_call" and self.kind(first, env) == "cuda-result":
                return "cuda-result"
            inner = self.kind(func, env)
            if inner == "trt":
                return "trt"
            if inner and inner.startswith("cuda-enum:"):
                return "cuda-result"
            return None
        if isinstance(node, ast.IfExp):
            return self.kind(node.body, env) or self.kind(node.orelse, env)
        return None

    # -- the module's functions, for call-site parameter kinds ---------------------------------------------
    def _functions(self) -> tuple[dict[str, ast.FunctionDef], dict[str, dict[str, ast.FunctionDef]]]:
        plain: dict[str, ast.FunctionDef] = {}
        methods: dict[str, dict[str, ast.FunctionDef]] = {}
        for node in ast.walk(self.tree):
            if isinstance(node, ast.ClassDef):
                methods[node.name] = {f.name: f for f in node.body if isinstance(f, ast.FunctionDef)}
            elif isinstance(node, ast.FunctionDef):
                plain.setdefault(node.name, node)
        return plain, methods

    def _bind_call(self, call: ast.Call, env: dict[str, str], current_class: str | None) -> None:
        plain, methods = self._tables
        target, skip_self = None, False
        if isinstance(call.func, ast.Name):
            if call.func.id in methods and "__init__" in methods[call.func.id]:
                target, skip_self = methods[call.func.id]["__init__"], True
            else:
                target = plain.get(call.func.id)
        elif (
            isinstance(call.func, ast.Attribute)
            and isinstance(call.func.value, ast.Name)
            and call.func.value.id == "self"
            and current_class
        ):
            target, skip_self = methods.get(current_class, {}).get(call.func.attr), True
        if target is None:
            return
        names = [a.arg for a in target.args.posonlyargs + target.args.args][1 if skip_self else 0 :]
        slots = self.params.setdefault(id(target), {})
        pairs = list(zip(names, call.args, strict=False)) + [(k.arg, k.value) for k in call.keywords if k.arg]
        for name, value in pairs:
            value_kind = self.kind(value, env)
            if value_kind in ("trt", "cuda") and slots.get(name) != value_kind:
                slots[name] = value_kind
                self._changed = True

    # -- environments -------------------------------------------------------------------------------------
    def _assign(self, targets: list[ast.expr], value: ast.expr, env: dict[str, str]) -> None:
        for target in targets:
            if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple):
                for t, v in zip(target.elts, value.elts, strict=False):
                    self._assign([t], v, env)
                continue
            value_kind = self.kind(value, env)
            if value_kind is None or isinstance(target, ast.Tuple):
                continue  # tuple-unpacked runtime results are plain Python values (error code, ints, bytes)
            if isinstance(target, ast.Name):
                env[target.id] = value_kind  # local: settled by _scope_env's own passes
            elif (
                isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Name)
                and target.value.id == "self"
                and self.self_attrs.get(target.attr) != value_kind
            ):
                self.self_attrs[target.attr] = value_kind
                self._changed = True

    def _scope_env(self, body: list[ast.stmt], env: dict[str, str]) -> dict[str, str]:
        env = dict(env)
        nodes = [n for n in _walk_scope(body) if isinstance(n, ast.Assign | ast.AnnAssign) and n.value is not None]
        for _ in range(len(nodes) + 1):  # each pass settles at least one more link of a chain
            before = (dict(env), dict(self.self_attrs))
            for node in nodes:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                self._assign(targets, node.value, env)  # type: ignore[arg-type]
            if (env, self.self_attrs) == before:
                break
        return env

    # -- the walk -----------------------------------------------------------------------------------------
    def run(self) -> list[Use]:
        self._tables = self._functions()
        for _ in range(10):
            self._changed = False
            self._block(self.tree.body, self._scope_env(self.tree.body, {}), _Ctx(self.all_versions), None)
            if not self._changed:
                break
        self._collect = True
        self._block(self.tree.body, self._scope_env(self.tree.body, {}), _Ctx(self.all_versions), None)
        return self.uses

    def _record(self, ctx: _Ctx, line: int, name: str, what: str, guarded: bool = False, **extra: object) -> None:
        if not self._collect or (name.startswith("__") and name.endswith("__") and name != "__version__"):
            return
        self.uses.append(Use(line, name, what, ctx.versions, guarded or name in ctx.guards, **extra))  # type: ignore[arg-type]

    def _block(self, body: list[ast.stmt], env: dict[str, str], ctx: _Ctx, cls: str | None) -> None:
        for stmt in body:
            self._stmt(stmt, env, ctx, cls)

    def _stmt(self, stmt: ast.stmt, env: dict[str, str], ctx: _Ctx, cls: str | None) -> None:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            for default in stmt.args.defaults:
                self._expr(default, env, ctx, cls)
            inner = dict(env)
            inner.update(self.params.get(id(stmt), {}))
            self._block(stmt.body, self._scope_env(stmt.body, inner), ctx, cls)
        elif isinstance(stmt, ast.ClassDef):
            for base in stmt.bases:
                self._expr(base, env, ctx, cls)
            if any(self.kind(base, env) == "trt" for base in stmt.bases):
                for method in stmt.body:
                    if isinstance(method, ast.FunctionDef):
                        self._record(ctx, method.lineno, method.name, "trt-override")
            self._block(stmt.body, env, ctx, stmt.name)
        elif isinstance(stmt, ast.If):
            self._expr(stmt.test, env, ctx, cls)
            then_ctx, else_ctx = self._split(stmt.test, env, ctx)
            self._block(stmt.body, env, then_ctx, cls)
            self._block(stmt.orelse, env, else_ctx, cls)
        else:
            for _, value in ast.iter_fields(stmt):
                for item in value if isinstance(value, list) else [value]:
                    if isinstance(item, ast.stmt):
                        self._stmt(item, env, ctx, cls)
                    elif isinstance(item, ast.excepthandler):
                        self._block(item.body, env, ctx, cls)
                    elif isinstance(item, ast.expr | ast.withitem | ast.comprehension | ast.keyword):
                        self._expr(item, env, ctx, cls)

    def _split(self, test: ast.expr, env: dict[str, str], ctx: _Ctx) -> tuple[_Ctx, _Ctx]:
        probes = set()
        for node in ast.walk(test):
            node_kind = self.kind(node, env) if isinstance(node, ast.Name | ast.Call) else None
            if node_kind and node_kind.startswith("hasattr:"):
                probes.add(node_kind.split(":", 1)[1])
        then_ctx = replace(ctx, guards=ctx.guards | probes)
        check = _version_test(test)
        if check is None:
            return then_ctx, ctx
        taken = frozenset(v for v in ctx.versions if check(self.majors[v]))
        return replace(then_ctx, versions=taken), replace(ctx, versions=ctx.versions - taken)

    def _expr(self, node: ast.AST, env: dict[str, str], ctx: _Ctx, cls: str | None) -> None:
        if isinstance(node, ast.IfExp):
            self._expr(node.test, env, ctx, cls)
            then_ctx, else_ctx = self._split(node.test, env, ctx)
            self._expr(node.body, env, then_ctx, cls)
            self._expr(node.orelse, env, else_ctx, cls)
            return
        if isinstance(node, ast.Call):
            self._call(node, env, ctx, cls)
        if isinstance(node, ast.Attribute):
            self._attribute(node, env, ctx)
        for child in ast.iter_child_nodes(node):
            self._expr(child, env, ctx, cls)

    def _call(self, node: ast.Call, env: dict[str, str], ctx: _Ctx, cls: str | None) -> None:
        if not self._collect:
            self._bind_call(node, env, cls)
            return
        func = node.func
        if isinstance(func, ast.Name) and func.id in ("hasattr", "getattr") and len(node.args) >= 2:
            probe = node.args[1]
            is_probe = func.id == "hasattr" or len(node.args) == 3
            if is_probe and isinstance(probe, ast.Constant) and isinstance(probe.value, str):
                owner = self.kind(node.args[0], env)
                if owner == "trt":
                    self._record(ctx, node.lineno, probe.value, "trt-probe", guarded=True)
        if self.kind(func, env) == "trt":  # keyword names are part of pybind11's signature
            for keyword in node.keywords:
                if keyword.arg:
                    self._record(ctx, node.lineno, keyword.arg, "trt")
        if isinstance(func, ast.Attribute) and self.kind(func.value, env) == "cuda":
            keywords = tuple(k.arg for k in node.keywords if k.arg)
            self._record(ctx, node.lineno, func.attr, "cuda-function", nargs=len(node.args), keywords=keywords)

    def _attribute(self, node: ast.Attribute, env: dict[str, str], ctx: _Ctx) -> None:
        inner = self.kind(node.value, env)
        if inner == "trt":
            self._record(ctx, node.lineno, node.attr, "trt")
        elif inner and inner.startswith("cuda-enum:"):
            self._record(ctx, node.lineno, f"{inner.split(':', 1)[1]}.{node.attr}", "cuda-member")
        elif inner == "cuda-result":
            self._record(ctx, node.lineno, node.attr, "cuda-field")
        elif inner is None and node.attr in self.known_trt and API_NAME.fullmatch(node.attr):
            self._record(ctx, node.lineno, node.attr, "trt-known")


def _walk_scope(body: list[ast.stmt]) -> Iterator[ast.AST]:
    """The nodes of a scope, without descending into nested functions and classes."""
    stack: list[ast.AST] = list(body)
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
                stack.append(child)


def _version_test(test: ast.expr) -> Callable[[int], bool] | None:
    """`_major(trt) >= 11` (or `trt_major < 11`, ...) as a predicate on the major version; None otherwise."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and type(test.ops[0]) in _OPS):
        return None
    left, right = test.left, test.comparators[0]
    is_major = (isinstance(left, ast.Call) and isinstance(left.func, ast.Name) and left.func.id == "_major") or (
        isinstance(left, ast.Name) and left.id.endswith("major")
    )
    if not is_major or not (isinstance(right, ast.Constant) and isinstance(right.value, int)):
        return None
    op, bound = _OPS[type(test.ops[0])], right.value
    return lambda major: op(major, bound)


def analyze(source: str, trt: list[TrtNames] = TRT) -> list[Use]:
    known = frozenset().union(*(n.lines for n in trt))
    analysis = Analysis(
        ast.parse(source),
        known_trt=known,
        all_versions=frozenset(n.version for n in trt),
        majors={n.version: n.major for n in trt},
    )
    return analysis.run()


def problems(uses: list[Use], trt: list[TrtNames] = TRT, cuda: list[CudaNames] = CUDA) -> list[str]:
    """What is wrong with `uses` against the lists, one line each (empty: all good)."""
    by_version = {n.version: n for n in trt}
    out = []
    for use in uses:
        where = f"line {use.line}: {use.name!r} ({use.what})"
        if use.what.startswith("trt"):
            required = [by_version[v] for v in sorted(use.versions, key=_version_key)]
            missing = [n.version for n in required if not n.has(use.name)]
            if use.guarded:
                if required and len(missing) == len(required):
                    out.append(f"{where}: guarded, but in no TensorRT version ({', '.join(missing)}): a typo?")
            elif missing:
                out.append(f"{where}: missing from TensorRT {', '.join(missing)}; guard it or use a name all have")
            continue
        for names in cuda:
            if use.what == "cuda-function":
                if use.name not in names.functions:
                    out.append(f"{where}: missing from cuda-python {names.version}")
                    continue
                params = names.functions[use.name]
                if params is not None and (
                    use.nargs + len(use.keywords) != len(params) or not set(use.keywords) <= set(params[use.nargs :])
                ):
                    out.append(
                        f"{where}: called with {use.nargs} positional {use.keywords}, cuda-python "
                        f"{names.version} takes ({', '.join(params)})"
                    )
            elif use.what == "cuda-member" and use.name not in names.members:
                out.append(f"{where}: missing from cuda-python {names.version}")
            elif use.what == "cuda-field" and use.name not in names.fields:
                out.append(f"{where}: no runtime struct of cuda-python {names.version} has that field")
    return out


def binding_modules() -> dict[Path, str]:
    """addunet_edge modules that import tensorrt or the CUDA runtime bindings, with their source."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        if TRT_IMPORT.search(source) or CUDA_IMPORT.search(source):
            out[path] = source
    return out


# --------------------------------------------------------------------------------------------------------
# The data
# --------------------------------------------------------------------------------------------------------
def test_name_lists_cover_the_supported_versions_and_know_what_11_removed() -> None:
    versions = {n.version: n for n in TRT}
    assert {"10.3", "10.13"} <= set(versions) and any(n.major == 11 for n in TRT), sorted(versions)
    everywhere = [
        "create_network",
        "set_tensor_address",
        "execute_async_v3",
        "NetworkDefinitionCreationFlag",
        "STRONGLY_TYPED",
        "EngineInspector",
        "get_engine_information",
        "LayerInformationFormat",
        "ProfilingVerbosity",
        "DLA_STANDALONE",
        "DeviceType",
        "OnnxParser",
        "nptype",
        "__version__",
    ]
    for names in TRT:
        assert [n for n in everywhere if not names.has(n)] == [], names.version
    # Removed in TensorRT 11 ("Removed Python APIs", 10.x to 11.x migration guide); there in every 10.x.
    removed_in_11 = ["FP16", "IInt8Calibrator", "IInt8EntropyCalibrator2", "int8_calibrator", "EXPLICIT_BATCH"]
    for names in TRT:
        present = [n for n in removed_in_11 if names.has(n)]
        assert present == ([] if names.major >= 11 else removed_in_11), names.version
    for names in CUDA:
        assert names.functions.get("cudaMemcpyAsync") == ("dst", "src", "count", "kind", "stream"), names.version
        assert "cudaMemcpyKind.cudaMemcpyHostToDevice" in names.members and "major" in names.fields


def test_binding_modules_are_found() -> None:
    found = {p.relative_to(PACKAGE).as_posix() for p in binding_modules()}
    assert {"engines/tensorrt.py", "engines/trt_build.py", "doctor.py", "benchmarking/system.py"} <= found, found


# --------------------------------------------------------------------------------------------------------
# The rule, on small sources: it fails on a name one version lacks, and guards work
# --------------------------------------------------------------------------------------------------------
PRELUDE = 'from .._lazy import require\n\n\ndef _major(trt):\n    return int(trt.__version__.split(".")[0])\n\n\n'


def _check(body: str) -> list[str]:
    return problems(analyze(PRELUDE + body))


def test_rule_fails_on_a_flag_tensorrt_11_removed() -> None:
    body = 'def build():\n    trt = require("tensorrt", "x")\n    config = trt.Builder(None).create_builder_config()\n'
    assert _check(body + "    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)\n") == []
    found = _check(body + "    config.set_flag(trt.BuilderFlag.FP16)\n")
    assert len(found) == 1 and "'FP16'" in found[0] and "11." in found[0] and "10.3" not in found[0], found


def test_rule_follows_values_through_helpers_parameters_and_self() -> None:
    source = (
        "def _checked(v, what):\n    return v\n\n\n"
        "def _configure(config):\n    config.int8_calibrator = None\n\n\n"
        "class Engine:\n"
        '    def __init__(self):\n        self._trt = require("tensorrt", "x")\n\n'
        "    def build(self):\n"
        "        trt = self._trt\n"
        '        builder = _checked(trt.Builder(None), "b")\n'
        "        _configure(builder.create_builder_config())\n"
        "        self._net = builder.create_network(0)\n"
        "        self._net.mark_outputz(None)\n"
    )
    found = problems(analyze(PRELUDE + source))
    assert any("'int8_calibrator'" in p and "11." in p for p in found), found
    assert any("'mark_outputz'" in p and "10.3" in p for p in found), found  # a typo: in no version
    assert len(found) == 2, found


def test_rule_accepts_version_and_hasattr_guards() -> None:
    body = 'def build():\n    trt = require("tensorrt", "x")\n    config = trt.Builder(None).create_builder_config()\n'
    by_major = "    if _major(trt) < 11:\n        config.set_flag(trt.BuilderFlag.FP16)\n"
    assert _check(body + by_major) == []
    wrong_way = "    if _major(trt) >= 11:\n        config.set_flag(trt.BuilderFlag.FP16)\n"
    assert len(_check(body + wrong_way)) == 1
    as_expression = "    flags = trt.BuilderFlag.FP16 if _major(trt) < 11 else None\n"
    assert _check(body + as_expression) == []
    probe = '    has = hasattr(trt, "IInt8Calibrator")\n    if has:\n        x = trt.IInt8Calibrator\n'
    assert _check(body + probe) == []
    typo = '    if hasattr(trt, "IInt8Calibratr"):\n        x = trt.IInt8Calibratr\n'
    assert len(_check(body + typo)) == 2  # the probe and the use: guarded, yet in no version


def test_rule_checks_tensorrt_callbacks_and_cuda_calls() -> None:
    source = (
        "def make(trt):\n"
        "    class Monitor(trt.IProgressMonitor):\n"
        "        def phase_start(self, name, parent, steps):\n            pass\n\n"
        "        def phase_begin(self, name):\n            pass\n\n"
        "    return Monitor()\n\n\n"
        'def go():\n    make(require("tensorrt", "x"))\n\n\n'
        "def cuda():\n"
        "    rt = import_cudart()\n"
        "    rt.cudaMemcpyAsync(1, 2, 3, rt.cudaMemcpyKind.cudaMemcpyHostToDevice)\n"
        "    rt.cudaMemcpyKind.cudaMemcpyHostToDevize\n"
        "    rt.cudaMallocPitchy(4)\n"
    )
    found = problems(analyze(PRELUDE + source))
    assert sum("'phase_begin'" in p for p in found) == 1, found
    assert not any("'phase_start'" in p for p in found), found
    assert sum("'cudaMemcpyAsync'" in p and "takes (dst, src, count, kind, stream)" in p for p in found) == len(CUDA)
    assert sum("cudaMemcpyHostToDevize" in p for p in found) == len(CUDA)
    assert sum("'cudaMallocPitchy'" in p for p in found) == len(CUDA)


# --------------------------------------------------------------------------------------------------------
# Our code
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted(binding_modules()), ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_binding_names_we_use_exist_in_every_supported_version(path: Path) -> None:
    uses = analyze(path.read_text())
    found = problems(uses)
    assert found == [], f"{path.relative_to(REPO)}:\n" + "\n".join(found)


def test_the_engine_modules_are_really_analyzed() -> None:
    """Guards against a vacuous pass: the analysis sees the calls we know are there."""
    build = {(u.what, u.name) for u in analyze((PACKAGE / "engines" / "trt_build.py").read_text())}
    run = {(u.what, u.name) for u in analyze((PACKAGE / "engines" / "tensorrt.py").read_text())}
    cuda = {(u.what, u.name) for u in analyze((PACKAGE / "engines" / "cuda.py").read_text())}
    assert {
        ("trt", "create_network"),
        ("trt", "STRONGLY_TYPED"),
        ("trt", "parse_from_file"),
        ("trt", "set_memory_pool_limit"),
        ("trt", "GPU_FALLBACK"),
        ("trt", "build_serialized_network"),
        ("trt", "set_timing_cache"),
        ("trt", "ignore_mismatch"),
        ("trt-override", "log"),
        ("trt-override", "phase_start"),
        ("trt-probe", "IProgressMonitor"),
        ("trt-probe", "num_DLA_cores"),
    } <= build
    assert {
        ("trt", "deserialize_cuda_engine"),
        ("trt", "set_input_shape"),
        ("trt", "set_tensor_address"),
        ("trt", "execute_async_v3"),
        ("trt", "nptype"),
    } <= run
    assert {
        ("cuda-function", "cudaMemcpyAsync"),
        ("cuda-function", "cudaGraphInstantiate"),
        ("cuda-member", "cudaMemcpyKind.cudaMemcpyDeviceToHost"),
        ("cuda-member", "cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal"),
        ("cuda-field", "major"),
    } <= cuda
