// {{name}}: a jetwasm HTTP publisher. The host calls `incomingHandler.handle` for each request
// on its route (the `http` key of its `[[publisher]]` table) and sends back the response set
// here.
//
// It publishes the request body as it is and answers, with a JSON body:
// - 202 {"stream": ..., "seq": ...} once a stream has stored it;
// - 413 when the body exceeds 1 MiB, 403 when the subject is denied, 503 when no stream
//   captures it or NATS is unavailable, 504 when the stream did not confirm in time, and
//   400 or 429 for the other publish errors: {"error": ...}.
//
// Config key: `subject`, where the bodies go (default `orders.created`).

// Each imported WIT interface is a module named after it, version included.
import { get } from 'jetwasm:runtime/config@0.2.0';
import { log } from 'jetwasm:runtime/log@0.2.0';
import { publish } from './jetwasm.js'; // the contract's publish, its arguments checked
import { Fields, OutgoingBody, OutgoingResponse, ResponseOutparam } from 'wasi:http/types@0.2.12';

const MAX_BODY = 1024 * 1024; // the largest request body accepted, in bytes

// The export `wasi:http/incoming-handler`: wasi:http resources are classes, u64 are BigInts.
export const incomingHandler = {
  handle(request, responseOut) {
    // Also there: request.method(), request.pathWithQuery(), request.headers().
    const body = readBody(request);
    if (body === undefined) {
      respond(responseOut, 413, { error: `the body exceeds ${MAX_BODY} bytes` });
    } else {
      respond(responseOut, ...publishBody(body));
    }
  },
};

// Publishes `body`; returns the status and JSON answer to send.
function publishBody(body) {
  const subject = get('subject') ?? 'orders.created';
  try {
    // Waits until a stream stores it. No msg id (undefined): the host derives a new one per
    // request. Pass a key the client sends (e.g. an Idempotency-Key header) instead, and a
    // retried request is stored once.
    const ack = publish(subject, body, [], undefined);
    return [202, { stream: ack.stream, seq: Number(ack.seq) }];
  } catch (e) {
    if (e.payload === undefined) throw e; // a bug, not a publish error
    const { tag, val } = e.payload; // the publish-error, e.g. { tag: 'denied', val: subject }
    log('warn', `publishing to ${subject} failed: ${val === undefined ? tag : `${tag} ${val}`}`);
    switch (tag) {
      case 'denied': return [403, { error: `publishing to ${val} is denied` }];
      case 'no-stream': return [503, { error: `no stream captures ${val}` }];
      case 'unavailable': return [503, { error: `unavailable: ${val}` }];
      case 'timeout': return [504, { error: 'the stream did not confirm in time' }];
      case 'too-large': return [413, { error: `the body exceeds ${val} bytes` }];
      case 'invalid': return [400, { error: `invalid: ${val}` }];
      default: return [429, { error: 'publish quota exceeded' }];
    }
  }
}

// The whole request body as a Uint8Array, or undefined when it exceeds MAX_BODY.
function readBody(request) {
  const body = request.consume();
  const stream = body.stream();
  const chunks = [];
  let size = 0;
  try {
    while (size <= MAX_BODY) {
      let chunk;
      try {
        chunk = stream.blockingRead(64n * 1024n);
      } catch (e) {
        if (e.payload?.tag === 'closed') return concat(chunks, size); // the end of the body
        throw e; // the read failed: an uncaught exception traps, the host answers 500
      }
      chunks.push(chunk);
      size += chunk.length;
    }
    return undefined;
  } finally {
    stream[Symbol.dispose](); // a stream goes before its body
    body[Symbol.dispose]();
  }
}

function concat(chunks, size) {
  const bytes = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.length;
  }
  return bytes;
}

// Sends `answer` as a JSON body with `status`.
function respond(responseOut, status, answer) {
  const headers = Fields.fromList([['content-type', new TextEncoder().encode('application/json')]]);
  const response = new OutgoingResponse(headers);
  response.setStatusCode(status);
  const body = response.body();
  ResponseOutparam.set(responseOut, { tag: 'ok', val: response }); // the status and headers go now
  const bytes = new TextEncoder().encode(JSON.stringify(answer));
  const stream = body.write();
  for (let start = 0; start < bytes.length; start += 4096) { // at most 4096 bytes per call
    stream.blockingWriteAndFlush(bytes.subarray(start, start + 4096));
  }
  stream[Symbol.dispose](); // a stream goes before its body is finished
  OutgoingBody.finish(body, undefined);
}
