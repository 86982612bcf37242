"""A real Triton Inference Server serves our engine; real Triton clients talk to it over HTTP.

The server is the `tritonserver` binary that nvidia-pytriton ships (its only backend is Python). The
repository is the one `write_triton_model` writes for the tiny fp32 ONNX, with one change: the platform
`onnxruntime_onnx` becomes `backend: "python"` and a model.py beside model.onnx serves it through
`open_engine`. Everything else Triton reads (names, types, dims, max batch, dynamic batching, instance group)
is exactly what we generate, so this also proves a real server accepts it.

Bounded: the server listens on 127.0.0.1 only (HTTP; gRPC and metrics off), every wait has a deadline, and
the fixture stops it (SIGINT, then SIGKILL) whatever the test does. The test is skipped, with the reason,
only where the server cannot run: nvidia-pytriton not installed, no stub for this Python, or the process
dies before it answers.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from addunet_edge.engines import open_engine
from addunet_edge.triton import write_triton_model

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is in the dev extra")
from tritonclient.utils import InferenceServerException  # noqa: E402  (after the skip above)

MODEL = "tiny"
MAX_BATCH = 8
CLIENTS = 8
# Long enough that eight requests sent together meet in the queue even on two busy cores; short enough
# that the test never notices it.
QUEUE_DELAY_US = 200_000
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0

# The Python backend's model: the dynamic batcher hands it several requests at once, and it runs them as one
# batch through our engine, as Triton's ONNX Runtime backend does. Tensors cross through DLPack: this stub's
# numpy bridge (as_numpy(), Tensor(name, ndarray)) reads arrays through pybind11 structs that numpy 2
# changed, and silently returns zeros and empty outputs; DLPack is a stable ABI.
MODEL_PY = """
import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from addunet_edge import open_engine


class TritonPythonModel:
    def initialize(self, args):
        here = Path(args["model_repository"]) / args["model_version"]
        self.engine = open_engine(here / "model.onnx", threads=1)
        self.log = here / "batches.jsonl"

    def execute(self, requests):
        arrays = [np.from_dlpack(pb_utils.get_input_tensor_by_name(r, "noisy")) for r in requests]
        responses = [None] * len(requests)
        # The batcher only groups requests of one shape, but nothing breaks if it ever mixes them.
        by_shape = {}
        for i, a in enumerate(arrays):
            by_shape.setdefault(a.shape[1:], []).append(i)
        for indices in by_shape.values():
            batch = np.concatenate([arrays[i] for i in indices])
            out = self.engine(batch)
            with open(self.log, "a") as f:
                f.write(json.dumps({"requests": len(indices), "batch": int(batch.shape[0])}) + "\\n")
            start = 0
            for i in indices:
                n = arrays[i].shape[0]
                tensors = [
                    pb_utils.Tensor.from_dlpack(name, np.ascontiguousarray(value[start : start + n]))
                    for name, value in (("denoised", out.denoised), ("logits", out.logits))
                ]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                start += n
        return responses

    def finalize(self):
        self.engine.close()
"""


@dataclass
class Server:
    url: str
    repo: Path
    onnx: Path
    process: subprocess.Popen
    log: Path


def _tritonserver() -> tuple[Path, Path, Path]:
    """(tritonserver binary, Python backend folder, the stub for this Python), or skip saying what is missing."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("nvidia-pytriton is not installed: it carries the tritonserver binary this test runs")
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    binary = root / "bin" / "tritonserver"
    backend = root / "backends" / "python"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    for path in (binary, backend / "libtriton_python.so", stub):
        if not path.is_file():
            pytest.skip(f"nvidia-pytriton has no {path.relative_to(root)} (Python {version}): cannot start Triton")
    return binary, backend, stub


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_env(binary: Path) -> dict[str, str]:
    env = dict(os.environ)
    libs = [str(binary.parents[3] / "nvidia_pytriton.libs")]
    # The stub embeds libpython: load this interpreter's own, not whichever libpython3.X the system has
    # (a different patch release under this interpreter's standard library fails inside multiprocessing).
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        libs.insert(0, str(sysconfig.get_config_var("LIBDIR")))
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, *filter(None, [env.get("LD_LIBRARY_PATH")])])
    # The embedded interpreter finds its prefix (and so this virtual environment's packages) through the
    # first `python3` on PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _as_python_backend(config_path: Path) -> None:
    """Swap only the platform for the Python backend; everything else stays as write_triton_model wrote it."""
    config = model_config_pb2.ModelConfig()
    text_format.Parse(config_path.read_text(), config)
    config.ClearField("platform")
    config.backend = "python"
    config_path.write_text(text_format.MessageToString(config))


