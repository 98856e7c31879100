// {{name}}: a jetwasm publisher. The host calls `onTick` each time its timer fires.
//
// Config key: `subject`, where the ticks go (default `ticks`).

import { get } from 'jetwasm:runtime/config@0.2.0';
import { publish } from './jetwasm.js'; // the contract's publish, its arguments checked

// The export `on-tick: func(tick: tick) -> result<_, string>`. Returning nothing returns ok;
// returning { tag: 'err', val: 'why' } returns err (the host logs and counts it; the timer
// goes on). Throwing an Error traps instead.
/** @param {import('jetwasm:runtime/types@0.2.0').Tick} tick */
export function onTick(tick) {
  const subject = get('subject') ?? 'ticks';
  // tick.seq and tick.nowMs are BigInts, which JSON.stringify cannot write.
  const payload = JSON.stringify({ tick: Number(tick.seq), now_ms: Number(tick.nowMs) });
  try {
    // No msg id (undefined): the host derives one, so a retried tick is not stored twice.
    publish(subject, payload, [], undefined); // a string is sent as UTF-8
  } catch (e) {
    if (e.payload === undefined) throw e; // a bug, not a publish error
    const { tag, val } = e.payload; // the publish-error, e.g. { tag: 'no-stream', val: subject }
    const why = val === undefined ? tag : `${tag}(${val})`;
    return { tag: 'err', val: `publishing tick ${tick.seq} to ${subject} failed: ${why}` };
  }
}
