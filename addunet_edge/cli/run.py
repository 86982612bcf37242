"""`run` (denoise images, videos and camera streams with any artifact) and `deepstream-config`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from .. import media, video_io
from ..artifacts import output_lock
from ..engines import backend_for, options_for
from ..engines.base import Engine
from ..engines.ensemble import SelfEnsemble
from ..errors import AddUNetEdgeError, ConfigError, DataError, ShapeError, StallError
from ..media_runner import MediaRunner
from ..pipeline import FrameDenoiser
from ..pretrained import DEFAULT_MODEL, PRETRAINED, pretrained_dir, resolve_model
from ..progress import progress_bar
from ..run_summary import LatencyHistogram, RunSummary, StreamStats
from ..tiling import DEFAULT_OVERLAP
from ._common import DeviceOpt, OutDir, SelfEnsembleOpt, ThreadsOpt, command, console, err_console

_RUN_HELP_PARAGRAPHS = (
    "Denoise (and classify) images, videos and camera streams with a checkpoint, .onnx or .plan.",
    "INPUT is any mix of: image files (PNG, JPEG, TIFF; 8- or 16-bit; gray or RGB), folders of them (searched "
    "recursively), video files, a camera (an index such as 0, or /dev/video0), an RTSP URL, or a GStreamer "
    "pipeline (needs an OpenCV built with GStreamer). Video and cameras need "
    "`pip install 'addunet-edge\\[camera]'`.",
    "Outputs keep their input's name under --out: out/<stem>.png (a folder keeps its relative paths; JPEG is "
    "written as PNG; PNG and TIFF keep their format and bit depth), out/<stem>.mp4 for a video, "
    "out/camera0.mp4 for a camera. Per-frame class and confidence (softmax of the logits) go to "
    "out/predictions.csv or .jsonl (not for denoise-only models); out/run_summary.json lists what was "
    "processed and skipped.",
    "Colour rule: a gray (1-channel) model on an RGB frame denoises the luma Y = 0.299 R + 0.587 G + 0.114 B "
    "(BT.601) and keeps the chroma; a 3-channel model on a gray frame sees the gray replicated, and its "
    "output is turned back to gray with the same weights. Alpha is passed through.",
    "Large frames are cut into tiles that fit the engine's profile, sharing --overlap pixels and blended; "
    "tiling is exact for a model whose receptive-field radius is at most overlap/4.",
    "Robustness: a file or frame that cannot be read is reported and skipped. Every image is written "
    "atomically; a video is written to a hidden temporary file and renamed when done. On Ctrl-C the video "
    "being written is closed and kept (a camera recording ends that way) and is listed as partial.",
    "Streams: a video, camera or stream is read on a thread of its own. A frame that cannot be used (no "
    "image, another size or pixel type) is dropped with its reason and the stream goes on; a file that ends "
    "before the frame count its header announces (truncated) is processed as far as it decodes and listed as "
    "ended early (exit code 0); a source that delivers no usable frame for --stall-timeout seconds is ended "
    "there, its video kept complete, and the run exits with code 6 once every input is done. "
    "out/run_summary.json has, per stream, the frames read, written and dropped (by reason), how it ended, "
    "and latency percentiles (p50 / p90 / p99, ms per frame from taking it to writing its output).",
    "--self-ensemble denoises the 8 rotations and mirrors of every frame (or tile) and averages the turned-back "
    "outputs and the class logits: often a little cleaner, about 8x the time. Tiles are then chosen to fit the "
    "engine both ways round; a plan built for one non-square size runs the 4 shape-keeping transforms instead, "
    "as the run's summary says.",
    "Long runs: an MP4 keeps an index entry per frame in memory (about 84 bytes) until it is closed, and one "
    "cut off by a kill or a power loss does not play. --segment-frames N writes each video or stream as "
    "files of N frames, out/<stem>_00000.mp4 and on, each complete as soon as it is full: memory stays flat "
    "and a crash costs at most the segment being written.",
)
RUN_HELP = "\n\n".join(_RUN_HELP_PARAGRAPHS)


def _latency_text(latency: LatencyHistogram) -> str:
    p50, p90, p99 = (latency.percentile(q) for q in (50, 90, 99))
    if p50 is None or p90 is None or p99 is None:
        return "-"
    return f"p50 {p50:.1f} / p90 {p90:.1f} / p99 {p99:.1f} ms"


def _print_summary(summary: RunSummary, out: Path) -> None:
    table = Table(title=f"run: {out}", show_header=False, box=None)
    table.add_row("processed", str(len(summary.processed)))
    table.add_row("frames", str(summary.frames))
    table.add_row("frames per second", f"{summary.fps:.2f}")
    table.add_row("latency per frame", _latency_text(summary.latency))
    table.add_row("skipped", str(len(summary.skipped)))
    if summary.self_ensemble is not None:
        table.add_row("self-ensemble", _ensemble_text(summary.self_ensemble))
    if summary.partial:
        table.add_row("partial (interrupted)", ", ".join(summary.partial))
    console.print(table)
    for stream in summary.streams:
        line = (
            f"{stream.input}: {stream.frames_read} frames read, {stream.frames_written} written, "
            f"{stream.frames_dropped} dropped; {stream.ended}: {stream.message}"
        )
        style = "yellow" if stream.ended in (video_io.STALLED, video_io.ENDED_EARLY) or stream.frames_dropped else "dim"
        err_console.print(f"[{style}]stream[/] {escape(line)}", soft_wrap=True)
    for source, reason in summary.skipped:
        text = reason if reason.startswith(f"{source}:") else f"{source}: {reason}"
        err_console.print(f"[yellow]skipped[/] {escape(text)}", soft_wrap=True)


def _ensemble_text(usage: dict[str, Any]) -> str:
    """'x8 on 12 frames or tiles (about 8x the time); 96 engine calls': the self-ensemble's line in the summary."""
    images = usage["images"]
    parts = [f"x8 on {images['8']} frames or tiles (about 8x the time)"] if images["8"] or not images["4"] else []
    if images["4"]:
        parts.append(f"x4 on {images['4']} (no quarter turns: the engine takes one orientation; about 4x the time)")
    return "; ".join(parts) + f"; {usage['engine_calls']} engine calls"


