"""One error hierarchy for every failure a user can cause, each with a stable ``code``.

Messages name the argument, the value received and the fix. The server sends
``{"code": ..., "message": ...}`` and the client re-raises the same class via :data:`BY_CODE`.
Errors raised by the lower layers (``fitsketch.storage``, ``fitsketch.kernels``) are translated
at the engine boundary by :func:`translate`; the engine classes also inherit from them, so
``except fitsketch.storage.SchemaError`` keeps working.
"""
from __future__ import annotations

from .kernels._device import DeviceError as _KernelDeviceError
from .storage import errors as _se


class FitsketchError(Exception):
    """Base class of every fitsketch error."""

    code = "error"


class InvalidArgumentError(FitsketchError, ValueError):
    """An argument has the wrong type or value."""

    code = "invalid_argument"


class UnsupportedDataError(InvalidArgumentError):
    """``data`` is of a kind fitsketch cannot read."""

    code = "unsupported_data"


class EmptyDataError(InvalidArgumentError):
    """The data has no rows or no columns."""

    code = "empty_data"


class EmptyColumnError(InvalidArgumentError):
    """A column holds no usable (non-missing) value."""

    code = "empty_column"


class DuplicateFeatureError(InvalidArgumentError):
    """Two columns share one name."""

    code = "duplicate_feature"


class NonFiniteError(InvalidArgumentError):
    """NaN or infinity where only finite values are allowed."""

    code = "non_finite"


class DimensionError(InvalidArgumentError):
    """An array has the wrong number of dimensions or the wrong width."""

    code = "dimension"


class UnknownMethodError(InvalidArgumentError):
    """A search method that does not exist."""

    code = "unknown_method"


class TooFewSamplesError(InvalidArgumentError):
    """A dataset or class has too few samples to train an autoencoder on."""

    code = "too_few_samples"


class UnknownLossError(InvalidArgumentError):
    """A reconstruction loss that does not exist (or does not apply to these autoencoders)."""

    code = "unknown_loss"


class EncoderNotInstalledError(FitsketchError, ImportError):
    """The package of a text encoder is not installed."""

    code = "encoder_not_installed"


class NoSharedFeaturesError(FitsketchError):
    """No entry shares enough features with the query."""

    code = "no_shared_features"


class FeatureMismatchError(FitsketchError):
    """A method needs the entry's whole feature set and the query lacks some of it."""

    code = "feature_mismatch"


class EntryExistsError(FitsketchError):
    """``add`` with a name that is already registered."""

    code = "entry_exists"


class EntryNotFoundError(FitsketchError, KeyError):
    """``get`` / ``remove`` of a name that is not registered."""

    code = "entry_not_found"

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DeviceError(FitsketchError, _KernelDeviceError):
    """The requested device is not available."""

    code = "device_unavailable"


class SchemaError(FitsketchError, _se.SchemaError):
    """The hub was written by a format this fitsketch cannot read."""

    code = "schema"


class CorruptHubError(FitsketchError, _se.CorruptHubError):
    """A hub file or record cannot be read."""

    code = "corrupt"


class HubNotFoundError(FitsketchError, _se.HubNotFoundError):
    """No hub at the path and ``create=False``."""

    code = "not_found"


class HubBusyError(FitsketchError, _se.HubBusyError):
    """The hub is already open (in this process) or locked by a server."""

    code = "busy"


class CodecError(FitsketchError, _se.CodecError):
    """A value cannot be stored (not msgpack-able, object arrays...)."""

    code = "codec"


class MissingDependencyError(FitsketchError, ImportError):
    """An optional dependency (Ray) is not installed."""

    code = "missing_dependency"


class UnreadableFileError(UnsupportedDataError):
    """A data file does not exist or is not readable Parquet."""

    code = "unreadable_file"


class SchemaDriftError(InvalidArgumentError):
    """The files of one dataset do not share their columns and types."""

    code = "schema_drift"


