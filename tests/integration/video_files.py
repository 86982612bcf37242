"""Reading back the videos that `run` writes, for the run tests (test_run.py, test_run_streams.py)."""

from __future__ import annotations

from pathlib import Path

import cv2

# OpenCV's reader as imported: test_run_streams replaces cv2.VideoCapture with stand-in cameras while `run`
# reads, and the tests' own reading of outputs must not meet them.
REAL_CAPTURE = cv2.VideoCapture


def video_info(path: Path) -> tuple[int, tuple[int, int]]:
    """(frames, (height, width)) of a video, decoded to its end: a file that decodes is a playable one."""
    cap = REAL_CAPTURE(str(path))
    assert cap.isOpened(), f"{path} does not open"
    n, shape = 0, (0, 0)
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        n, shape = n + 1, frame.shape[:2]
    cap.release()
    return n, shape
