"""Atomic writes, file hashes, manifests and output-folder locks shared by every artifact writer."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import ArtifactError, LockError

MANIFEST_SCHEMA = 1
MANIFEST_SUFFIX = ".manifest.json"
_HASH_CHUNK = 1 << 20
# A full disk, a quota or a file size limit: the user can fix these, so they get a message, not a traceback.
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    The temporary file lives in the same folder so the final rename is atomic on POSIX; on any
    exception (a full disk, Ctrl-C) it is removed and the previous file at `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp makes the file private (0600); artifacts are read by other users (a DeepStream service,
    # a web server), so give them the usual permissions under the user's umask.
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if isinstance(e, OSError) and e.errno in _DISK_FULL:
            raise ArtifactError(
                f"could not write {path}: {os.strerror(e.errno)}; free some space (or raise the file size "
                "limit) and run again. The previous file, if any, is untouched"
            ) from e
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | Path, what: str = "JSON file", max_bytes: int = 16 << 20) -> Any:
    """Read a JSON object; a missing, oversized or malformed file raises ArtifactError naming it."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ArtifactError(f"{what} not found: {path}") from None
    if size > max_bytes:
        raise ArtifactError(f"{what} {path} is {size} bytes, larger than the {max_bytes} allowed")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{what} {path} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ArtifactError(f"{what} {path} must hold a JSON object, found {type(obj).__name__}")
    return obj


def package_versions(*names: str) -> dict[str, str | None]:
    """Installed versions of the named distributions (None where absent); never imports them."""
    out: dict[str, str | None] = {}
    for name in names or ("addunet-edge", "torch", "onnx", "onnxruntime", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def manifest_path(artifact: str | Path) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + MANIFEST_SUFFIX)


def write_manifest(artifact: str | Path, **fields: Any) -> dict[str, Any]:
    """Write `<artifact>.manifest.json` describing `artifact` (which must already be in place)."""
    artifact = Path(artifact)
    manifest: dict[str, Any] = {
        "schema": MANIFEST_SCHEMA,
        "artifact": artifact.name,
        "sha256": sha256_file(artifact),
        "size_bytes": artifact.stat().st_size,
        "created_unix": round(time.time(), 3),
        "host": {"machine": platform.machine(), "python": platform.python_version()},
        "versions": package_versions(),
    }
    manifest.update(fields)
    atomic_write_json(manifest_path(artifact), manifest)
    return manifest


def shape_fields(source: str | Path) -> dict[str, Any]:
    """What an ONNX made from `source` (fp16, int8) keeps of its input contract: `size_multiple`, the multiple
    of 2**depth a strided model's graph was exported for (without it an engine would not pad, and ONNX Runtime
    fails on a 303x384 photo); empty when the source records none."""
    manifest = read_manifest(source, verify_hash=False) or {}
    return {"size_multiple": manifest["size_multiple"]} if "size_multiple" in manifest else {}


def read_manifest(artifact: str | Path, *, verify_hash: bool = True, required: bool = False) -> dict | None:
    """Load the manifest of `artifact`; refuse it if the artifact's hash does not match.

    Returns None when there is no manifest and `required` is False.
    """
    artifact = Path(artifact)
    mpath = manifest_path(artifact)
    if not mpath.exists():
        if required:
            raise ArtifactError(f"{artifact} has no manifest ({mpath.name}); rebuild it with addunet-edge")
        return None
    manifest = read_json(mpath, what="manifest")
    if manifest.get("schema") != MANIFEST_SCHEMA:
        raise ArtifactError(f"manifest {mpath} has schema {manifest.get('schema')!r}, expected {MANIFEST_SCHEMA}")
    expected = manifest.get("sha256")
    if not isinstance(expected, str):
        raise ArtifactError(f"manifest {mpath} carries no sha256 of its artifact")
    if verify_hash:
        actual = sha256_file(artifact)
        if actual != expected:
            raise ArtifactError(
                f"{artifact} does not match its manifest (sha256 {actual[:12]}… != {expected[:12]}…): "
                "the file was modified or truncated; rebuild it or delete the stale manifest"
            )
    return manifest


