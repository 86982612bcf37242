"""GStreamer: appsink -> FrameDenoiser -> appsrc, with PyGObject (gi).

    python examples/gstreamer_appsink.py MODEL [--source "videotestsrc num-buffers=100"] [--sink SINK]

Frames leave the source pipeline through an appsink as RGB (or GRAY8 for a gray model), are denoised in
the `new-sample` callback, and are pushed into a second pipeline through an appsrc. Needs GStreamer and its
Python bindings (on Ubuntu / JetPack: `apt install python3-gi gir1.2-gstreamer-1.0 gstreamer1.0-plugins-base
gstreamer1.0-plugins-good`); without them it says so and exits.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from addunet_edge.engines import open_engine
from addunet_edge.pipeline import FrameDenoiser


def _import_gst():
    try:
        import gi

        gi.require_version("Gst", "1.0")
        from gi.repository import GLib, Gst
    except (ImportError, ValueError) as e:
        sys.exit(
            f"this example needs GStreamer's Python bindings (gi with Gst 1.0), not importable here: {e}\n"
            "install them with your system's package manager, e.g. `apt install python3-gi "
            "gir1.2-gstreamer-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good`"
        )
    Gst.init(None)
    return Gst, GLib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="checkpoint folder, .onnx or .plan")
    parser.add_argument("--source", default="videotestsrc num-buffers=100 ! video/x-raw,width=320,height=240")
    parser.add_argument("--sink", default="videoconvert ! autovideosink")
    parser.add_argument("--tile", type=int, default=None)
    args = parser.parse_args()
    Gst, GLib = _import_gst()

    with open_engine(args.model) as engine:
        denoise = FrameDenoiser(engine, tile=args.tile)
        fmt = "GRAY8" if engine.info.profile.channels == 1 else "RGB"
        channels = 1 if fmt == "GRAY8" else 3
        source = Gst.parse_launch(
            f"{args.source} ! videoconvert ! video/x-raw,format={fmt} ! "
            "appsink name=frames emit-signals=true max-buffers=2 drop=false sync=false"
        )
        sink = Gst.parse_launch(f"appsrc name=denoised is-live=true format=time ! videoconvert ! {args.sink}")
        appsink, appsrc = source.get_by_name("frames"), sink.get_by_name("denoised")
        loop = GLib.MainLoop()

        def on_sample(element) -> object:
            sample = element.emit("pull-sample")
            caps, buffer = sample.get_caps(), sample.get_buffer()
            s = caps.get_structure(0)
            h, w = s.get_value("height"), s.get_value("width")
            ok, info = buffer.map(Gst.MapFlags.READ)
            if not ok:
                return Gst.FlowReturn.ERROR
            try:
                # GStreamer pads rows to 4 bytes: take the stride from the buffer size.
                stride = info.size // h
                rows = np.frombuffer(info.data, np.uint8).reshape(h, stride)[:, : w * channels]
                frame = rows.reshape(h, w) if channels == 1 else rows.reshape(h, w, 3)
                result = denoise(frame.copy())
            finally:
                buffer.unmap(info)
            if appsrc.get_property("caps") is None:
                appsrc.set_property("caps", caps)
            out = Gst.Buffer.new_wrapped(np.ascontiguousarray(result.denoised).tobytes())
            out.pts, out.duration = buffer.pts, buffer.duration
            return appsrc.emit("push-buffer", out)

        def on_message(_bus, message) -> None:
            if message.type == Gst.MessageType.EOS:
                appsrc.emit("end-of-stream")
                loop.quit()
            elif message.type == Gst.MessageType.ERROR:
                err, debug = message.parse_error()
                print(f"GStreamer error: {err} ({debug})", file=sys.stderr)
                loop.quit()

        appsink.connect("new-sample", on_sample)
        bus = source.get_bus()
        bus.add_signal_watch()
        bus.connect("message", on_message)
        sink.set_state(Gst.State.PLAYING)
        source.set_state(Gst.State.PLAYING)
        try:
            loop.run()
        except KeyboardInterrupt:
            pass
        finally:
            source.set_state(Gst.State.NULL)
            sink.set_state(Gst.State.NULL)


if __name__ == "__main__":
    main()
