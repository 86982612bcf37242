"""Make the name lists that tests check our TensorRT and CUDA code, and our ONNX, against (no GPU needed).

What it writes (small sorted text files, committed as test data; nothing here runs at test time):

- `tests/data/tensorrt_names/<version>.txt`: every identifier the TensorRT Python bindings register, read from
  the compiled module (`tensorrt_bindings/tensorrt.so`) of the `tensorrt-cu12-bindings` /
  `tensorrt-cu13-bindings` wheels on PyPI, plus the names the wheel's `__init__.py` defines (`nptype`,
  `__version__`, ...). The module cannot be imported without libnvinfer, but pybind11 keeps every class,
  method, property and enum-member name as a C string in `.rodata`; those are read with a pure-Python ELF
  reader. The linker merges a string into the tail of a longer one ("INT8" is stored as the end of "UINT8",
  "Logger" as the end of "ILogger"), so a name is in a version when it equals, or ends, one of the listed
  strings: tests/unit/test_trt_surface.py reads the files that way.
- `tests/data/cuda_names/<version>.txt`: the CUDA runtime bindings of cuda-python (`cuda.bindings.runtime`,
  or `cuda.cudart` before 12.6): every function with its parameter names (from the signatures Cython embeds
  in the compiled module), and every enum member and struct field (`cudaMemcpyKind.cudaMemcpyHostToDevice`,
  `cudaDeviceProp.major`, from the `.pxd`/`.pxi` files shipped in the wheel).
- `tests/data/onnx_tensorrt_ops/<version>.txt`: the ONNX operators onnx-tensorrt's `docs/operators.md` marks
  supported, with their supported types and the opset range.

Regenerate (PyPI through pip for the first two; a clone of https://github.com/onnx/onnx-tensorrt for the third):

    python scripts/trt_binding_names.py trt
    python scripts/trt_binding_names.py cuda
    git clone https://github.com/onnx/onnx-tensorrt /tmp/onnx-tensorrt
    python scripts/trt_binding_names.py onnx-ops --repo /tmp/onnx-tensorrt
    # or from operators.md files at hand:  onnx-ops --file 11.1=/path/to/operators.md

Versions: TensorRT 10.3 (JetPack 6, Jetson Orin), 10.13 (JetPack 7, Jetson Thor) and the newest 11.x on PyPI;
cuda-python 12.3 (the floor in pyproject.toml, old `cuda.cudart` layout), the newest 12.x and 13.x
`cuda-bindings`. The cu12 and cu13 flavours of one TensorRT version ship byte-identical binding modules
(checked for 10.13.3.9), so the flavour does not change a list. Edit the tables below to add a version.
"""

from __future__ import annotations

import argparse
import ast
import re
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"

# list name -> pip requirement of the bindings wheel
TENSORRT_WHEELS = {
    "10.3": "tensorrt-cu12-bindings==10.3.0",  # JetPack 6.x ships TensorRT 10.3.0
    "10.13": "tensorrt-cu13-bindings==10.13.3.9",  # JetPack 7.0 ships TensorRT 10.13.3
    "11.4": "tensorrt-cu13-bindings==11.4.0.106",  # newest 11.x on PyPI when written
}
CUDA_WHEELS = {
    "12.3": "cuda-python==12.3.0",  # pyproject floor: cuda-python>=12.3 (module cuda.cudart)
    "12.9": "cuda-bindings==12.9.10",  # newest 12.x (module cuda.bindings.runtime)
    "13.5": "cuda-bindings==13.5.0",  # newest 13.x
}
# onnx-tensorrt commits: the parsers/onnx submodule of NVIDIA/TensorRT at tags v10.3.0 and v11.1
ONNX_TENSORRT_REFS = {
    "10.3": "62bdde2a04fcd53c2409cb895ee18db445b7e755",
    "11.1": "7c51a63a719180eb5160c874c111746f3fb46a6b",
}
# Wheels are platform-specific; the names are not. Pin one platform so the download is reproducible.
PIP_PLATFORM = ["--python-version", "3.11", "--only-binary=:all:"] + [
    arg
    for tag in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
    for arg in ("--platform", tag)
]

