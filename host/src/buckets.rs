//! A component's key-value buckets: the grants its configuration gives (checked before any
//! operation), and the buckets opened so far over its connection, with the largest value
//! each accepts. The operations themselves are the `kv` module's.

use std::collections::HashMap;
use std::sync::Mutex;

use async_nats::jetstream::context::{GetStreamError, GetStreamErrorKind, KeyValueErrorKind};
use async_nats::jetstream::kv as nats_kv;
use async_nats::jetstream::ErrorCode;

use crate::bindings::KvError;
use crate::config::KvGrant;
use crate::publish::Connection;

/// A component's key-value buckets: what it was granted, and the buckets opened so far.
pub struct Buckets {
    grants: Vec<KvGrant>,
    open: Mutex<HashMap<String, Bucket>>,
}

/// An opened bucket, with the largest value it accepts.
#[derive(Clone)]
pub(crate) struct Bucket {
    /// The store.
    pub store: nats_kv::Store,
    /// The largest value it accepts, in bytes.
    pub max_value: u64,
}

/// Whether an operation reads or writes.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Access {
    /// Reads only.
    Read,
    /// Writes.
    Write,
}

impl Buckets {
    /// The buckets `grants` names, none opened yet.
    pub fn new(grants: Vec<KvGrant>) -> Self {
        Buckets {
            grants,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Checks the grant for `access` to `bucket`.
    fn check(&self, bucket: &str, access: Access) -> Result<(), KvError> {
        match self.grants.iter().find(|g| g.bucket == bucket) {
            None => Err(KvError::Denied(format!(
                "bucket {bucket:?} is not granted to this component (its `kv` list)"
            ))),
            Some(grant) if grant.read_only && access == Access::Write => Err(KvError::Denied(
                format!("bucket {bucket:?} is granted read-only to this component"),
            )),
            Some(_) => Ok(()),
        }
    }

    /// The granted bucket, opened over `connection` on first use.
    pub(crate) async fn open(
        &self,
        connection: &Connection,
        bucket: &str,
        access: Access,
    ) -> Result<Bucket, KvError> {
        self.check(bucket, access)?;
        if let Some(open) = self.lock().get(bucket) {
            return Ok(open.clone());
        }
        let opened = connection
            .denials
            .during(crate::publish::JS_API, connection.js.get_key_value(bucket))
            .await
            .map_err(|subject| refused(&subject))?
            .map_err(|e| match e.kind() {
                KeyValueErrorKind::GetBucket if no_such_stream(&e) => {
                    KvError::NotFound(bucket.to_owned())
                }
                _ => KvError::Unavailable(format!("opening bucket {bucket:?}: {e:#}")),
            })?;
        let server_max = connection.js.client().server_info().max_payload as u64;
        let max_value = match u64::try_from(opened.stream.cached_info().config.max_message_size) {
            Ok(limit) if limit > 0 => limit.min(server_max),
            _ => server_max,
        };
        let open = Bucket {
            store: opened,
            max_value,
        };
        self.lock().insert(bucket.to_owned(), open.clone());
        Ok(open)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Bucket>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether opening a bucket failed because its stream does not exist (JetStream's error
/// code, not the message's wording).
fn no_such_stream(error: &(dyn std::error::Error + 'static)) -> bool {
    let source = error.source();
    let Some(stream) = source.and_then(|s| s.downcast_ref::<GetStreamError>()) else {
        return false;
    };
    matches!(stream.kind(), GetStreamErrorKind::JetStream(api)
        if api.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// The server refused the connection `subject`: its permissions do not allow the bucket.
pub(crate) fn refused(subject: &str) -> KvError {
    KvError::Denied(format!(
        "{subject} (refused by the NATS server: the connection's permissions do not allow it)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buckets() -> Buckets {
        Buckets::new(vec![
            KvGrant {
                bucket: "carts".into(),
                read_only: false,
            },
            KvGrant {
                bucket: "prices".into(),
                read_only: true,
            },
        ])
    }

    #[test]
    fn grants_decide_reads_and_writes() {
        let buckets = buckets();
        assert!(buckets.check("carts", Access::Write).is_ok());
        assert!(buckets.check("prices", Access::Read).is_ok());
        let read_only = buckets.check("prices", Access::Write).unwrap_err();
        assert!(matches!(&read_only, KvError::Denied(why) if why.contains("read-only")));
        let other = buckets.check("orders", Access::Read).unwrap_err();
        assert!(
            matches!(&other, KvError::Denied(why) if why.contains("\"orders\" is not granted"))
        );
    }
}
