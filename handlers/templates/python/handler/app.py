"""{{name}}: a jetwasm handler. The host calls `handle` once for each JetStream message."""

import wit_world
from componentize_py_types import Err
from jetwasm import kv, publish  # the contract's kv and publish, their arguments checked
from wit_world.imports import config, log
from wit_world.imports.kv import KvError_WrongRevision
from wit_world.imports.log import Level
from wit_world.imports.types import (
    Disposition,
    Disposition_Ack,
    Disposition_Nak,
    Disposition_Term,
    Message,
    PublishError_Denied,
)


class WitWorld(wit_world.WitWorld):
    def handle(self, msg: Message) -> Disposition:
        # msg.payload is bytes; msg.subject, msg.headers, msg.stream_seq, msg.delivered, ...
        log.log(Level.INFO, f"{msg.subject}: {len(msg.payload)} bytes")

        # Read config (None when not set):
        #     limit = config.get("limit")
        # Publish bytes or a str (sent as UTF-8); raises TypeError naming a wrong argument,
        # and Err(PublishError_...) when the message is not stored:
        #     try:
        #         publish("out.subject", b"data", [("header", "value")])
        #     except Err as e:
        #         if isinstance(e.value, PublishError_Denied): ...
        # Publish many with their acks awaited together (one Ok/Err per message; API.md):
        #     from wit_world.imports.publish import publish_batch
        #     from wit_world.imports.types import Outgoing
        #     results = publish_batch([Outgoing("out.a", b"1", [], None)])
        # Keep state in a KV bucket the config grants (`kv = ["counts"]`, declared with
        # [[kv]] in the streams spec); `update` writes only at the revision read (API.md has
        # the whole read-modify-write):
        #     entry = kv.get("counts", "c-1")  # None when absent; else entry.value, .revision
        #     try:
        #         if entry:
        #             kv.update("counts", "c-1", b"2", entry.revision)  # the new revision
        #     except Err as e:
        #         if isinstance(e.value, KvError_WrongRevision): ...  # raced: read again
        # Retry later: redeliver in 5 s (Disposition_Nak(None): the consumer's backoff):
        #     return Disposition_Nak(5000)
        # Give up: dead-letter the message with a reason:
        #     return Disposition_Term("cannot parse the payload")
        # An uncaught exception traps: the host redelivers, then dead-letters.
        return Disposition_Ack()