def _self_ensemble(engine: Engine, batch_size: int) -> SelfEnsemble:
    """The engine as a self-ensemble; for a plan that takes no shape both ways round, its 4-transform fallback."""
    try:
        return SelfEnsemble(engine, batch=batch_size)
    except ShapeError as e:
        err_console.print(
            f"[yellow]warning:[/] {escape(str(e))}. Running the 4 shape-keeping transforms instead (x4).",
            soft_wrap=True,
        )
        return SelfEnsemble(engine, fallback=True, batch=batch_size)


def _outputs_text(stream: StreamStats, out: Path) -> str:
    if len(stream.outputs) == 1:
        return f"{out / stream.outputs[0]} is complete"
    return f"its {len(stream.outputs)} files {out / stream.outputs[0]} .. {Path(stream.outputs[-1]).name} are complete"


def _stall_error(summary: RunSummary, out: Path) -> StallError:
    """Exit code 6 for a run whose streams stalled after writing something (see errors.StallError)."""
    parts = [
        f"{s.input} stalled after {s.frames_written} written frames ({s.message}); "
        + (_outputs_text(s, out) if s.frames_written else "nothing was written for it")
        for s in summary.stalled
    ]
    return StallError("; ".join(parts) + f"; {out / 'run_summary.json'} says what was processed")


_USAGE = (
    "addunet-edge run [MODEL] INPUT... [--out DIR] (MODEL is a checkpoint folder, .onnx, .plan or a packaged "
    "model's name; without one, the packaged photos model runs)"
)


