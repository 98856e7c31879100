// {{name}}: a jetwasm handler. The host calls `handle` once for each JetStream message.

// Each imported WIT interface is a module named after it, version included.
import { get } from 'jetwasm:runtime/config@0.2.0';
import { log } from 'jetwasm:runtime/log@0.2.0';
import { publish } from './jetwasm.js'; // the contract's publish, its arguments checked

// msg.payload is a Uint8Array; msg.subject, msg.headers ([name, value] pairs), msg.streamSeq
// (a BigInt), msg.delivered, ... Return a disposition: { tag: 'ack' | 'nak' | 'term', val }.
/**
 * @param {import('jetwasm:runtime/types@0.2.0').Message} msg
 * @returns {import('jetwasm:runtime/types@0.2.0').Disposition}
 */
export function handle(msg) {
  log('info', `${msg.subject}: ${msg.payload.length} bytes`);

  // Read config (undefined when not set):
  //     const limit = get('limit');
  // Publish bytes or a string (sent as UTF-8); throws a TypeError naming a wrong argument,
  // and when the message is not stored (e.payload is the publish-error, e.g.
  // { tag: 'denied', val: subject }):
  //     publish('out.subject', JSON.stringify({ ok: true }), [['header', 'value']]);
  // Retry later: redeliver in 5 s (a u64 is a BigInt; val undefined: the consumer's backoff):
  //     return { tag: 'nak', val: 5000n };
  // Give up: dead-letter the message with a reason:
  //     return { tag: 'term', val: 'cannot parse the payload' };
  // An uncaught exception traps: the host redelivers, then dead-letters.
  return { tag: 'ack' };
}
