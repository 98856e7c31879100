"""{{name}}: a jetwasm handler. The host calls `handle` once for each JetStream message."""

import wit_world
from componentize_py_types import Err
from jetwasm import publish  # the contract's publish, its arguments checked
from wit_world.imports import config, log
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
        # Retry later: redeliver in 5 s (Disposition_Nak(None): the consumer's backoff):
        #     return Disposition_Nak(5000)
        # Give up: dead-letter the message with a reason:
        #     return Disposition_Term("cannot parse the payload")
        # An uncaught exception traps: the host redelivers, then dead-letters.
        return Disposition_Ack()
