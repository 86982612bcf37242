"""The Typer app: one thin command per verb, each module registering its own commands."""

from __future__ import annotations

import importlib

import typer

from ._common import Group

app = typer.Typer(
    name="addunet-edge",
    help="Train AddUNet, export it, make FP16/INT8 variants, build TensorRT engines, validate and benchmark them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=Group,
)

# Each module defines register(app). Order is the order of `--help`.
_COMMAND_MODULES: tuple[str, ...] = (
    "quickstart",
    "train",
    "info",
    "export",
    "build",
    "calibrate",
    "finetune",
    "validate",
    "bench",
    "compare",
    "study",
    "run",
    "deepstream",
    "triton",
    "doctor",
)

for _name in _COMMAND_MODULES:
    importlib.import_module(f"{__name__}.{_name}").register(app)


def main() -> None:
    app()
