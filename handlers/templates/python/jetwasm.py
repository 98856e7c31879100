"""The contract's publish, checked: an argument of the wrong type is a TypeError that names
it (the raw binding, `wit_world.imports.publish.publish`, raises a CastError that does not
say which argument was wrong)."""

from typing import Optional, Sequence, Tuple, Union

from wit_world.imports import publish as _publish


def publish(
    subject: str,
    payload: Union[bytes, bytearray, memoryview, str],
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
    if isinstance(payload, str):
        payload = payload.encode()
    elif isinstance(payload, (bytearray, memoryview)):
        payload = bytes(payload)
    elif not isinstance(payload, bytes):
        hint = " (json.dumps it first?)" if isinstance(payload, (dict, list)) else ""
        raise TypeError(
            f"publish: payload must be bytes or a str (sent as UTF-8), got {_describe(payload)}{hint}"
        )
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


def _describe(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"
