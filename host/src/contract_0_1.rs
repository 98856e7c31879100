//! Contract 0.1's imports, served by 0.2's: a 0.1 component's `log`, `config` and `publish`
//! calls are converted to the 0.2 types (the same shapes under other names) and handled by
//! the [`imports`](crate::imports) module, so both versions behave alike by construction.

use crate::bindings::jetwasm::runtime as current;
use crate::bindings::v0_1::jetwasm::runtime::{config, log, publish, types};
use crate::sandbox::HostState;

impl types::Host for HostState {}

impl log::Host for HostState {
    async fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            log::Level::Trace => current::log::Level::Trace,
            log::Level::Debug => current::log::Level::Debug,
            log::Level::Info => current::log::Level::Info,
            log::Level::Warn => current::log::Level::Warn,
            log::Level::Error => current::log::Level::Error,
        };
        current::log::Host::log(self, level, message).await
    }
}

impl config::Host for HostState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        current::config::Host::get(self, key).await
    }

    async fn get_all(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        current::config::Host::get_all(self).await
    }
}

impl publish::Host for HostState {
    async fn publish(
        &mut self,
        subject: String,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
        msg_id: Option<String>,
    ) -> wasmtime::Result<Result<types::PublishAck, types::PublishError>> {
        let result =
            current::publish::Host::publish(self, subject, payload, headers, msg_id).await?;
        Ok(result.map(ack).map_err(error))
    }
}

fn ack(ack: current::types::PublishAck) -> types::PublishAck {
    types::PublishAck {
        stream: ack.stream,
        seq: ack.seq,
        duplicate: ack.duplicate,
    }
}

fn error(error: current::types::PublishError) -> types::PublishError {
    use current::types::PublishError as E;
    match error {
        E::Denied(s) => types::PublishError::Denied(s),
        E::Invalid(s) => types::PublishError::Invalid(s),
        E::NoStream(s) => types::PublishError::NoStream(s),
        E::Timeout => types::PublishError::Timeout,
        E::TooLarge(limit) => types::PublishError::TooLarge(limit),
        E::Unavailable(s) => types::PublishError::Unavailable(s),
        E::QuotaExceeded => types::PublishError::QuotaExceeded,
    }
}
