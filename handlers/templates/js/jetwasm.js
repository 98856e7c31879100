// jetwasm.js: the contract's publish and kv, checked. The raw imports
// ('jetwasm:runtime/publish@0.2.0', 'jetwasm:runtime/kv@0.2.0') take a Uint8Array only and do
// not refuse anything else (publish quietly sends an empty message for a string or an
// object); these say what is wrong instead, naming the argument.

import * as kvRaw from 'jetwasm:runtime/kv@0.2.0';
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

// `delete` is a reserved word: the import is `delete` in componentize-js today (declared as
// `export { _delete as delete }`), and looked up under the other names bindings give it.
const loose = /** @type {Record<string, any>} */ (/** @type {unknown} */ (kvRaw));
const deleteRaw = loose['delete'] ?? loose['_delete'] ?? loose['delete_'] ?? loose['delete$'];

/**
 * The contract's key-value buckets, checked: `kv.get`, `kv.put`, `kv.create`, `kv.update` and
 * `kv.remove` (also `kv.delete`). A value may be a Uint8Array (or ArrayBuffer) or a string,
 * sent as UTF-8; a revision is a BigInt (a number is taken too). Each throws a `TypeError`
 * naming a wrong argument, and a kv error as `e.payload`: `{ tag, val }` with tag denied,
 * not-found, wrong-revision (`update` or `create` lost a race: read again), too-large,
 * invalid or unavailable.
 */
export const kv = {
  /**
   * The key's value and revision, or undefined when it is absent or deleted.
   *
   * @param {string} bucket
   * @param {string} key
   * @returns {import('jetwasm:runtime/kv@0.2.0').Entry | undefined} `value` (a Uint8Array), `revision` (a BigInt)
   */
  get(bucket, key) {
    names('kv.get', bucket, key);
    return kvRaw.get(bucket, key);
  },

  /**
   * Writes `value` whatever the key holds; returns the new revision.
   *
   * @param {string} bucket
   * @param {string} key
   * @param {Uint8Array | ArrayBuffer | string} value a string is sent as UTF-8
   * @returns {bigint}
   */
  put(bucket, key, value) {
    names('kv.put', bucket, key);
    return kvRaw.put(bucket, key, bytes(value, 'kv.put: value'));
  },

  /**
   * Writes `value` only if the key is absent (or deleted); returns the new revision, or
   * throws `wrong-revision` when the key is present.
   *
   * @param {string} bucket
   * @param {string} key
   * @param {Uint8Array | ArrayBuffer | string} value a string is sent as UTF-8
   * @returns {bigint}
   */
  create(bucket, key, value) {
    names('kv.create', bucket, key);
    return kvRaw.create(bucket, key, bytes(value, 'kv.create: value'));
  },

  /**
   * Writes `value` only if the key is still at `revision` (an entry's `revision`); returns
   * the new revision, or throws `wrong-revision` when someone wrote since: read again and retry.
   *
   * @param {string} bucket
   * @param {string} key
   * @param {Uint8Array | ArrayBuffer | string} value a string is sent as UTF-8
   * @param {bigint | number} revision
   * @returns {bigint}
   */
  update(bucket, key, value, revision) {
    names('kv.update', bucket, key);
    const data = bytes(value, 'kv.update: value');
    if (typeof revision === 'number' && Number.isSafeInteger(revision) && revision >= 0) {
      revision = BigInt(revision);
    }
    if (typeof revision !== 'bigint' || revision < 0n) {
      throw new TypeError(`kv.update: revision must be a BigInt >= 0 (an entry's revision), got ${describe(revision)}`);
    }
    return kvRaw.update(bucket, key, data, revision);
  },

  /**
   * Deletes the key (a later `get` answers undefined); deleting an absent key is not an error.
   *
   * @param {string} bucket
   * @param {string} key
   * @returns {void}
   */
  remove(bucket, key) {
    removeKey('kv.remove', bucket, key);
  },

  /**
   * The same as `remove`.
   *
   * @param {string} bucket
   * @param {string} key
   * @returns {void}
   */
  delete(bucket, key) {
    removeKey('kv.delete', bucket, key);
  },
};

function removeKey(what, bucket, key) {
  names(what, bucket, key);
  if (typeof deleteRaw !== 'function') {
    throw new Error(`${what}: the kv bindings have no delete (they have ${Object.keys(loose).join(', ')})`);
  }
  deleteRaw(bucket, key);
}

function names(what, bucket, key) {
  if (typeof bucket !== 'string') throw new TypeError(`${what}: bucket must be a string, got ${describe(bucket)}`);
  if (typeof key !== 'string') throw new TypeError(`${what}: key must be a string, got ${describe(key)}`);
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