def _is_model(spec: str | Path) -> bool:
    try:
        backend_for(spec)
    except AddUNetEdgeError:
        return False
    return True


def _looks_like_input(spec: str | Path) -> bool:
    """An image, video, folder of them, camera or stream: what `run` reads, never a model."""
    path = Path(spec)
    if path.suffix.lower() in media.IMAGE_SUFFIXES | media.VIDEO_SUFFIXES:
        return True
    if path.is_dir():
        return not _is_model(path) and next(media.iter_media_files(path), None) is not None
    return not path.exists() and media.is_stream_spec(str(spec))


def _check_positionals(artifact: Path, inputs: list[str]) -> tuple[Path, list[str]]:
    """The model and the inputs. With no model given (the first argument is an input, and no other is a model),
    the packaged photo denoiser runs them; a model among the inputs is refused with the usage, as is no input."""
    if _looks_like_input(artifact):
        model = next((spec for spec in inputs if _is_model(spec)), None)
        if model is not None:
            raise ConfigError(
                f"run takes the model first: {_USAGE}; {str(artifact)!r} looks like an input and {model!r} like "
                "the model: put the model first"
            )
        err_console.print(f"no model given: using the packaged model {DEFAULT_MODEL!r} ({PRETRAINED[DEFAULT_MODEL]})")
        return pretrained_dir(DEFAULT_MODEL), [str(artifact), *inputs]
    if not inputs:
        raise ConfigError(
            f"no INPUT given after the model {str(artifact)!r}: {_USAGE}; INPUT is one or more images, folders, "
            "videos, camera indices or stream URLs"
        )
    return resolve_model(artifact), inputs


def _nothing_processed(failures: list[BaseException]) -> BaseException:
    """The error for a run that processed nothing: bad input (exit 2) when that is all there was.

    One input: its own error (a file that cannot be decoded is a DataError). Several, all unreadable: a
    DataError. Otherwise (a runtime or disk error among them) a plain failure, exit code 1.
    """
    if len(failures) == 1 and isinstance(failures[0], AddUNetEdgeError):
        return failures[0]
    if failures and all(isinstance(f, AddUNetEdgeError) and f.exit_code == DataError.exit_code for f in failures):
        return DataError(f"nothing was processed: none of the {len(failures)} inputs could be read (listed above)")
    return typer.Exit(code=1)


# The arguments and options of `run`, in the order its --help lists them.
ModelArg = Annotated[
    Path,
    typer.Argument(
        metavar="[MODEL]",
        help="Checkpoint folder, .onnx, .plan, or a packaged model (photos); left out, the packaged photos model.",
    ),
]
# Optional to the parser, so that a lone photo runs with the packaged model and a lone model gets told what is
# missing (checked in run) rather than click's "Missing argument".
InputsArg = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="INPUT",
        help="One or more: images, folders, videos, camera index, /dev/videoN, URL, pipeline.",
        show_default=False,
    ),
]
TileOpt = Annotated[
    int | None,
    typer.Option("--tile", help="Tile size in pixels (default: whole frames if they fit)."),
]
OverlapOpt = Annotated[
    int,
    typer.Option("--overlap", help="Pixels shared by neighbouring tiles (>= 4x receptive radius)."),
]
BatchSizeOpt = Annotated[
    int, typer.Option("--batch-size", help="Tiles or frames per engine call (with --self-ensemble: images per call).")
]
PredictionsOpt = Annotated[str, typer.Option("--predictions", help="Per-frame class file: csv | jsonl | none.")]
SideBySideOpt = Annotated[
    bool, typer.Option("--side-by-side", help="Also write input | denoised under out/side_by_side/.")
]
MaxFramesOpt = Annotated[
    int | None, typer.Option("--max-frames", help="Stop each video or stream after this many frames.")
]
StallTimeoutOpt = Annotated[
    float,
    typer.Option(
        "--stall-timeout",
        help="Seconds a video, camera or stream may deliver no usable frame before it is ended "
        "(its video kept complete; exit code 6).",
    ),
]
SegmentFramesOpt = Annotated[
    int | None,
    typer.Option(
        "--segment-frames",
        help="Write each video or stream as files of this many frames (<stem>_00000.mp4, ...), each "
        "complete when full: for cameras left running for days.",
    ),
]


