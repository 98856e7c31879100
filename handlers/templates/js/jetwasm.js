// jetwasm.js: the contract's publish, checked. The raw import ('jetwasm:runtime/publish@0.2.0')
// takes a Uint8Array payload and quietly sends an empty message for anything else (a string,
// an object); this one says what is wrong instead, naming the argument.

import { publish as publishRaw } from 'jetwasm:runtime/publish@0.2.0';

const utf8 = new TextEncoder();

/**
 * Publishes `payload` to `subject` and waits until a stream has stored it.
 *
 * @param {string} subject
 * @param {Uint8Array | ArrayBuffer | string} payload a string is sent as UTF-8
 * @param {[string, string][]} [headers] [name, value] pairs
 * @param {string} [msgId] JetStream's dedup id; undefined: the host derives one
 * @returns {{ stream: string, seq: bigint, duplicate: boolean }} the stream's ack
 * @throws {TypeError} for an argument of the wrong type, naming it
 * @throws a publish error, as `e.payload`: `{ tag, val }` with tag denied, invalid,
 *   no-stream, timeout, too-large, unavailable or quota-exceeded
 */
export function publish(subject, payload, headers = [], msgId = undefined) {
  if (typeof subject !== 'string') {
    throw new TypeError(`publish: subject must be a string, got ${describe(subject)}`);
  }
  if (!Array.isArray(headers)) {
    throw new TypeError(`publish: headers must be an array of [name, value] pairs, got ${describe(headers)}`);
  }
  headers.forEach((header, i) => {
    const pair = Array.isArray(header) && header.length === 2;
    if (!pair || typeof header[0] !== 'string' || typeof header[1] !== 'string') {
      throw new TypeError(`publish: headers[${i}] must be a [name, value] pair of strings, got ${describe(header)}`);
    }
  });
  if (msgId !== undefined && typeof msgId !== 'string') {
    throw new TypeError(`publish: msgId must be a string or undefined, got ${describe(msgId)}`);
  }
  return publishRaw(subject, bytes(payload, 'publish: payload'), headers, msgId);
}

/** `value` as bytes: a Uint8Array as it is, other binary views copied, a string as UTF-8. */
export function bytes(value, what = 'value') {
  if (value instanceof Uint8Array) return value;
  if (typeof value === 'string') return utf8.encode(value);
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  const hint = value !== null && typeof value === 'object' ? ' (JSON.stringify it first?)' : '';
  throw new TypeError(`${what} must be a Uint8Array or a string (sent as UTF-8), got ${describe(value)}${hint}`);
}

function describe(value) {
  if (value === null) return 'null';
  if (Array.isArray(value)) return `an array of ${value.length}`;
  if (typeof value === 'object') return `an object (${value.constructor?.name ?? 'Object'})`;
  if (typeof value === 'string') return `the string ${JSON.stringify(value.slice(0, 40))}`;
  return `${typeof value} ${String(value)}`;
}
