// {{name}}: a jetwasm handler. The host calls `handle` once for each JetStream message.

// Each imported WIT interface is a module named after it, version included.
import { get } from 'jetwasm:runtime/config@0.2.0';
import { log } from 'jetwasm:runtime/log@0.2.0';
import { kv, publish } from './jetwasm.js'; // the contract's kv and publish, arguments checked

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
  // Publish many with their acks awaited together (one { tag: 'ok' | 'err', val } per
  // message; publishBatch is the raw import, so payloads are Uint8Arrays: bytes() of
  // jetwasm.js makes one from a string):
  //     const results = publishBatch([{ subject: 'out.a', payload: bytes('1'), headers: [] }]);
  // Keep state in a KV bucket the config grants (`kv = ["counts"]`, declared with [[kv]] in
  // the streams spec); `update` writes only at the revision read (API.md has the whole
  // read-modify-write):
  //     const entry = kv.get('counts', 'c-1'); // undefined when absent; entry.value, .revision
  //     try {
  //       kv.update('counts', 'c-1', '2', entry.revision); // the new revision (a BigInt)
  //     } catch (e) {
  //       if (e.payload?.tag === 'wrong-revision') { /* someone wrote since: read again */ }
  //     }
  // Retry later: redeliver in 5 s (a u64 is a BigInt; val undefined: the consumer's backoff):
  //     return { tag: 'nak', val: 5000n };
  // Give up: dead-letter the message with a reason:
  //     return { tag: 'term', val: 'cannot parse the payload' };
  // An uncaught exception traps: the host redelivers, then dead-letters.
  return { tag: 'ack' };
}
