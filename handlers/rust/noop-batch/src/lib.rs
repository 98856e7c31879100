//! A batch handler that acks every message and does nothing else.

wit_bindgen::generate!({ world: "batch-handler", path: "../../../wit" });

struct NoopBatch;

impl Guest for NoopBatch {
    fn handle_batch(messages: Vec<Message>) -> Vec<Disposition> {
        vec![Disposition::Ack; messages.len()]
    }
}

export!(NoopBatch);
