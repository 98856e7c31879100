//! What a declaration becomes on the server (the stream, bucket and consumer configs the spec
//! asks for, laid over what the server has) and how a plan shows it (each field as text,
//! and the differences between two configs).

use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy};
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use bytesize::ByteSize;

use crate::spec::{self, human_duration, ConsumerSpec, KvSpec, StreamSpec};

/// One managed field whose server value differs from the spec.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldChange {
    /// Field name as written in the spec.
    pub field: &'static str,
    /// Value on the server.
    pub old: String,
    /// Value in the spec.
    pub new: String,
}

pub(crate) fn storage_type(storage: spec::Storage) -> StorageType {
    match storage {
        spec::Storage::File => StorageType::File,
        spec::Storage::Memory => StorageType::Memory,
    }
}

/// The declared stream laid over `base` (the server's config on update, defaults on create).
pub(crate) fn stream_config(s: &StreamSpec, base: stream::Config) -> stream::Config {
    stream::Config {
        name: s.name.clone(),
        subjects: s.subjects.clone(),
        storage: storage_type(s.storage),
        retention: match s.retention {
            spec::Retention::Limits => RetentionPolicy::Limits,
            spec::Retention::Interest => RetentionPolicy::Interest,
            spec::Retention::Workqueue => RetentionPolicy::WorkQueue,
        },
        discard: match s.discard {
            spec::Discard::Old => DiscardPolicy::Old,
            spec::Discard::New => DiscardPolicy::New,
        },
        num_replicas: s.replicas,
        max_age: s.max_age.unwrap_or_default(),
        max_messages: s.max_msgs.unwrap_or(-1),
        max_bytes: s.max_bytes.map_or(-1, |b| b.as_u64() as i64),
        max_message_size: s.max_msg_size.map_or(-1, |b| b.as_u64() as i32),
        duplicate_window: s.duplicate_window,
        allow_atomic_publish: s.allow_atomic,
        ..base
    }
}

/// The declared bucket's stream laid over `base` (the server's config on update, defaults on
/// create): what async-nats's `create_key_value` and `update_key_value` send for the same
/// bucket (`kv_to_stream_config`), so a bucket made here opens with `get_key_value` and one
/// made there plans as unchanged. Fields a bucket declaration does not name (compression,
/// placement, republish, per-key TTL markers) are kept from the server, as for streams.
pub(crate) fn kv_config(b: &KvSpec, base: stream::Config) -> stream::Config {
    stream::Config {
        name: b.stream_name(),
        description: b.description.clone(),
        subjects: vec![b.subject()],
        max_messages_per_subject: b.history,
        max_age: b.ttl.unwrap_or_default(),
        max_bytes: b.max_bytes.map_or(-1, |b| b.as_u64() as i64),
        max_message_size: b.max_value_size.map_or(-1, |b| b.as_u64() as i32),
        storage: storage_type(b.storage),
        num_replicas: b.replicas,
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        allow_direct: true,
        // Left to the server, as async-nats does: two minutes, or the TTL if shorter.
        duplicate_window: Duration::ZERO,
        ..base
    }
}

/// The declared consumer laid over `base` (the server's config on update, defaults on create).
pub(crate) fn consumer_config(c: &ConsumerSpec, base: consumer::Config) -> consumer::Config {
    let (filter_subject, filter_subjects) = match c.filter_subjects.as_slice() {
        // One filter goes in the older single field, which every server version understands.
        [one] => (one.clone(), Vec::new()),
        many => (String::new(), many.to_vec()),
    };
    consumer::Config {
        durable_name: Some(c.durable.clone()),
        filter_subject,
        filter_subjects,
        ack_policy: match c.ack_policy {
            spec::AckPolicy::Explicit => AckPolicy::Explicit,
            spec::AckPolicy::All => AckPolicy::All,
            spec::AckPolicy::None => AckPolicy::None,
        },
        ack_wait: c.effective_ack_wait(),
        max_deliver: c.max_deliver.unwrap_or(-1),
        backoff: c.backoff.iter().map(|d| **d).collect(),
        max_ack_pending: c.max_ack_pending,
        deliver_policy: match c.deliver_policy {
            spec::DeliverPolicy::All => DeliverPolicy::All,
            spec::DeliverPolicy::Last => DeliverPolicy::Last,
            spec::DeliverPolicy::New => DeliverPolicy::New,
            spec::DeliverPolicy::LastPerSubject => DeliverPolicy::LastPerSubject,
        },
        ..base
    }
}

