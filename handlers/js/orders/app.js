// The example handler for the ORDERS stream: validates each order, publishes a
// processed-order event, and acks. Malformed orders are dead-lettered (term); busy
// inventory is retried after a delay (nak).
//
// Config keys: `output_subject` (default `orders.processed`) and `retry_delay_ms`
// (default 2000).

// Each imported WIT interface is a module named after it, version included.
import { get } from 'jetwasm:runtime/config@0.2.0';
import { log } from 'jetwasm:runtime/log@0.2.0';
import { publish } from 'jetwasm:runtime/publish@0.2.0';

const DEFAULT_OUTPUT_SUBJECT = 'orders.processed';
const DEFAULT_RETRY_DELAY_MS = 2000n; // a WIT u64 is a BigInt

// The fields an order must have, with their JSON type (checked in this order).
const REQUIRED = [
  ['id', 'a string', (v) => typeof v === 'string'],
  ['customer', 'a string', (v) => typeof v === 'string'],
  ['items', 'an array', Array.isArray],
  ['total', 'a number', (v) => typeof v === 'number'],
];
// Optional flags, false when absent.
const FLAGS = ['inventory_busy', 'crash'];

/** Parses and validates an order; returns `{ order }` or `{ error }` (the term reason). */
function parseOrder(payload) {
  let order;
  try {
    // fatal: bytes that are not UTF-8 are invalid JSON too, not silently replaced.
    order = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(payload));
  } catch (e) {
    return { error: `invalid JSON: ${e.message}` };
  }
  if (typeof order !== 'object' || order === null || Array.isArray(order)) {
    return { error: 'invalid order: expected a JSON object' };
  }
  for (const [field, described, isValid] of REQUIRED) {
    if (!(field in order)) return { error: `invalid order: missing field ${field}` };
    if (!isValid(order[field])) {
      return { error: `invalid order: field ${field} must be ${described}` };
    }
  }
  for (const flag of FLAGS) {
    if (typeof (order[flag] ?? false) !== 'boolean') {
      return { error: `invalid order: field ${flag} must be a boolean` };
    }
  }
  if (order.items.length === 0) return { error: 'invalid order: no items' };
  return { order };
}

/** Config `retry_delay_ms` as a u64, or the default when absent or unparsable. */
function retryDelayMs() {
  const value = get('retry_delay_ms'); // undefined when not set
  if (/^\d+$/.test(value ?? '') && BigInt(value) < 2n ** 64n) return BigInt(value);
  return DEFAULT_RETRY_DELAY_MS;
}

/** A publish error (a variant: `{ tag, val }`) as text, e.g. `no-stream(orders.x)`. */
function describe(error) {
  return error.val === undefined ? error.tag : `${error.tag}(${error.val})`;
}

// The export `handle: func(msg: message) -> disposition`. Record fields are camelCase
// (msg.streamSeq), `payload` is a Uint8Array, and a variant is `{ tag, val }`.
export function handle(msg) {
  const { order, error } = parseOrder(msg.payload);
  if (error) return { tag: 'term', val: error }; // dead-letter it with this reason

  if (order.crash) {
    // An uncaught exception traps: the host redelivers, then dead-letters.
    throw new Error(`crash requested by order ${order.id}`);
  }
  if (order.inventory_busy) {
    return { tag: 'nak', val: retryDelayMs() }; // redeliver after this delay
  }

  const subject = get('output_subject') ?? DEFAULT_OUTPUT_SUBJECT;
  const event = JSON.stringify({
    id: order.id,
    customer: order.customer,
    total: order.total,
    items: order.items.length,
    processed_seq: Number(msg.streamSeq), // JSON.stringify cannot write a BigInt
  });
  try {
    // msgId undefined: the host derives a stable id, so a redelivery cannot publish twice.
    publish(subject, new TextEncoder().encode(event), [['order-id', order.id]], undefined);
  } catch (e) {
    // A result's error arrives as a thrown error whose `payload` is the publish-error.
    if (e.payload === undefined) throw e; // a bug, not a publish error
    if (e.payload.tag === 'denied') {
      return { tag: 'term', val: `cannot publish: denied subject ${e.payload.val}` };
    }
    log('warn', `publishing order ${order.id} failed: ${describe(e.payload)}`);
    return { tag: 'nak', val: undefined }; // no delay: the consumer's backoff applies
  }

  log('info', `processed order ${order.id}`);
  return { tag: 'ack' };
}
