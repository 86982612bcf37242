#!/usr/bin/env bash
# The wheel a user installs, checked as a user meets it: build it from the checkout's files, check it ships
# every module and data file of the package (and nothing else at top level), install it into a fresh virtual
# environment with the CPU torch, and from a folder outside the repository run `addunet-edge --help`,
# `doctor`, `run` on a noisy photo with no model (the packaged one) and a tiny train -> export -> validate. Any failing step stops the script with a line naming it.
#
# PYTHON=python3.12 picks the interpreter; WHEEL_CHECK_KEEP=1 keeps the work folder for a post-mortem.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python}
work=$(mktemp -d "${TMPDIR:-/tmp}/addunet-edge-wheel.XXXXXX")
start=$SECONDS
step() { echo "wheel check [$((SECONDS - start)) s]: $*" >&2; }
cleanup() {
  if [ "${WHEEL_CHECK_KEEP:-0}" = 1 ]; then echo "wheel check: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
failed() {
  local rc=$? command=${BASH_COMMAND%%$'\n'*}  # its first line: a here-document would print whole
  echo "wheel check FAILED (exit $rc) at line $1: $command" >&2
}
trap 'failed $LINENO' ERR

# A copy of what a fresh clone holds (tracked files, plus new ones git does not ignore): building in the
# checkout itself would ship whatever a previous build left in build/lib, deleted modules included.
step "copying the sources"
mkdir -p "$work/src"
if git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  "$python" - "$repo" "$work/src" <<'EOF'
import shutil
import subprocess
import sys
from pathlib import Path

repo, dst = Path(sys.argv[1]), Path(sys.argv[2])
listing = ["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
for name in filter(None, subprocess.run(listing, capture_output=True, check=True).stdout.decode().split("\0")):
    if (repo / name).is_file():  # a tracked file deleted from the working tree is gone from it
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, dst / name)
EOF
else
  cp -R "$repo/." "$work/src"
  rm -rf "$work/src/build" "$work/src/dist"
fi

step "building the wheel"
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" "$work/src"
wheels=("$work"/dist/addunet_edge-*.whl)
if [ "${#wheels[@]}" -ne 1 ] || [ ! -f "${wheels[0]}" ]; then
  echo "wheel check FAILED: expected one addunet_edge wheel, found: ${wheels[*]}" >&2
  exit 1
fi
wheel=${wheels[0]}

step "checking what $(basename "$wheel") ships"
"$python" - "$wheel" "$work/src" <<'EOF'
"""Every file of the package in the source (modules and any data read at run time) must be in the wheel."""
import configparser
import sys
import zipfile
from pathlib import Path

wheel, src = Path(sys.argv[1]), Path(sys.argv[2])
names = set(zipfile.ZipFile(wheel).namelist())
source = {
    p.relative_to(src).as_posix()
    for p in (src / "addunet_edge").rglob("*")
    if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
}
missing = sorted(source - names)
top = sorted({n.split("/")[0] for n in names} - {"addunet_edge"})
stray = [t for t in top if not t.endswith(".dist-info")]
entry_points = next((n for n in names if n.endswith(".dist-info/entry_points.txt")), None)
scripts = configparser.ConfigParser()
if entry_points:
    scripts.read_string(zipfile.ZipFile(wheel).read(entry_points).decode())
problems = []
if missing:
    problems.append(f"files of the package not in the wheel (declare them in [tool.setuptools.package-data]): {missing}")
if stray:
    problems.append(f"installed at top level besides addunet_edge: {stray}")
if scripts.get("console_scripts", "addunet-edge", fallback=None) != "addunet_edge.cli:main":
    problems.append("no console script addunet-edge = addunet_edge.cli:main")
if problems:
    sys.exit("wheel check FAILED: " + "; ".join(problems))
print(f"wheel check: {len(source)} package files, all shipped", file=sys.stderr)
EOF

step "creating a fresh virtual environment"
"$python" -m venv "$work/venv"
venv_python="$work/venv/bin/python"
# The CPU torch first, as the README says: the wheel's bare `torch` requirement would pull a CUDA build.
# --no-compile: byte-compiling every module of torch and the rest took two of this job's four minutes (on two
# cores); the few modules the commands import are compiled when first imported.
step "installing the CPU torch"
"$venv_python" -m pip install --quiet --no-compile torch==2.13.0
step "installing the wheel and its dependencies"
"$venv_python" -m pip install --quiet --no-compile "$wheel"

# From a folder outside the repository, with nothing of the checkout on the path.
use="$work/use"
mkdir -p "$use"
cd "$use"
unset PYTHONPATH
export PATH="$work/venv/bin:$PATH" OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
"$venv_python" - "$work/venv" <<'EOF'
import sys
from pathlib import Path

import addunet_edge

where = Path(addunet_edge.__file__).resolve()
if not where.is_relative_to(Path(sys.argv[1]).resolve()):
    sys.exit(f"wheel check FAILED: addunet_edge imports from {where}, not from the wheel's environment")
EOF
cli="$work/venv/bin/addunet-edge"
step "addunet-edge --help"
"$cli" --help >help.txt
grep -q "train" help.txt || { echo "wheel check FAILED: --help lists no train command" >&2; exit 1; }
step "addunet-edge doctor"
"$cli" doctor >doctor.txt
step "a tiny train -> export -> validate"
# 160 real digits at 16x16 as the user's own .npz: one epoch of a width-8 model takes seconds.
"$venv_python" - <<'EOF'
import numpy as np

from addunet_edge.data import load_digits_images

images, labels = load_digits_images(size=16)
np.savez("digits16.npz", images=(images[:160, 0] * 255).astype(np.uint8), labels=labels[:160])
EOF
"$cli" train --dataset digits16.npz --epochs 1 --width 8 --depth 2 --seed 0 --out run >train.txt
"$cli" export run --out model.fp32.onnx >export.txt
"$cli" validate run model.fp32.onnx --sigma 25 --limit 16 --json validate.json >validate.txt
"$venv_python" - <<'EOF'
import json
import sys

report = json.load(open("validate.json"))
rows = [r for r in report["rows"] if r["artifact"].endswith("model.fp32.onnx")]
if not report["passed"] or not rows:
    sys.exit(f"wheel check FAILED: validate did not pass the exported ONNX: {report}")
EOF
step "addunet-edge run noisy.png, with no model: the packaged photos model"
"$venv_python" - <<'EOF'
import numpy as np
from skimage import data

from addunet_edge import media

clean = data.camera()[128:256, 192:320]
noisy = np.clip(clean + np.random.default_rng(0).normal(0, 25, clean.shape), 0, 255).round().astype(np.uint8)
media.write_image("noisy.png", noisy)
np.save("clean.npy", clean)
EOF
"$cli" run noisy.png >run.txt 2>&1
"$venv_python" - <<'EOF'
import sys
from pathlib import Path

import numpy as np

from addunet_edge import media
from addunet_edge.metrics import psnr

if not Path("denoised/noisy.png").is_file():
    sys.exit("wheel check FAILED: `run noisy.png` wrote no denoised/noisy.png: " + Path("run.txt").read_text())
clean = np.load("clean.npy").astype(np.float64) / 255
noisy, out = (media.read_image(p).astype(np.float64) / 255 for p in ("noisy.png", "denoised/noisy.png"))
gain = psnr(out.squeeze(), clean) - psnr(noisy.squeeze(), clean)
if not gain > 5:
    sys.exit(f"wheel check FAILED: the packaged model gained only {gain:.2f} dB on a noisy photo (sigma 25)")
print(f"wheel check: the packaged model gained {gain:.2f} dB on a noisy camera crop (sigma 25)", file=sys.stderr)
EOF
step "passed in $((SECONDS - start)) s"