def _errors(log: Path) -> str:
    """Triton's error lines (its 'E' lines, or anything a failing loader printed), then the log's last lines."""
    lines = log.read_text(errors="replace").splitlines()
    errors = [line for line in lines if line.startswith("E") or "rror" in line]
    return "\n".join([*errors[:20], "...", *lines[-15:]])


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from addunet_edge.build import make_precision_onnx

    binary, backend, stub = _tritonserver()
    # Only now: a machine that cannot run the server skips without training the model first.
    tiny_checkpoint: Path = request.getfixturevalue("tiny_checkpoint")
    work = tmp_path_factory.mktemp("triton")
    onnx_path = make_precision_onnx(tiny_checkpoint, work / "onnx", "fp32", progress=False)
    model = write_triton_model(
        onnx_path,
        work / "repo",
        name=MODEL,
        kind="cpu",
        max_batch_size=MAX_BATCH,
        preferred_batch_sizes=[MAX_BATCH],
        queue_delay_us=QUEUE_DELAY_US,
    )
    _as_python_backend(model.config_path)
    (model.model_path.parent / "model.py").write_text(MODEL_PY)
    # Triton runs the stub it finds beside the backend library, so the backend folder is assembled here
    # (site-packages may be read-only) with the stub for this Python.
    backends = work / "backends"
    (backends / "python").mkdir(parents=True)
    for item in backend.iterdir():
        if item.is_file():
            (backends / "python" / item.name).symlink_to(item)
    shutil.copy2(stub, backends / "python" / "triton_python_backend_stub")

    port = _free_port()
    log = work / "tritonserver.log"
    command = [
        str(binary),
        f"--model-repository={work / 'repo'}",
        f"--backend-directory={backends}",
        "--http-address=127.0.0.1",
        f"--http-port={port}",
        "--allow-grpc=false",
        "--allow-metrics=false",
        "--model-control-mode=none",
        "--exit-on-error=false",  # a model that fails to load must fail the test, not look like no server
        f"--exit-timeout-secs={int(STOP_TIMEOUT_S) - 5}",
        "--log-verbose=0",
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=_server_env(binary))
    url = f"127.0.0.1:{port}"
    try:
        client = httpclient.InferenceServerClient(url, network_timeout=5.0)
        deadline = time.monotonic() + START_TIMEOUT_S
        live = False
        while time.monotonic() < deadline and process.poll() is None:
            try:
                live = client.is_server_live()
            except Exception:  # connection refused until the HTTP service is up
                live = False
            if live:
                break
            time.sleep(0.2)
        if not live:
            _stop(process)
            pytest.skip(f"tritonserver did not start (exit code {process.returncode}) on this machine:\n{_errors(log)}")
        # Started, so a model that did not load is our config's fault: fail, never skip. (With model control
        # 'none' every model is loaded or refused before the HTTP service opens.)
        ready = client.is_model_ready(MODEL)
        index = client.get_model_repository_index()
        client.close()
        if not ready:
            pytest.fail(f"Triton did not load our model {index}:\n{_errors(log)}")
        yield Server(url=url, repo=work / "repo", onnx=onnx_path, process=process, log=log)
    finally:
        _stop(process)


