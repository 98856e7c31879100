//! {{name}}: a jetwasm handler. The host calls `handle` once for each JetStream message.

use jetwasm::runtime::log::{self, Level};

// The bindings for the `handler` world in wit/ (the contract with the host).
wit_bindgen::generate!({ world: "handler", path: "wit" });

struct Component;

impl Guest for Component {
    fn handle(msg: Message) -> Disposition {
        // msg.payload is the body (Vec<u8>); also msg.subject, msg.headers, msg.stream_seq,
        // msg.delivered (1 the first time), ...
        log::log(
            Level::Info,
            &format!("{}: {} bytes", msg.subject, msg.payload.len()),
        );

        // Read config (None when not set):
        //     let limit = jetwasm::runtime::config::get("limit");
        // Publish; waits until a stream stores it (None: the host derives the message id, so
        // a redelivery does not publish twice):
        //     use jetwasm::runtime::{publish, types::PublishError};
        //     match publish::publish("out.subject", b"data", &[], None) {
        //         Ok(ack) => { /* ack.stream, ack.seq, ack.duplicate */ }
        //         Err(PublishError::Denied(subject)) => return Disposition::Term(subject),
        //         Err(_) => return Disposition::Nak(None),
        //     }
        // Publish many with their acks awaited together (one result per message):
        //     let results = publish::publish_batch(&[types::Outgoing { subject: "out.a".into(),
        //         payload: b"1".to_vec(), headers: vec![], msg_id: None }]);
        // Keep state in a KV bucket the config grants (`kv = ["counts"]`, declared with
        // [[kv]] in the streams spec); `update` writes only at the revision read:
        //     use jetwasm::runtime::kv::{self, KvError};
        //     let entry = kv::get("counts", "c-1");            // Ok(None) when absent
        //     match kv::update("counts", "c-1", b"2", revision) {
        //         Ok(new_revision) => {}
        //         Err(KvError::WrongRevision) => { /* someone wrote since: read again */ }
        //         Err(_) => return Disposition::Nak(None),
        //     }
        // Retry later: redeliver in 5 s (Nak(None): the consumer's backoff):
        //     return Disposition::Nak(Some(5000));
        // Give up: dead-letter the message with a reason:
        //     return Disposition::Term("cannot parse the payload".into());
        // A panic traps: the host redelivers with backoff, then dead-letters.
        Disposition::Ack
    }
}

export!(Component);
