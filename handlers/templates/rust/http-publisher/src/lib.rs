//! {{name}}: a jetwasm HTTP publisher. The host calls `handle` for each request on its route
//! (the `http` key of its `[[publisher]]` table) and sends back the response set here.
//!
//! It publishes the request body as it is and answers, with a JSON body:
//! - 202 `{"stream": ..., "seq": ...}` once a stream has stored it;
//! - 413 when the body exceeds 1 MiB, 403 when the subject is denied, 503 when no stream
//!   captures it or NATS is unavailable, 504 when the stream did not confirm in time, and
//!   400 or 429 for the other publish errors: `{"error": ...}`.
//!
//! Config key: `subject`, where the bodies go (default `orders.created`).

use exports::wasi::http::incoming_handler::Guest;
use jetwasm::runtime::log::{self, Level};
use jetwasm::runtime::types::PublishError;
use jetwasm::runtime::{config, publish};
use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasi::io::streams::StreamError;

// The bindings for the `http-publisher` world in wit/ (the contract with the host);
// `generate_all` also generates the wasi:http and wasi:io interfaces the export uses.
wit_bindgen::generate!({ world: "http-publisher", path: "wit", generate_all });

/// The largest request body accepted, in bytes.
const MAX_BODY: usize = 1 << 20;

struct Component;

impl Guest for Component {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        // Also there: request.method(), request.path_with_query(), request.headers().
        let (status, json) = match read_body(&request) {
            Ok(body) => publish_body(&body),
            Err((status, reason)) => (status, error_json(&reason)),
        };
        respond(response_out, status, &json);
    }
}

/// Publishes `body` and says how to answer: a status and a JSON body.
fn publish_body(body: &[u8]) -> (u16, String) {
    let subject = config::get("subject").unwrap_or_else(|| "orders.created".to_string());
    // Waits until a stream stores it. No message id (None): the host derives a new one per
    // request. Pass a key the client sends (e.g. an `Idempotency-Key` header) instead, and a
    // retried request is stored once.
    match publish::publish(&subject, body, &[], None) {
        Ok(ack) => {
            let stream = json_string(&ack.stream);
            (202, format!(r#"{{"stream":{stream},"seq":{}}}"#, ack.seq))
        }
        Err(e) => {
            log::log(
                Level::Warn,
                &format!("publishing to {subject} failed: {e:?}"),
            );
            let (status, reason) = match e {
                PublishError::Denied(s) => (403, format!("publishing to {s} is denied")),
                PublishError::NoStream(s) => (503, format!("no stream captures {s}")),
                PublishError::Unavailable(why) => (503, format!("unavailable: {why}")),
                PublishError::Timeout => (504, "the stream did not confirm in time".into()),
                PublishError::TooLarge(n) => (413, format!("the body exceeds {n} bytes")),
                PublishError::Invalid(why) => (400, format!("invalid: {why}")),
                PublishError::QuotaExceeded => (429, "publish quota exceeded".into()),
            };
            (status, error_json(&reason))
        }
    }
}

/// Reads the whole request body, or says which error status to answer. (Locals are dropped in
/// reverse order: the stream before its body, as wasi:http requires.)
fn read_body(request: &IncomingRequest) -> Result<Vec<u8>, (u16, String)> {
    let body = request
        .consume()
        .map_err(|()| (400, "no request body".to_string()))?;
    let stream = body
        .stream()
        .map_err(|()| (400, "no request body".to_string()))?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) if bytes.len() + chunk.len() > MAX_BODY => {
                return Err((413, format!("the body exceeds {MAX_BODY} bytes")));
            }
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(StreamError::Closed) => return Ok(bytes), // the end of the body
            Err(StreamError::LastOperationFailed(e)) => {
                return Err((400, format!("reading the body: {}", e.to_debug_string())));
            }
        }
    }
}

/// Sends the response: `status` with `json` as its body.
fn respond(out: ResponseOutparam, status: u16, json: &str) {
    let headers = Fields::from_list(&[("content-type".into(), b"application/json".to_vec())])
        .expect("a valid header");
    let response = OutgoingResponse::new(headers);
    response.set_status_code(status).expect("a valid status");
    let body = response.body().expect("a new response's body");
    ResponseOutparam::set(out, Ok(response)); // the status and headers go now
    {
        let stream = body.write().expect("a new body's stream");
        // blocking-write-and-flush takes at most 4096 bytes per call.
        for chunk in json.as_bytes().chunks(4096) {
            if let Err(e) = stream.blocking_write_and_flush(chunk) {
                log::log(Level::Warn, &format!("writing the response failed: {e:?}"));
                return;
            }
        }
    } // the stream must be dropped before its body is finished
    if let Err(e) = OutgoingBody::finish(body, None) {
        log::log(
            Level::Warn,
            &format!("finishing the response failed: {e:?}"),
        );
    }
}

/// `{"error": reason}`.
fn error_json(reason: &str) -> String {
    format!(r#"{{"error":{}}}"#, json_string(reason))
}

/// `text` as a JSON string (or add serde_json to Cargo.toml and use `serde_json::json!`).
fn json_string(text: &str) -> String {
    let mut out = String::from('"');
    for c in text.chars() {
        match c {
            '"' | '\\' => out.extend(['\\', c]),
            c if c < ' ' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out + "\""
}

export!(Component);
