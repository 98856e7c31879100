"""The contract's publish and kv, checked: an argument of the wrong type is a TypeError that
names it (the raw bindings, `wit_world.imports.publish` and `wit_world.imports.kv`, raise a
CastError that does not say which argument was wrong)."""

from typing import Optional, Sequence, Tuple, Union

from wit_world.imports import kv as _kv
from wit_world.imports import publish as _publish
from wit_world.imports.kv import Entry

_Bytes = Union[bytes, bytearray, memoryview, str]


def publish(
    subject: str,
    payload: _Bytes,
    headers: Sequence[Tuple[str, str]] = (),
    msg_id: Optional[str] = None,
):
    """Publishes `payload` (a str is sent as UTF-8) to `subject` with `headers` ((name, value)
    pairs) and waits until a stream has stored it; returns the stream's ack (`stream`, `seq`,
    `duplicate`). `msg_id` is JetStream's dedup id; None: the host derives one.

    Raises TypeError for an argument of the wrong type, naming it, and `Err(PublishError_...)`
    (componentize_py_types.Err) when the message is not stored."""
    if not isinstance(subject, str):
        raise TypeError(f"publish: subject must be a str, got {_describe(subject)}")
    payload = _bytes(payload, "publish: payload")
    if isinstance(headers, (str, bytes)) or not hasattr(headers, "__iter__"):
        raise TypeError(f"publish: headers must be a list of (name, value) pairs, got {_describe(headers)}")
    pairs = []
    for i, header in enumerate(headers):
        ok = isinstance(header, (tuple, list)) and len(header) == 2
        if not ok or not all(isinstance(part, str) for part in header):
            raise TypeError(f"publish: headers[{i}] must be a (name, value) pair of str, got {_describe(header)}")
        pairs.append((header[0], header[1]))
    if msg_id is not None and not isinstance(msg_id, str):
        raise TypeError(f"publish: msg_id must be a str or None, got {_describe(msg_id)}")
    return _publish.publish(subject, payload, pairs, msg_id)


class _Kv:
    """The contract's kv (`from jetwasm import kv`), checked: `kv.get`, `kv.put`, `kv.create`,
    `kv.update`, `kv.delete`. A value may be bytes or a str (sent as UTF-8). Each raises
    TypeError for an argument of the wrong type, naming it, and `Err(KvError_...)`
    (componentize_py_types.Err; the classes are in wit_world.imports.kv) when the bucket
    refuses: e.g. `KvError_WrongRevision()` when `update` or `create` lost a race."""

    def get(self, bucket: str, key: str) -> Optional[Entry]:
        """The key's value (`.value`, bytes) and revision (`.revision`), or None when it is
        absent or deleted."""
        _names("kv.get", bucket, key)
        return _kv.get(bucket, key)

    def put(self, bucket: str, key: str, value: _Bytes) -> int:
        """Writes `value` whatever the key holds; returns the new revision."""
        _names("kv.put", bucket, key)
        return _kv.put(bucket, key, _bytes(value, "kv.put: value"))

    def create(self, bucket: str, key: str, value: _Bytes) -> int:
        """Writes `value` only if the key is absent (or deleted); returns the new revision.
        Raises Err(KvError_WrongRevision()) when the key is present."""
        _names("kv.create", bucket, key)
        return _kv.create(bucket, key, _bytes(value, "kv.create: value"))

    def update(self, bucket: str, key: str, value: _Bytes, revision: int) -> int:
        """Writes `value` only if the key is still at `revision` (an entry's `.revision`);
        returns the new revision. Raises Err(KvError_WrongRevision()) when someone wrote
        since: read again and retry."""
        _names("kv.update", bucket, key)
        value = _bytes(value, "kv.update: value")
        if isinstance(revision, bool) or not isinstance(revision, int) or revision < 0:
            raise TypeError(f"kv.update: revision must be an int >= 0 (an entry's .revision), got {_describe(revision)}")
        return _kv.update(bucket, key, value, revision)

    def delete(self, bucket: str, key: str) -> None:
        """Deletes the key (a later get answers None); deleting an absent key is not an error."""
        _names("kv.delete", bucket, key)
        _kv.delete(bucket, key)


kv = _Kv()


def _names(what: str, bucket, key) -> None:
    if not isinstance(bucket, str):
        raise TypeError(f"{what}: bucket must be a str, got {_describe(bucket)}")
    if not isinstance(key, str):
        raise TypeError(f"{what}: key must be a str, got {_describe(key)}")


def _bytes(value, what: str) -> bytes:
    """`value` as bytes: bytes as they are, a bytearray or memoryview copied, a str as UTF-8."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    hint = " (json.dumps it first?)" if isinstance(value, (dict, list)) else ""
    raise TypeError(f"{what} must be bytes or a str (sent as UTF-8), got {_describe(value)}{hint}")


def _describe(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"