@contextlib.contextmanager
def output_lock(folder: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on an output folder; a second writer gets LockError at once."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock_file = folder / ".addunet-edge.lock"
    busy = f"another addunet-edge run is writing into {folder}; wait for it or choose another --out"
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LockError(busy) from None
    # The previous holder unlinks the file as it leaves: a lock won on that unlinked inode guards
    # nothing (a third run would create and lock a new file), so it counts as busy.
    try:
        same = os.path.samestat(os.fstat(fd), os.stat(lock_file))
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
        raise LockError(busy)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield folder
    finally:
        # Only the holder removes the lock file, while it still holds the lock.
        with contextlib.suppress(FileNotFoundError):
            lock_file.unlink()
        os.close(fd)


# -- provenance: which checkpoint an artifact was made from ----------------------------------------------

_MAX_LINEAGE = 6  # int8 -> fp32 onnx -> checkpoint is 2 hops; plans add one; room for what comes later


@dataclass
class Provenance:
    """What an artifact was made from, as its chain of manifests says."""

    model: dict[str, Any] | None = None
    in_channels: int | None = None
    num_classes: int | None = None
    weights_sha256: str | None = None
    checkpoint: Path | None = None  # the checkpoint folder the fp32 ONNX was exported from, where it still is
    chain: list[str] = field(default_factory=list)
    broken: str | None = None  # why the chain back to a checkpoint could not be followed


def trace_provenance(
    artifact: str | Path, manifest: Mapping[str, Any] | None = None, *, verify: bool = True
) -> Provenance:
    """Follow manifests back to the exported ONNX (int8 / fp16 / plan -> fp32 ONNX -> checkpoint): the one
    walker of an artifact's lineage (validate checks it against the checkpoint, bench finds its baseline).

    fp16 and int8 manifests name the ONNX they were made from (a file beside them) and its sha256; the
    exported fp32 ONNX's manifest carries the model config, the checkpoint's folder and its weights hash.
    `manifest` is the artifact's own, when the caller has read it already. With `verify`, every file on the
    way must match its manifest's hash; bench only looks for a baseline and reads without checking.
    """
    prov = Provenance()
    path = Path(artifact)
    m = manifest if manifest is not None else read_manifest(path, verify_hash=verify) if path.is_file() else None
    for _ in range(_MAX_LINEAGE):
        if m is None:
            prov.broken = prov.broken or f"{path.name} has no manifest"
            return prov
        prov.chain.append(path.name)
        if prov.in_channels is None:
            c = m.get("in_channels", m.get("channels"))
            prov.in_channels = int(c) if isinstance(c, int) else None
        if prov.num_classes is None and isinstance(m.get("num_classes"), int):
            prov.num_classes = int(m["num_classes"])
        source = m.get("source")
        if isinstance(m.get("model"), dict):
            prov.model = dict(m["model"])
            if isinstance(source, dict):
                prov.weights_sha256 = source.get("weights_sha256")
                if source.get("checkpoint"):
                    prov.checkpoint = _resolve_checkpoint(str(source["checkpoint"]), path.parent)
            return prov
        if not isinstance(source, str):
            prov.broken = f"{path.name}'s manifest names no source"
            return prov
        parent = path.parent / source
        if not parent.is_file():
            prov.broken = f"{source} (which {path.name} was made from) is not beside it"
            return prov
        expected = m.get("source_sha256")
        if verify and isinstance(expected, str) and sha256_file(parent) != expected:
            prov.broken = f"{parent} changed after {path.name} was made from it"
            return prov
        try:
            m = read_manifest(parent, verify_hash=verify)
        except ArtifactError as e:
            prov.broken = str(e)
            return prov
        path = parent
    prov.broken = f"the manifest chain of {Path(artifact).name} is longer than {_MAX_LINEAGE} files"
    return prov


def _resolve_checkpoint(text: str, beside: Path) -> Path | None:
    """The checkpoint folder a manifest names: as written, relative to the artifact, or beside it by name."""
    from .checkpoint import is_checkpoint

    raw = Path(text)
    for candidate in (raw, beside / raw, beside / raw.name):
        if is_checkpoint(candidate):
            return candidate
    return None
