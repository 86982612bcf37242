"""What every command shares: the console, the error-to-exit-code mapping and common option types."""

from __future__ import annotations

import functools
import math
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup, TyperOption

from ..ctrl_c import caused_by_ctrl_c, noting_ctrl_c
from ..errors import AddUNetEdgeError
from ..pretrained import resolve_model, resolve_models

if TYPE_CHECKING:
    from ..calibration.int8 import Int8Budget

# Where output goes to a file or CI log, tables get room instead of folding every cell at 80 columns.
_WIDTH = None if sys.stdout.isatty() else 200
console = Console(stderr=False, highlight=False, width=_WIDTH)
err_console = Console(stderr=True, highlight=False, width=_WIDTH)

F = TypeVar("F", bound=Callable[..., Any])


def _flags_read_as_flags(params: list[Any]) -> list[Any]:
    """Blank the type column of on/off flags (--help included) in the rich help.

    Typer's rich help prints a flag's type (`--side-by-side <bool>`), which reads as if the flag took a
    value; its plain help already leaves it out. An empty metavar is what that column shows instead, and an
    option's metavar is used nowhere else (error messages name its --flag).
    """
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
    return params


class Command(TyperCommand):
    """Every command of the app: flags show no type in `--help`."""

    def get_params(self, ctx: typer.Context) -> list[Any]:
        return _flags_read_as_flags(super().get_params(ctx))


class Group(TyperGroup):
    """The app itself: its `--help` shows no type either."""

    def get_params(self, ctx: typer.Context) -> list[Any]:
        return _flags_read_as_flags(super().get_params(ctx))


def command(app: typer.Typer, name: str | None = None, models: tuple[str, ...] = (), **kwargs: Any) -> Callable[[F], F]:
    """Register `fn` on `app`; the package's own errors become one red line and their exit code; Ctrl-C exits 130.

    `models`: the parameters that name a model (a path, or a packaged model's name such as `photos`, which is
    replaced by its folder here, so every command takes the names the same way).
    """

    def decorator(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kw: Any) -> Any:
            ctrl_c = threading.Event()
            try:
                with noting_ctrl_c(ctrl_c):
                    for key in models:
                        value = kw.get(key)
                        kw[key] = resolve_models(value) if isinstance(value, list) else resolve_model(value)
                    return fn(*args, **kw)
            except Exception as e:
                # A failure after Ctrl-C is the interruption the user asked for, whatever error it surfaced as.
                if ctrl_c.is_set() or caused_by_ctrl_c(e):
                    err_console.print("[yellow]interrupted[/]: completed outputs were kept")
                    raise typer.Exit(code=130) from None
                if not isinstance(e, AddUNetEdgeError):
                    raise
                err_console.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
                raise typer.Exit(code=e.exit_code) from None
            except KeyboardInterrupt:
                err_console.print("[yellow]interrupted[/]: completed outputs were kept")
                raise typer.Exit(code=130) from None

        kwargs.setdefault("cls", Command)
        app.command(name=name, **kwargs)(wrapper)
        return fn

    return decorator


def parse_int_list(text: str, what: str) -> list[int]:
    """'1,8' -> [1, 8]; raises BadParameter with the option's name."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{what} must be a comma-separated list of integers, got {text!r}") from None
    if not values:
        raise typer.BadParameter(f"{what} is empty")
    return values


def parse_float_list(text: str, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{what} must be a comma-separated list of numbers, got {text!r}") from None
    if not values:
        raise typer.BadParameter(f"{what} is empty")
    return values


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """'256x256,512x384' -> [(256, 256), (512, 384)] as (height, width)."""
    sizes = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        try:
            h, w = (int(v) for v in part.split("x"))
        except ValueError:
            raise typer.BadParameter(f"size must look like 256x256, got {part!r}") from None
        if h < 1 or w < 1:
            raise typer.BadParameter(f"size must be positive, got {part!r}")
        sizes.append((h, w))
    if not sizes:
        raise typer.BadParameter("no size given")
    return sizes


# Option types shared by several commands (defined once, as typer's docs recommend).
OutDir = Annotated[Path, typer.Option("--out", "-o", help="Output folder.")]
DatasetOpt = Annotated[
    str,
    typer.Option("--dataset", "-d", help="digits | photos | PATH (image folder with class subfolders, or .npz)."),
]
SigmaOpt = Annotated[float, typer.Option("--sigma", help="Gaussian noise sigma on the 0-255 scale.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (splits, noise, initialisation).")]
ThreadsOpt = Annotated[
    int, typer.Option("--threads", help="CPU threads for torch / onnxruntime (0 = library default).")
]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu | cuda | cuda:N")]
SelfEnsembleOpt = Annotated[
    bool,
    typer.Option(
        "--self-ensemble",
        help="Test-time self-ensemble: denoise the 8 rotations and mirrors of each image, turn the outputs "
        "back and average them (class logits too). Costs about 8x the time.",
    ),
]


def int8_budget(max_psnr_drift: float | None, max_acc_drop: float | None) -> Int8Budget | None:
    """--max-psnr-drift / --max-acc-drop as the int8 fallback's budget; None when neither is given."""
    from ..calibration.int8 import Int8Budget

    if max_psnr_drift is None and max_acc_drop is None:
        return None
    return Int8Budget(
        max_psnr_drift_db=math.inf if max_psnr_drift is None else max_psnr_drift,
        max_acc_drop_pt=100.0 if max_acc_drop is None else max_acc_drop,
    )