def _check_options(max_frames: int | None, stall_timeout: float, segment_frames: int | None) -> None:
    if max_frames is not None and max_frames < 1:
        raise ConfigError(f"--max-frames must be >= 1, got {max_frames}")
    if not 0 < stall_timeout < math.inf:  # also refuses nan
        raise ConfigError(f"--stall-timeout must be a number of seconds > 0, got {stall_timeout}")
    if segment_frames is not None and segment_frames < 1:
        raise ConfigError(f"--segment-frames must be >= 1, got {segment_frames}")


def _denoise_inputs(
    artifact: Path,
    out: Path,
    inputs: list[str],
    engine_options: dict[str, Any],
    denoiser_options: dict[str, Any],
    runner_options: dict[str, Any],
    self_ensemble: bool = False,
) -> RunSummary:
    """Open the engine, run every input through it with a progress bar, print the summary; returns it.

    Raises what a run that processed nothing (exit 2 or 1) or whose streams stalled (exit 6) should raise.
    """
    from ..engines import open_engine

    with output_lock(out), open_engine(artifact, **engine_options) as engine:
        if self_ensemble:
            engine = _self_ensemble(engine, denoiser_options["batch_size"])
        denoiser = FrameDenoiser(engine, **denoiser_options)
        progress = progress_bar(True, status=True, unit="frames")
        task = progress.add_task("denoising", total=None, status="0.0 fps")

        def on_frame(source: str, frames: int, _total: int | None) -> None:
            elapsed = progress.tasks[task].elapsed or 0.0
            fps = frames / elapsed if elapsed > 0 else 0.0
            progress.update(task, completed=frames, description=Path(source).name[-40:], status=f"{fps:.1f} fps")

        runner = MediaRunner(denoiser, out, on_frame=on_frame, **runner_options)
        try:
            with progress:
                runner.run(inputs)
        finally:
            _print_summary(runner.summary, out)
    if not runner.summary.processed:
        raise _nothing_processed(runner.failures)
    if runner.summary.stalled:
        raise _stall_error(runner.summary, out)
    return runner.summary


def register(app: typer.Typer) -> None:
    @command(app, "run", help=RUN_HELP)
    def run(
        artifact: ModelArg,
        out: OutDir = Path("denoised"),
        inputs: InputsArg = None,
        tile: TileOpt = None,
        overlap: OverlapOpt = DEFAULT_OVERLAP,
        batch_size: BatchSizeOpt = 4,
        predictions: PredictionsOpt = "csv",
        side_by_side: SideBySideOpt = False,
        max_frames: MaxFramesOpt = None,
        stall_timeout: StallTimeoutOpt = video_io.DEFAULT_STALL_TIMEOUT,
        segment_frames: SegmentFramesOpt = None,
        threads: ThreadsOpt = 0,
        device: DeviceOpt = "cpu",
        self_ensemble: SelfEnsembleOpt = False,
    ) -> None:
        artifact, inputs = _check_positionals(artifact, inputs or [])
        _check_options(max_frames, stall_timeout, segment_frames)
        _denoise_inputs(
            artifact,
            out,
            inputs,
            options_for(artifact, device, threads),
            {"tile": tile, "overlap": overlap, "batch_size": batch_size},
            {
                "predictions": predictions,
                "side_by_side": side_by_side,
                "max_frames": max_frames,
                "stall_timeout": stall_timeout,
                "segment_frames": segment_frames,
            },
            self_ensemble,
        )
