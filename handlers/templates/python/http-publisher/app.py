"""{{name}}: a jetwasm HTTP publisher. The host calls `handle` for each request on its route
(the `http` key of its `[[publisher]]` table) and sends back the response set here.

It publishes the request body as it is and answers, with a JSON body:
- 202 {"stream": ..., "seq": ...} once a stream has stored it;
- 413 when the body exceeds 1 MiB, 403 when the subject is denied, 503 when no stream
  captures it or NATS is unavailable, 504 when the stream did not confirm in time, and
  400 or 429 for the other publish errors: {"error": ...}.

Config key: `subject`, where the bodies go (default `orders.created`).
"""

import json

from componentize_py_types import Err, Ok
from wit_world import exports
from jetwasm import publish  # the contract's publish, its arguments checked
from wit_world.imports import config, log
from wit_world.imports import jetwasm_runtime_types as types
from wit_world.imports.log import Level
from wit_world.imports.streams import StreamError_Closed
from wit_world.imports.wasi_http_types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)

MAX_BODY = 1 << 20  # the largest request body accepted, in bytes


class IncomingHandler(exports.IncomingHandler):
    """The export `wasi:http/incoming-handler`."""

    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        # Also there: request.method(), request.path_with_query(), request.headers().
        body = read_body(request)
        if body is None:
            respond(response_out, 413, {"error": f"the body exceeds {MAX_BODY} bytes"})
        else:
            respond(response_out, *publish_body(body))


def publish_body(body: bytes) -> tuple[int, dict]:
    """Publishes `body`; returns the status and JSON answer to send."""
    subject = config.get("subject") or "orders.created"
    try:
        # Waits until a stream stores it. No msg id (None): the host derives a new one per
        # request. Pass a key the client sends (e.g. an Idempotency-Key header) instead, and a
        # retried request is stored once.
        ack = publish(subject, body)
    except Err as e:  # e.value is one of the PublishError_* classes
        log.log(Level.WARN, f"publishing to {subject} failed: {e.value}")
        status, reason = describe(e.value)
        return status, {"error": reason}
    return 202, {"stream": ack.stream, "seq": ack.seq}


def describe(error: types.PublishError) -> tuple[int, str]:
    """The HTTP status and reason for a publish error."""
    match error:
        case types.PublishError_Denied(subject):
            return 403, f"publishing to {subject} is denied"
        case types.PublishError_NoStream(subject):
            return 503, f"no stream captures {subject}"
        case types.PublishError_Unavailable(why):
            return 503, f"unavailable: {why}"
        case types.PublishError_Timeout():
            return 504, "the stream did not confirm in time"
        case types.PublishError_TooLarge(limit):
            return 413, f"the body exceeds {limit} bytes"
        case types.PublishError_Invalid(why):
            return 400, f"invalid: {why}"
        case _:
            return 429, "publish quota exceeded"


def read_body(request: IncomingRequest) -> bytes | None:
    """The whole request body, or None when it exceeds MAX_BODY."""
    data = bytearray()
    # Leaving the `with` drops the stream, then the body (a stream goes before its body).
    with request.consume() as body, body.stream() as stream:
        while len(data) <= MAX_BODY:
            try:
                data += stream.blocking_read(64 * 1024)
            except Err as e:
                if isinstance(e.value, StreamError_Closed):
                    return bytes(data)  # the end of the body
                raise  # the read failed: an uncaught exception traps, the host answers 500
    return None


def respond(response_out: ResponseOutparam, status: int, answer: dict) -> None:
    """Sends `answer` as a JSON body with `status`."""
    response = OutgoingResponse(Fields.from_list([("content-type", b"application/json")]))
    response.set_status_code(status)
    body = response.body()
    ResponseOutparam.set(response_out, Ok(response))  # the status and headers go now
    data = json.dumps(answer).encode()
    with body.write() as stream:  # dropped here: a stream goes before its body is finished
        for start in range(0, len(data), 4096):  # at most 4096 bytes per call
            stream.blocking_write_and_flush(data[start : start + 4096])
    OutgoingBody.finish(body, None)