class DistributedError(FitsketchError):
    """A worker or the cluster failed during a distributed job; nothing was written."""

    code = "distributed"


class ShardConfigError(InvalidArgumentError):
    """The shards of one sharded hub were created with different sketch or search parameters."""

    code = "shard_config"


class ProtocolError(FitsketchError):
    """A malformed frame or request on the socket protocol."""

    code = "protocol"


class FrameTooLargeError(ProtocolError):
    """A frame over the configured size limit."""

    code = "frame_too_large"


class UnauthorizedError(ProtocolError):
    """A TCP connection without the right token."""

    code = "unauthorized"


class InternalError(FitsketchError):
    """The server failed in a way it did not expect (see its log)."""

    code = "internal"


class ConnectionLostError(FitsketchError):
    """The server closed the connection or did not answer in time."""

    code = "connection"


class LabelError(InvalidArgumentError):
    """Class labels (of an entry, its validation data or its model's outputs) are unusable."""

    code = "bad_labels"


class NoLabelsError(FitsketchError):
    """``method="accuracy"`` found no candidate entry registered with labels."""

    code = "no_labels"


class LimitExceededError(InvalidArgumentError):
    """A request asks for more than a stated limit (k, candidates, LSH parameters, query columns):
    the message names the limit; ask for less."""

    code = "limit_exceeded"


class ReadOnlyHubError(FitsketchError):
    """A write on a hub opened with ``readonly=True``, or a hub whose files cannot be written
    (a read-only directory or mount): open it with ``readonly=True`` to read it."""

    code = "read_only"


class DiskFullError(FitsketchError, OSError):
    """The disk (or the file size limit) is full: nothing was written; free space and retry."""

    code = "disk_full"


class SocketInUseError(HubBusyError):
    """Another live server holds the socket path's lock: choose another ``--socket``."""

    code = "socket_in_use"


class DamagedRecordError(CorruptHubError):
    """One stored entry's record is inconsistent (written by an older fitsketch without checks);
    searches skip the entry and say so in the plan. Remove and re-add it."""

    code = "damaged_record"


def _all_subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_subclasses(sub)


BY_CODE: dict[str, type[FitsketchError]] = {FitsketchError.code: FitsketchError}
for _cls in _all_subclasses(FitsketchError):
    BY_CODE.setdefault(_cls.code, _cls)

_LOWER = {
    _se.SchemaError: SchemaError,
    _se.CorruptHubError: CorruptHubError,
    _se.HubNotFoundError: HubNotFoundError,
    _se.HubBusyError: HubBusyError,
    _se.CodecError: CodecError,
    _KernelDeviceError: DeviceError,
}


def translate(exc: BaseException) -> BaseException:
    """The engine error for a lower-layer error (or ``exc`` itself when there is none)."""
    if isinstance(exc, FitsketchError):
        return exc
    for low, high in _LOWER.items():
        if isinstance(exc, low):
            new = high(str(exc))
            new.__cause__ = exc
            return new
    if isinstance(exc, UnicodeEncodeError) and "surrogate" in str(exc):
        new = InvalidArgumentError(
            f"text holds {exc.object[exc.start:exc.end]!r}, a lone surrogate that UTF-8 cannot encode "
            "(text decoded with errors='surrogateescape'?): decode it properly or drop those characters")
        new.__cause__ = exc
        return new
    if isinstance(exc, EOFError):       # np.load of an empty or truncated .npy
        new = UnreadableFileError(f"the file is empty or truncated ({exc}): check it was written completely")
        new.__cause__ = exc
        return new
    if isinstance(exc, _se.StorageError):
        # storage errors with a code of their own (read_only, disk_full) keep it; the rest are corrupt
        cls = BY_CODE.get(getattr(exc, "code", None), CorruptHubError)
        new = (cls if issubclass(cls, FitsketchError) else CorruptHubError)(str(exc))
        new.__cause__ = exc
        return new
    return exc
