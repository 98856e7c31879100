"""{{name}}: a jetwasm publisher. The host calls `on_tick` each time its timer fires.

Config key: `subject`, where the ticks go (default `ticks`).
"""

import json

import wit_world
from componentize_py_types import Err
from jetwasm import publish  # the contract's publish, its arguments checked
from wit_world.imports import config
from wit_world.imports.types import Tick


class WitWorld(wit_world.WitWorld):
    def on_tick(self, tick: Tick) -> None:
        subject = config.get("subject") or "ticks"
        payload = json.dumps({"tick": tick.seq, "now_ms": tick.now_ms}).encode()
        try:
            # No msg id (None): the host derives one, so a retried tick is not stored twice.
            publish(subject, payload)
        except Err as e:  # e.value is one of the PublishError_* classes
            # Raising Err(str) returns err(str): the host logs and counts it; the timer goes on.
            raise Err(f"publishing tick {tick.seq} to {subject} failed: {e.value}")
        # Returning normally returns ok.