IDENT_TAIL = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*\Z")
PRINTABLE_TAIL = re.compile(rb"[\x20-\x7e]+\Z")
MIN_LENGTH = 3


# --------------------------------------------------------------------------------------------------------
# Reading wheels and ELF files
# --------------------------------------------------------------------------------------------------------
def download(requirement: str, dest: Path) -> Path:
    """The wheel of `requirement` (pip download --no-deps), in `dest`."""
    before = set(dest.glob("*.whl"))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), *PIP_PLATFORM, requirement]
    subprocess.run(cmd, check=True)
    new = sorted(set(dest.glob("*.whl")) - before) or sorted(dest.glob(_wheel_glob(requirement)))
    if not new:
        raise SystemExit(f"pip downloaded no wheel for {requirement}")
    return new[-1]


def _wheel_glob(requirement: str) -> str:
    name, version = requirement.split("==")
    return f"{name.replace('-', '_')}-{version}-*.whl"


def elf_section(data: bytes, wanted: str) -> bytes:
    """The bytes of section `wanted` of a 64-bit little-endian ELF file."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_at = headers[shstrndx][4]
    for name_off, _type, _flags, _addr, offset, size, *_ in headers:
        start = names_at + name_off
        if data[start : data.index(b"\0", start)].decode() == wanted:
            return data[offset : offset + size]
    raise ValueError(f"no {wanted} section")


def _is_mangled(name: str) -> bool:
    """C++ type-info names and mangled symbols (N8nvinfer18DataTypeE, FvRKN...EE, ZN8tensorrt...)."""
    if re.match(r"_?Z[NTSL]\w*\d", name):
        return True
    return bool(re.match(r"P*K?(?:F|N\d|St\d|Sa)", name) and name.endswith("E") and re.search(r"\d", name))


def c_string_names(blob: bytes) -> set[str]:
    """Identifier tails (>= 3 characters) of the NUL-terminated strings in `blob`, mangled names left out."""
    names = set()
    for piece in blob.split(b"\0"):
        run = PRINTABLE_TAIL.search(piece)
        tail = IDENT_TAIL.search(run.group()) if run else None
        if tail and len(tail.group()) >= MIN_LENGTH:
            name = tail.group().decode()
            if not _is_mangled(name):
                names.add(name)
    return names


def python_defined_names(source: str) -> set[str]:
    """Names a package's `__init__.py` defines at module level (def, class, X = ..., X.attr = ...)."""
    names: set[str] = set()

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.FunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    for sub in ast.walk(target):
                        if isinstance(sub, ast.Name):
                            names.add(sub.id)
                        elif isinstance(sub, ast.Attribute):
                            names.add(sub.attr)
            for block in ("body", "orelse", "finalbody"):  # if / try / for / with at module level
                if not isinstance(node, ast.FunctionDef | ast.ClassDef) and isinstance(
                    getattr(node, block, None), list
                ):
                    visit(getattr(node, block))
            for handler in getattr(node, "handlers", []):
                visit(handler.body)

    visit(ast.parse(source).body)
    return {n for n in names if len(n) >= MIN_LENGTH}


