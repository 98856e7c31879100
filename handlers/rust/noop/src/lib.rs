//! A handler that acks every message and does nothing else.

wit_bindgen::generate!({ world: "handler", path: "../../../wit" });

struct Noop;

impl Guest for Noop {
    fn handle(_msg: Message) -> Disposition {
        Disposition::Ack
    }
}

export!(Noop);