def _request(x: np.ndarray, dtype: str = "FP32") -> list:
    inp = httpclient.InferInput("noisy", list(x.shape), dtype)
    inp.set_data_from_numpy(x, binary_data=True)
    return [inp]


def _outputs() -> list:
    return [httpclient.InferRequestedOutput(n, binary_data=True) for n in ("denoised", "logits")]


def test_concurrent_clients_get_what_the_engine_computes_and_are_batched(server: Server) -> None:
    rng = np.random.default_rng(7)
    inputs = [rng.random((1, 1, 16, 16), dtype=np.float32) for _ in range(CLIENTS)]
    client = httpclient.InferenceServerClient(server.url, concurrency=CLIENTS, network_timeout=60.0)
    try:
        before = client.get_inference_statistics(MODEL)["model_stats"][0]
        # All sent before any answer is read: they are in flight together, on CLIENTS connections.
        pending = [client.async_infer(MODEL, _request(x), outputs=_outputs()) for x in inputs]
        results = [p.get_result(timeout=60) for p in pending]
        # Triton counts an execution once it has finished with it, which may be just after the responses left.
        deadline = time.monotonic() + 10
        while True:
            after = client.get_inference_statistics(MODEL)["model_stats"][0]
            done = int(after.get("inference_count", 0)) - int(before.get("inference_count", 0))
            if done >= CLIENTS or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        client.close()

    with open_engine(server.onnx, threads=1) as engine:
        for x, result in zip(inputs, results, strict=True):
            direct = engine(x)
            np.testing.assert_array_equal(result.as_numpy("denoised"), direct.denoised)
            np.testing.assert_array_equal(result.as_numpy("logits"), direct.logits)

    inferences = int(after["inference_count"]) - int(before.get("inference_count", 0))
    executions = int(after["execution_count"]) - int(before.get("execution_count", 0))
    assert inferences == CLIENTS, after
    assert executions < inferences, f"no batching: {executions} executions for {inferences} requests"
    sizes = {int(b["batch_size"]) for b in after["batch_stats"]}
    assert max(sizes) > 1, f"Triton's batch statistics show only batch sizes {sorted(sizes)}"
    # And our engine itself ran those grouped batches (model.py logs each call).
    calls = [json.loads(line) for line in (server.repo / MODEL / "1" / "batches.jsonl").read_text().splitlines()]
    assert max(call["batch"] for call in calls) > 1, calls


def test_wrong_shape_or_dtype_gets_tritons_error_and_the_server_keeps_serving(server: Server) -> None:
    client = httpclient.InferenceServerClient(server.url, network_timeout=30.0)
    try:
        good = np.random.default_rng(1).random((1, 1, 16, 16), dtype=np.float32)
        cases = {
            "dtype": (
                _request(good.astype(np.float64), "FP64"),
                "data-type is 'FP64', but model 'tiny' expects 'FP32'",
            ),
            "channels": (_request(np.zeros((1, 3, 16, 16), np.float32)), "Expected [-1,1,-1,-1], got [1,3,16,16]"),
            "rank": (_request(np.zeros((1, 16, 16), np.float32)), "Expected [-1,1,-1,-1], got [1,16,16]"),
            "batch": (_request(np.zeros((MAX_BATCH + 1, 1, 16, 16), np.float32)), f"batch-size must be <= {MAX_BATCH}"),
        }
        for what, (request, message) in cases.items():
            with pytest.raises(InferenceServerException) as error:
                client.infer(MODEL, request, outputs=_outputs())
            # Triton's own validation against the config we wrote: a 400 naming the problem.
            assert str(error.value.status()) == "400" and message in str(error.value), (what, str(error.value))
        assert server.process.poll() is None, "the server died on a bad request"
        result = client.infer(MODEL, _request(good), outputs=_outputs())
        with open_engine(server.onnx, threads=1) as engine:
            np.testing.assert_array_equal(result.as_numpy("denoised"), engine(good).denoised)
    finally:
        client.close()
