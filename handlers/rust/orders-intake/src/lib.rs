//! The example HTTP intake for the ORDERS stream: a `wasi:http` incoming handler that accepts an
//! order posted as JSON, validates it, and publishes the body unchanged with an `order-id`
//! header. The request's `idempotency-key` header, when present, becomes the message id, so a
//! retried request is stored once (the answer then says `"duplicate": true`).
//!
//! An order is `{"id": string, "customer": string, "items": [..non-empty..], "total": number}`;
//! other fields are allowed and published as they are.
//!
//! Config keys: `subject` (default `orders.created`).
//!
//! Status codes, every body JSON:
//! - 202 stored: `{"stream", "seq", "duplicate"}`;
//! - 400 invalid JSON or order, or a subject/header the host rejects: `{"error"}`;
//! - 403 publishing to the subject is denied;
//! - 413 the body exceeds 1 MiB, or the message exceeds the stream's limit;
//! - 429 the call's publish quota is used up;
//! - 503 no stream captures the subject, or the server is unavailable (with `retry-after: 1`);
//!   nothing was stored;
//! - 504 the stream did not confirm in time: the order may or may not be stored, and a retry
//!   with the same `idempotency-key` is always safe (the stream stores it once).

use exports::wasi::http::incoming_handler::Guest;
use jetwasm::runtime::log::{self, Level};
use jetwasm::runtime::types::PublishError;
use jetwasm::runtime::{config, publish};
use order_model::parse_order;
use serde_json::json;
use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasi::io::streams::StreamError;

// `generate_all` also generates the wasi:http, wasi:io and other interfaces the export pulls in.
wit_bindgen::generate!({ world: "http-publisher", path: "../../../wit", generate_all });

const DEFAULT_SUBJECT: &str = "orders.created";
/// The largest request body accepted, in bytes.
const MAX_BODY: usize = 1 << 20;
/// The most bytes asked of the request stream per read.
const READ_CHUNK: u64 = 64 * 1024;
/// The most bytes written to the response stream per call (`blocking-write-and-flush` allows
/// no more than 4096).
const WRITE_CHUNK: usize = 4096;

/// Reads the whole request body; `None` when it exceeds `MAX_BODY`. The stream is dropped
/// before the body it belongs to (locals drop in reverse order).
fn read_body(request: &IncomingRequest) -> Result<Option<Vec<u8>>, String> {
    let body = request
        .consume()
        .map_err(|()| "request body already consumed".to_string())?;
    let stream = body
        .stream()
        .map_err(|()| "request body stream unavailable".to_string())?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(READ_CHUNK) {
            Ok(chunk) => {
                bytes.extend_from_slice(&chunk);
                if bytes.len() > MAX_BODY {
                    return Ok(None);
                }
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(format!("reading the request body: {}", e.to_debug_string()))
            }
        }
    }
    Ok(Some(bytes))
}

/// The value of the request header `name` (case-insensitive), if present and UTF-8.
fn header(request: &IncomingRequest, name: &str) -> Option<String> {
    request
        .headers()
        .entries()
        .into_iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .and_then(|(_, value)| String::from_utf8(value).ok())
}

/// Sends `json` with `status` as the response.
fn respond(out: ResponseOutparam, status: u16, json: &serde_json::Value) {
    let mut fields = vec![("content-type".to_string(), b"application/json".to_vec())];
    if status == 503 {
        // Unavailable is passing (an outage, a leader election): say when to try again.
        fields.push(("retry-after".to_string(), b"1".to_vec()));
    }
    let headers = Fields::from_list(&fields).expect("content-type and retry-after are valid");
    let response = OutgoingResponse::new(headers);
    response
        .set_status_code(status)
        .expect("status codes used here are valid");
    let body = response.body().expect("a new response's body is available");
    ResponseOutparam::set(out, Ok(response));

    let bytes = serde_json::to_vec(json).expect("a JSON value always serializes");
    let stream = body.write().expect("a new body's stream is available");
    for chunk in bytes.chunks(WRITE_CHUNK) {
        if let Err(e) = stream.blocking_write_and_flush(chunk) {
            log::log(Level::Warn, &format!("writing the response failed: {e:?}"));
            return;
        }
    }
    drop(stream);
    if let Err(e) = OutgoingBody::finish(body, None) {
        log::log(
            Level::Warn,
            &format!("finishing the response failed: {e:?}"),
        );
    }
}

/// The status and JSON body answering a publish result.
fn answer(result: Result<publish::PublishAck, PublishError>) -> (u16, serde_json::Value) {
    match result {
        Ok(ack) => (
            202,
            json!({"stream": ack.stream, "seq": ack.seq, "duplicate": ack.duplicate}),
        ),
        Err(e) => {
            let (status, reason) = match e {
                PublishError::Denied(s) => (403, format!("publishing to {s} is denied")),
                PublishError::NoStream(s) => (503, format!("no stream captures {s}")),
                PublishError::Unavailable(why) => (503, why),
                PublishError::Timeout => (504, "the stream did not confirm in time".to_string()),
                PublishError::TooLarge(n) => (413, format!("the order exceeds {n} bytes")),
                PublishError::Invalid(why) => (400, why),
                PublishError::QuotaExceeded => (429, "publish quota exceeded".to_string()),
            };
            (status, json!({ "error": reason }))
        }
    }
}

struct OrdersIntake;

impl Guest for OrdersIntake {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let error = |reason: String| json!({ "error": reason });
        let msg_id = header(&request, "idempotency-key");
        let body = match read_body(&request) {
            Ok(Some(body)) => body,
            Ok(None) => {
                let reason = format!("the request body exceeds {MAX_BODY} bytes");
                return respond(response_out, 413, &error(reason));
            }
            Err(reason) => return respond(response_out, 400, &error(reason)),
        };
        let order = match parse_order(&body) {
            Ok(order) => order,
            Err(reason) => return respond(response_out, 400, &error(reason)),
        };

        let subject = config::get("subject").unwrap_or_else(|| DEFAULT_SUBJECT.to_string());
        let headers = [
            ("order-id".to_string(), order.id.clone()),
            ("customer".to_string(), order.customer.clone()),
        ];
        let result = publish::publish(&subject, &body, &headers, msg_id.as_deref());
        match &result {
            Ok(ack) => log::log(
                Level::Info,
                &format!(
                    "accepted order {} from {} (total {}) as {} #{}",
                    order.id, order.customer, order.total, ack.stream, ack.seq
                ),
            ),
            Err(e) => log::log(
                Level::Warn,
                &format!("publishing order {} failed: {e:?}", order.id),
            ),
        }
        let (status, json) = answer(result);
        respond(response_out, status, &json);
    }
}

export!(OrdersIntake);