pub(crate) type Fields = Vec<(&'static str, String)>;

/// The managed stream fields, rendered the same way for the server's config and the spec's.
pub(crate) fn stream_fields(c: &stream::Config) -> Fields {
    let mut subjects = c.subjects.clone();
    subjects.sort();
    vec![
        ("subjects", format!("{subjects:?}")),
        ("storage", format!("{:?}", c.storage).to_lowercase()),
        ("retention", format!("{:?}", c.retention).to_lowercase()),
        ("discard", format!("{:?}", c.discard).to_lowercase()),
        ("replicas", c.num_replicas.max(1).to_string()),
        ("max_age", duration_or_unlimited(c.max_age)),
        ("max_msgs", count_or_unlimited(c.max_messages)),
        ("max_bytes", bytes_or_unlimited(c.max_bytes)),
        (
            "max_msg_size",
            bytes_or_unlimited(c.max_message_size.into()),
        ),
        ("duplicate_window", human_duration(c.duplicate_window)),
        ("allow_atomic", c.allow_atomic_publish.to_string()),
    ]
}

/// The stream fields a create lists: every managed field, except a feature left off
/// (`allow_atomic false`), which is the server's default.
pub(crate) fn stream_create_fields(c: &stream::Config) -> Fields {
    let mut fields = stream_fields(c);
    fields.retain(|(field, value)| !(*field == "allow_atomic" && value == "false"));
    fields
}

/// The fields a bucket declares, named as in the spec and rendered the same way for the
/// server's config and the spec's.
pub(crate) fn kv_fields(c: &stream::Config) -> Fields {
    let description = match c.description.as_deref() {
        None | Some("") => "none".to_owned(),
        Some(text) => format!("{text:?}"),
    };
    vec![
        ("storage", format!("{:?}", c.storage).to_lowercase()),
        ("history", c.max_messages_per_subject.to_string()),
        ("ttl", duration_or_unlimited(c.max_age)),
        ("replicas", c.num_replicas.max(1).to_string()),
        (
            "max_value_size",
            bytes_or_unlimited(c.max_message_size.into()),
        ),
        ("max_bytes", bytes_or_unlimited(c.max_bytes)),
        ("description", description),
    ]
}

/// The stream fields every bucket has the same (what makes a stream a key-value bucket):
/// planned when they differ, never listed on create.
pub(crate) fn kv_layout_fields(c: &stream::Config) -> Fields {
    let mut subjects = c.subjects.clone();
    subjects.sort();
    vec![
        ("subjects", format!("{subjects:?}")),
        ("retention", format!("{:?}", c.retention).to_lowercase()),
        ("discard", format!("{:?}", c.discard).to_lowercase()),
        ("allow_rollup", c.allow_rollup.to_string()),
        ("deny_delete", c.deny_delete.to_string()),
        ("deny_purge", c.deny_purge.to_string()),
        ("allow_direct", c.allow_direct.to_string()),
    ]
}

/// The managed consumer fields, rendered the same way for the server's config and the spec's.
pub(crate) fn consumer_fields(c: &consumer::Config) -> Fields {
    let mut filters = if c.filter_subjects.is_empty() && !c.filter_subject.is_empty() {
        vec![c.filter_subject.clone()]
    } else {
        c.filter_subjects.clone()
    };
    filters.sort();
    vec![
        (
            "filter_subjects",
            if filters.is_empty() {
                "all of the stream".to_owned()
            } else {
                format!("{filters:?}")
            },
        ),
        ("ack_policy", format!("{:?}", c.ack_policy).to_lowercase()),
        ("ack_wait", human_duration(c.ack_wait)),
        ("max_deliver", count_or_unlimited(c.max_deliver)),
        (
            "backoff",
            format!(
                "[{}]",
                c.backoff
                    .iter()
                    .map(|d| human_duration(*d))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        ("max_ack_pending", count_or_unlimited(c.max_ack_pending)),
        (
            "deliver_policy",
            deliver_policy_name(&c.deliver_policy).to_owned(),
        ),
    ]
}

pub(crate) fn deliver_policy_name(policy: &DeliverPolicy) -> &'static str {
    match policy {
        DeliverPolicy::All => "all",
        DeliverPolicy::Last => "last",
        DeliverPolicy::New => "new",
        DeliverPolicy::LastPerSubject => "last_per_subject",
        DeliverPolicy::ByStartSequence { .. } => "by_start_sequence",
        DeliverPolicy::ByStartTime { .. } => "by_start_time",
    }
}

pub(crate) fn diff(old: Fields, new: Fields) -> Vec<FieldChange> {
    old.into_iter()
        .zip(new)
        .filter(|((_, o), (_, n))| o != n)
        .map(|((field, old), (_, new))| FieldChange { field, old, new })
        .collect()
}

pub(crate) fn count_or_unlimited(n: i64) -> String {
    if n <= 0 {
        "unlimited".to_owned()
    } else {
        n.to_string()
    }
}

pub(crate) fn bytes_or_unlimited(n: i64) -> String {
    if n < 0 {
        "unlimited".to_owned()
    } else {
        ByteSize(n as u64).display().iec().to_string()
    }
}

pub(crate) fn duration_or_unlimited(d: Duration) -> String {
    if d.is_zero() {
        "unlimited".to_owned()
    } else {
        human_duration(d)
    }
}