def write_list(path: Path, header: list[str], lines: set[str] | list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = sorted(set(lines))
    path.write_text("".join(f"# {h}\n" for h in header) + "".join(f"{line}\n" for line in body))
    print(f"{path.relative_to(REPO)}: {len(body)} entries, {path.stat().st_size} bytes")


# --------------------------------------------------------------------------------------------------------
# TensorRT
# --------------------------------------------------------------------------------------------------------
def tensorrt_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        members = zf.namelist()
        module = next(m for m in members if re.fullmatch(r"tensorrt[^/]*/tensorrt[^/]*\.so", m))
        init = next(m for m in members if re.fullmatch(r"tensorrt[^/]*/__init__\.py", m))
        names = c_string_names(elf_section(zf.read(module), ".rodata"))
        names |= python_defined_names(zf.read(init).decode())
    return names


def make_tensorrt(work: Path) -> None:
    for version, requirement in TENSORRT_WHEELS.items():
        wheel = download(requirement, work)
        header = [
            f"TensorRT {version} Python bindings: {wheel.name}",
            "identifier tails of the C strings in the module's .rodata, plus the names its __init__.py defines;",
            "a name is present when it equals or ends one of these lines (the linker merges string tails).",
            "Regenerate: python scripts/trt_binding_names.py trt",
        ]
        write_list(DATA / "tensorrt_names" / f"{version}.txt", header, tensorrt_names(wheel))


# --------------------------------------------------------------------------------------------------------
# cuda-python
# --------------------------------------------------------------------------------------------------------
_SIGNATURE = re.compile(rb"\A(cuda[A-Za-z0-9_]*)\(([^()]*)\)\Z")
_BLOCK = re.compile(r"^(\s*)(?:cdef|ctypedef)\s+(enum|struct)\s+(\w+)\s*:\s*$")


def _parameter_name(text: str) -> str:
    text = text.split("=", 1)[0].split(":", 1)[0].strip()
    return text.split()[-1].lstrip("*") if text else ""


def cuda_functions(so: bytes, module: str) -> set[str]:
    """`cudaX(a, b, c)` for every function of `module` whose signature Cython embedded; bare `cudaX` otherwise."""
    qualified = re.compile(re.escape(module.encode()) + rb"\.(cuda[A-Za-z0-9_]*)\Z")
    functions: dict[str, str] = {}
    for piece in so.split(b"\0"):
        for line in piece.split(b"\n"):
            line = line.strip()
            if m := qualified.match(line):
                functions.setdefault(m.group(1).decode(), m.group(1).decode())
    for piece in so.split(b"\0"):
        for line in piece.split(b"\n"):
            m = _SIGNATURE.match(line.strip())
            if m and m.group(1).decode() in functions:
                params = [_parameter_name(p) for p in m.group(2).decode().split(",") if p.strip()]
                functions[m.group(1).decode()] = f"{m.group(1).decode()}({', '.join(params)})"
    return set(functions.values())


def cuda_members(sources: list[str]) -> set[str]:
    """`Enum.member` and `Struct.field` from Cython declarations (`cdef enum X:`, `cdef struct X:` blocks)."""
    out = set()
    for source in sources:
        lines = source.splitlines()
        for i, line in enumerate(lines):
            m = _BLOCK.match(line)
            if not m:
                continue
            indent, kind, owner = len(m.group(1)), m.group(2), m.group(3)
            for body in lines[i + 1 :]:
                if not body.strip() or body.strip().startswith("#"):
                    continue
                if len(body) - len(body.lstrip()) <= indent:
                    break
                text = body.strip()
                if text.endswith(":") or text in ("pass",):
                    continue
                if kind == "enum":
                    member = text.split("=", 1)[0].strip()
                else:
                    member = re.sub(r"\[.*\]", "", text).split()[-1].lstrip("*") if text.split() else ""
                if re.fullmatch(r"[A-Za-z_]\w*", member) and not owner.startswith("anon_"):
                    out.add(f"{owner}.{member}")
    return out


def cuda_names(wheel: Path) -> tuple[str, set[str]]:
    with zipfile.ZipFile(wheel) as zf:
        members = zf.namelist()
        so = next(
            (m for m in members if re.fullmatch(r"cuda/bindings/runtime\.cpython[^/]*\.so", m)),
            None,
        ) or next(m for m in members if re.fullmatch(r"cuda/cudart\.cpython[^/]*\.so", m))
        module = "cuda.bindings.runtime" if "bindings" in so else "cuda.cudart"
        decl = [
            m
            for m in members
            if m.endswith((".pxd", ".pxi"))
            and ("runtime" in m or "cudart" in m)
            and "/_bindings/" not in m
            and "/_internal/" not in m
            and "/_lib/" not in m
            and "/tests/" not in m
        ]
        names = cuda_functions(zf.read(so), module) | cuda_members([zf.read(m).decode() for m in decl])
    return module, names


def make_cuda(work: Path) -> None:
    for version, requirement in CUDA_WHEELS.items():
        wheel = download(requirement, work)
        module, names = cuda_names(wheel)
        header = [
            f"cuda-python {version} runtime bindings ({module}): {wheel.name}",
            "cudaFunction(parameters) from the signatures embedded in the compiled module; Enum.member and",
            "Struct.field from the wheel's Cython declarations. Regenerate: python scripts/trt_binding_names.py cuda",
        ]
        write_list(DATA / "cuda_names" / f"{version}.txt", header, names)


# --------------------------------------------------------------------------------------------------------
# onnx-tensorrt operators
# --------------------------------------------------------------------------------------------------------
def parse_operators_md(text: str) -> tuple[tuple[int, int] | None, dict[str, list[str]]]:
    """(opset range, {operator: supported types}) of the operators marked supported ('Y...')."""
    opsets = re.search(r"inclusive range of opset (\d+) to opset (\d+)", text)
    supported: dict[str, list[str]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", cells[0]) or cells[0] == "Operator":
            continue
        if cells[1].startswith("Y"):
            types = [t.strip() for t in cells[2].split(",") if t.strip()] if len(cells) > 2 else []
            supported[cells[0]] = types
    return ((int(opsets.group(1)), int(opsets.group(2))) if opsets else None), supported


def write_ops(version: str, text: str, source: str, note: str = "") -> None:
    opsets, supported = parse_operators_md(text)
    if not supported:
        raise SystemExit(f"no supported operators found in {source}")
    header = [
        f"ONNX operators TensorRT {version}'s ONNX parser supports: onnx-tensorrt docs/operators.md, {source}",
        "one line per supported operator: name, then its supported types (comma-separated, may be empty)",
        f"opsets {opsets[0]}-{opsets[1]}" if opsets else "opsets: not stated",
        *([note] if note else []),
        "Regenerate: python scripts/trt_binding_names.py onnx-ops --repo <onnx-tensorrt clone>",
    ]
    lines = [f"{op} {','.join(types)}".rstrip() for op, types in supported.items()]
    write_list(DATA / "onnx_tensorrt_ops" / f"{version}.txt", header, lines)


def make_onnx_ops(repo: Path | None, files: list[str], notes: list[str]) -> None:
    note_of = dict(n.split("=", 1) for n in notes)
    for spec in files:
        version, _, path = spec.partition("=")
        write_ops(version, Path(path).read_text(), f"from {Path(path).name}", note_of.get(version, ""))
    if repo is None:
        return
    for version, ref in ONNX_TENSORRT_REFS.items():
        text = subprocess.run(
            ["git", "-C", str(repo), "show", f"{ref}:docs/operators.md"], check=True, capture_output=True, text=True
        ).stdout
        write_ops(version, text, f"commit {ref}", note_of.get(version, ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["trt", "cuda", "onnx-ops"])
    parser.add_argument("--repo", type=Path, help="onnx-tensorrt clone (onnx-ops)")
    parser.add_argument("--file", action="append", default=[], help="VERSION=operators.md (onnx-ops)")
    parser.add_argument("--note", action="append", default=[], help="VERSION=TEXT: a provenance line (onnx-ops)")
    parser.add_argument("--work", type=Path, help="where wheels go (default: a temporary folder)")
    args = parser.parse_args()
    if args.what == "onnx-ops":
        if args.repo is None and not args.file:
            parser.error("onnx-ops needs --repo or --file")
        make_onnx_ops(args.repo, args.file, args.note)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        (make_tensorrt if args.what == "trt" else make_cuda)(work)


if __name__ == "__main__":
    main()
