//! The host side of the `kv` import: a component's grants checked first (bucket granted,
//! writable), then the JetStream KV bucket over the component's own connection (its tenant's,
//! so the server checks again), with every error mapped to the contract's `kv-error`.

use async_nats::jetstream::kv::{
    self as nats_kv, CreateErrorKind, EntryErrorKind, Operation, PutErrorKind, UpdateErrorKind,
};

use crate::bindings::jetwasm::runtime::kv;
use crate::bindings::{Entry, KvError};
use crate::buckets::{refused, Access, Bucket};
use crate::publish::Connection;
use crate::sandbox::{ComponentEnv, HostState, Sink};

/// The connection KV goes over: the component's sink's, when it publishes to JetStream.
fn connection(env: &ComponentEnv) -> Result<&Connection, KvError> {
    match &env.sink {
        Sink::JetStream(connection) => Ok(connection),
        Sink::Capture(_) => Err(KvError::Unavailable(
            "no NATS server here (jetwasm try, or replay without --publish): key-value \
             buckets need one"
                .to_owned(),
        )),
    }
}

/// `bucket`, checked for `access` and opened, with its connection.
async fn bucket<'a>(
    env: &'a ComponentEnv,
    bucket: &str,
    access: Access,
) -> Result<(Bucket, &'a Connection), KvError> {
    let connection = connection(env)?;
    let open = env.kv.open(connection, bucket, access).await?;
    Ok((open, connection))
}

/// A write of `value_len` bytes to `key` in `bucket`: checks, then `write` on the store,
/// failing as `denied` as soon as the server refuses the connection the subject.
async fn write<F, E>(
    env: &ComponentEnv,
    (bucket_name, key, value_len): (&str, &str, usize),
    write: impl FnOnce(nats_kv::Store) -> F,
    error: impl FnOnce(E) -> KvError,
) -> Result<u64, KvError>
where
    F: std::future::Future<Output = Result<u64, E>>,
{
    let (open, connection) = bucket(env, bucket_name, Access::Write).await?;
    if value_len as u64 > open.max_value {
        return Err(KvError::TooLarge(open.max_value));
    }
    check_key(key)?;
    let prefix = format!("$KV.{bucket_name}.");
    connection
        .denials
        .during(&prefix, write(open.store))
        .await
        .map_err(|subject| refused(&subject))?
        .map_err(error)
}

impl kv::Host for HostState {
    async fn get(
        &mut self,
        bucket: String,
        key: String,
    ) -> wasmtime::Result<Result<Option<Entry>, KvError>> {
        let env = self.env.clone();
        Ok(async {
            let (open, connection) = self::bucket(&env, &bucket, Access::Read).await?;
            check_key(&key)?;
            let entry = connection
                .denials
                .during(crate::publish::JS_API, open.store.entry(key))
                .await
                .map_err(|subject| refused(&subject))?
                .map_err(|e| match e.kind() {
                    EntryErrorKind::InvalidKey => invalid_key(),
                    EntryErrorKind::TimedOut => timed_out(),
                    EntryErrorKind::Other => KvError::Unavailable(e.to_string()),
                })?;
            Ok(entry
                .filter(|e| e.operation == Operation::Put)
                .map(|e| Entry {
                    value: e.value.into(),
                    revision: e.revision,
                }))
        }
        .await)
    }

    async fn put(
        &mut self,
        bucket: String,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<u64, KvError>> {
        let len = value.len();
        let k = key.clone();
        let write = |store: nats_kv::Store| async move { store.put(&k, value.into()).await };
        let error = |e: nats_kv::PutError| match e.kind() {
            PutErrorKind::InvalidKey => invalid_key(),
            PutErrorKind::Publish | PutErrorKind::Ack => unavailable(&e),
        };
        let env = self.env.clone();
        Ok(self::write(&env, (&bucket, &key, len), write, error).await)
    }

    async fn create(
        &mut self,
        bucket: String,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<u64, KvError>> {
        let len = value.len();
        let k = key.clone();
        let write = |store: nats_kv::Store| async move { store.create(&k, value.into()).await };
        let error = |e: nats_kv::CreateError| match e.kind() {
            CreateErrorKind::AlreadyExists => KvError::WrongRevision,
            CreateErrorKind::InvalidKey => invalid_key(),
            CreateErrorKind::Publish | CreateErrorKind::Ack | CreateErrorKind::Other => {
                unavailable(&e)
            }
        };
        let env = self.env.clone();
        Ok(self::write(&env, (&bucket, &key, len), write, error).await)
    }

    async fn update(
        &mut self,
        bucket: String,
        key: String,
        value: Vec<u8>,
        revision: u64,
    ) -> wasmtime::Result<Result<u64, KvError>> {
        let len = value.len();
        let k = key.clone();
        let write =
            |store: nats_kv::Store| async move { store.update(&k, value.into(), revision).await };
        let error = |e: nats_kv::UpdateError| match e.kind() {
            UpdateErrorKind::WrongLastRevision => KvError::WrongRevision,
            UpdateErrorKind::InvalidKey => invalid_key(),
            UpdateErrorKind::TimedOut => timed_out(),
            UpdateErrorKind::Other => unavailable(&e),
        };
        let env = self.env.clone();
        Ok(self::write(&env, (&bucket, &key, len), write, error).await)
    }

    async fn delete(
        &mut self,
        bucket: String,
        key: String,
    ) -> wasmtime::Result<Result<(), KvError>> {
        let k = key.clone();
        let write = |store: nats_kv::Store| async move { store.delete(&k).await.map(|()| 0) };
        let error = |e: nats_kv::DeleteError| unavailable(&e);
        let env = self.env.clone();
        Ok(self::write(&env, (&bucket, &key, 0), write, error)
            .await
            .map(drop))
    }
}

/// Checks a key as JetStream KV does, saying what is wrong with it.
fn check_key(key: &str) -> Result<(), KvError> {
    let valid = |c: char| c.is_ascii_alphanumeric() || "-/_=.".contains(c);
    if key.is_empty() || key.starts_with('.') || key.ends_with('.') || !key.chars().all(valid) {
        return Err(KvError::Invalid(format!(
            "key {key:?}: use letters, digits and `-/_=.`, not starting or ending with `.`"
        )));
    }
    Ok(())
}

fn invalid_key() -> KvError {
    KvError::Invalid("the key is malformed".to_owned())
}

fn timed_out() -> KvError {
    KvError::Unavailable("the server did not answer in time; retrying later is safe".to_owned())
}

fn unavailable(e: &dyn std::error::Error) -> KvError {
    KvError::Unavailable(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_as_jetstream_does() {
        for good in ["c-1", "customer/42", "a.b", "x_y=z"] {
            assert!(check_key(good).is_ok(), "{good}");
        }
        for bad in ["", ".a", "a.", "a b", "a*", "a>"] {
            assert!(
                matches!(check_key(bad), Err(KvError::Invalid(_))),
                "{bad:?}"
            );
        }
    }
}
