"""Denoise a video file or a camera with OpenCV and FrameDenoiser, writing the result as a video.

    python examples/opencv_loop.py MODEL INPUT OUTPUT.mp4 [--tile 256] [--max-frames 300]

MODEL is a checkpoint folder, an .onnx or a .plan; INPUT a video file, a camera index (0) or /dev/videoN.
This is the loop `addunet-edge run` runs, without its file handling: copy it into your own application.
"""

from __future__ import annotations

import argparse
import time

import cv2

from addunet_edge.engines import open_engine
from addunet_edge.pipeline import FrameDenoiser


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("input", help="video file, camera index or /dev/videoN")
    parser.add_argument("output", help="output video (.mp4 or .avi)")
    parser.add_argument("--tile", type=int, default=None)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--max-frames", type=int, default=None)
    args = parser.parse_args()

    capture = cv2.VideoCapture(int(args.input) if args.input.isdigit() else args.input)
    if not capture.isOpened():
        raise SystemExit(f"cannot open {args.input}")
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    writer = None
    frames, start = 0, time.perf_counter()
    with open_engine(args.model) as engine:
        denoise = FrameDenoiser(engine, tile=args.tile, overlap=args.overlap)
        try:
            while args.max_frames is None or frames < args.max_frames:
                ok, bgr = capture.read()
                if not ok:
                    break
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # the colour rule speaks RGB
                result = denoise(rgb)
                if writer is None:
                    h, w = rgb.shape[:2]
                    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if args.output.endswith(".avi") else "mp4v"))
                    writer = cv2.VideoWriter(args.output, fourcc, fps, (w, h), True)
                writer.write(cv2.cvtColor(result.denoised, cv2.COLOR_RGB2BGR))
                frames += 1
                if result.class_index is not None and frames % 30 == 0:
                    print(f"frame {frames}: class {result.class_index} ({result.confidence:.2f})")
        except KeyboardInterrupt:  # Ctrl-C ends a camera recording; the file is still closed below
            pass
        finally:
            capture.release()
            if writer is not None:
                writer.release()
    elapsed = time.perf_counter() - start
    print(f"{frames} frames in {elapsed:.1f} s ({frames / max(elapsed, 1e-9):.1f} fps) -> {args.output}")


if __name__ == "__main__":
    main()
