"""The package's exception tree: every mistake a user can make maps to one of these."""

from __future__ import annotations


class AddUNetEdgeError(Exception):
    """Base class of every error this package raises on purpose."""

    exit_code = 1


class ConfigError(AddUNetEdgeError, ValueError):
    """A configuration value is invalid or inconsistent."""

    exit_code = 2


class DataError(AddUNetEdgeError):
    """A dataset, image or array cannot be used (names the file where there is one)."""

    exit_code = 2


class CheckpointError(AddUNetEdgeError):
    """A checkpoint folder is missing, corrupt or does not match its config."""

    exit_code = 2


class ArtifactError(AddUNetEdgeError):
    """An ONNX file, plan or manifest is corrupt, tampered with or does not fit."""

    exit_code = 2


class MissingDependencyError(AddUNetEdgeError, ImportError):
    """An optional package (tensorrt, cuda-python, opencv, ...) is needed but not installed."""

    exit_code = 4


class DeviceError(AddUNetEdgeError):
    """The requested device (a GPU, a DLA core) is not available."""

    exit_code = 4


class ParityError(AddUNetEdgeError):
    """An exported artifact does not reproduce the PyTorch model within tolerance."""

    exit_code = 3


class BudgetError(AddUNetEdgeError):
    """An artifact breaks its drift budget."""

    exit_code = 3


class ShapeError(AddUNetEdgeError, ValueError):
    """An input has the wrong rank, channel count, dtype or lies outside an engine's profile."""

    exit_code = 2


class LockError(AddUNetEdgeError):
    """Another run is writing into the same output folder."""

    exit_code = 5


class StallError(AddUNetEdgeError):
    """A video, camera or stream delivered no usable frame for longer than the stall timeout.

    Not a crash and not bad input: the outputs written before the stall are complete. A distinct code lets a
    supervisor (systemd Restart=on-failure, a shell loop) restart a camera that stalled, where 0 would read
    as a recording that ended the way its source meant it to.
    """

    exit_code = 6
