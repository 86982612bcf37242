"""Turning `run`'s inputs (files, folders, cameras, URLs, pipelines) into jobs, each with its output's name.

A `MediaJob` is one image, video or stream and the path, relative to the output folder, its result is
written to; `plan_jobs` expands folders, keeps stems and relative paths, turns JPEG into PNG and gives two
inputs that would write the same output distinct names. Inputs it cannot use are returned as skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import media


@dataclass(frozen=True)
class MediaJob:
    """One input to process and where its output goes (relative to the output folder)."""

    kind: str  # 'image' | 'video' | 'stream'
    source: str
    output: Path


_VIDEO_OUT_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".m4v"})


def _output_name(path: Path) -> Path:
    suffix = path.suffix.lower()
    if suffix in media.VIDEO_SUFFIXES:
        return path.with_suffix(suffix if suffix in _VIDEO_OUT_SUFFIXES else ".mp4")
    return path.with_suffix(media.output_suffix(suffix))


def plan_jobs(inputs: Sequence[str]) -> tuple[list[MediaJob], list[tuple[str, str]]]:
    """Expand inputs (files, folders, cameras, URLs, pipelines) into jobs; returns (jobs, skipped).

    An image or video keeps its stem (out/<stem>.png); a folder keeps relative paths (out/<sub>/<stem>.png);
    a JPEG becomes PNG. Two inputs that would write the same output get the input's extension in the name
    (photo_jpg.png), then a counter.
    """
    jobs: list[MediaJob] = []
    skipped: list[tuple[str, str]] = []
    for i, spec in enumerate(inputs):
        path = Path(spec)
        if path.is_dir():
            found = list(media.iter_media_files(path))
            if not found:
                skipped.append((spec, "folder holds no PNG, JPEG, TIFF or video file"))
            for f in found:
                kind = "video" if f.suffix.lower() in media.VIDEO_SUFFIXES else "image"
                jobs.append(MediaJob(kind, str(f), _output_name(f.relative_to(path))))
        elif path.is_file():
            suffix = path.suffix.lower()
            if suffix in media.IMAGE_SUFFIXES:
                jobs.append(MediaJob("image", spec, _output_name(Path(path.name))))
            elif suffix in media.VIDEO_SUFFIXES:
                jobs.append(MediaJob("video", spec, _output_name(Path(path.name))))
            else:
                skipped.append((spec, f"not an image or video this tool reads ({suffix or 'no extension'})"))
        elif media.is_stream_spec(spec):
            jobs.append(MediaJob("stream", spec, Path(media.stream_name(spec, i) + ".mp4")))
        else:
            skipped.append((spec, "no such file, folder, camera or stream"))
    return _deduplicate(jobs), skipped


def _deduplicate(jobs: list[MediaJob]) -> list[MediaJob]:
    counts: dict[Path, int] = {}
    for j in jobs:
        counts[j.output] = counts.get(j.output, 0) + 1
    taken: set[Path] = set()
    out = []
    for j in jobs:
        name = j.output
        if counts[name] > 1:
            ext = Path(j.source).suffix.lower().lstrip(".") or "in"
            name = name.with_name(f"{name.stem}_{ext}{name.suffix}")
        base, n = name, 2
        while name in taken:
            name = base.with_name(f"{base.stem}_{n}{base.suffix}")
            n += 1
        taken.add(name)
        out.append(MediaJob(j.kind, j.source, name))
    return out
