//! Diffing the spec against the server: what to create, what to update field by field, and
//! which changes JetStream cannot make in place (refused before anything is touched). A
//! key-value bucket is planned as the stream JetStream keeps it in (`KV_<name>`), but named
//! and described as the spec names it (`kv carts`, `history`, `ttl`).

use std::fmt;

use anyhow::Context as _;
use async_nats::jetstream::consumer;
use async_nats::jetstream::context::{ConsumerInfoErrorKind, GetStreamErrorKind};
use async_nats::jetstream::stream;
use async_nats::jetstream::{self, ErrorCode};

use crate::destructive::{self, Destructive};
pub use crate::fields::FieldChange;
use crate::fields::{
    consumer_config, consumer_fields, diff, kv_config, kv_fields, kv_layout_fields, stream_config,
    stream_create_fields, stream_fields, Fields,
};
use crate::spec::{self, ConsumerSpec, KvSpec, Spec, StreamSpec};

/// Everything `apply` would do, stream by stream, then bucket by bucket.
#[derive(Debug, Clone)]
pub struct Plan {
    /// One entry per declared stream, in file order.
    pub streams: Vec<StreamPlan>,
    /// One entry per declared key-value bucket, in file order.
    pub kv: Vec<KvPlan>,
}

/// What happens to one stream and its consumers.
#[derive(Debug, Clone)]
pub struct StreamPlan {
    /// Stream name.
    pub name: String,
    /// Create, update or leave alone.
    pub action: Action,
    /// The full configuration `apply` sends (unmanaged fields kept from the server).
    pub config: stream::Config,
    /// The stream's declared consumers.
    pub consumers: Vec<ConsumerPlan>,
    /// The part of an update that lowers what protects stored messages (see
    /// [`crate::destructive`]), one line per field.
    pub destructive: Vec<String>,
}

/// What happens to one key-value bucket.
#[derive(Debug, Clone)]
pub struct KvPlan {
    /// Bucket name (its stream is `KV_<name>`).
    pub name: String,
    /// Create, update or leave alone.
    pub action: Action,
    /// The full configuration of the bucket's stream that `apply` sends: the one async-nats's
    /// `create_key_value` makes, with unmanaged fields kept from the server on update.
    pub config: stream::Config,
    /// The part of an update that lowers what protects stored values (see
    /// [`crate::destructive`]), one line per field.
    pub destructive: Vec<String>,
}

/// What happens to one durable consumer.
#[derive(Debug, Clone)]
pub struct ConsumerPlan {
    /// Durable name.
    pub durable: String,
    /// Create, update or leave alone.
    pub action: Action,
    /// The full configuration `apply` sends (unmanaged fields kept from the server).
    pub config: consumer::Config,
}

/// The change planned for one object.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// It does not exist yet.
    Create,
    /// It exists and these fields differ.
    Update(Vec<FieldChange>),
    /// It exists and matches the spec.
    Unchanged,
}

/// Changes JetStream cannot make in place; nothing was touched.
#[derive(Debug, thiserror::Error)]
#[error("refusing to change what JetStream cannot change in place (nothing was touched):\n  - {}", .0.join("\n  - "))]
pub struct Refused(pub Vec<String>);

/// Compares `spec` with what the server has. Fails with [`Refused`] if any declared change
/// cannot be made in place.
pub async fn plan(js: &jetstream::Context, spec: &Spec) -> anyhow::Result<Plan> {
    let mut streams = Vec::new();
    let mut refused = Vec::new();
    for declared in &spec.streams {
        let stream_plan = plan_stream(js, declared, &mut refused).await?;
        streams.push(stream_plan);
    }
    let mut kv = Vec::new();
    for declared in &spec.kv {
        kv.push(plan_bucket(js, declared, &mut refused).await?);
    }
    if refused.is_empty() {
        Ok(Plan { streams, kv })
    } else {
        Err(Refused(refused).into())
    }
}

/// Plans `consumers` on the existing stream `stream_name` and leaves the stream itself alone:
/// for consumers declared apart from their stream (a drop-in handler's own), where the stream
/// belongs to the operator. Fails, naming the stream, when it does not exist or a consumer is
/// invalid for it; with [`Refused`] when a change cannot be made in place.
pub async fn plan_consumers(
    js: &jetstream::Context,
    stream_name: &str,
    consumers: &[ConsumerSpec],
) -> anyhow::Result<Plan> {
    let mut stream = js.get_stream(stream_name).await.with_context(|| {
        format!("looking up stream {stream_name} (streams are declared by the operator)")
    })?;
    let info = stream
        .info()
        .await
        .with_context(|| format!("reading stream {stream_name}"))?
        .clone();
    let at = format!("stream {stream_name}");
    let problems = spec::consumer_problems_on(&info.config.subjects, consumers, &at);
    if !problems.is_empty() {
        anyhow::bail!(problems.join("; "));
    }
    let mut refused = Vec::new();
    let mut planned = Vec::new();
    for declared in consumers {
        planned.push(plan_consumer(&stream, stream_name, declared, &mut refused).await?);
    }
    if !refused.is_empty() {
        return Err(Refused(refused).into());
    }
    Ok(Plan {
        streams: vec![StreamPlan {
            name: stream_name.to_owned(),
            action: Action::Unchanged,
            config: info.config,
            consumers: planned,
            destructive: Vec::new(),
        }],
        kv: Vec::new(),
    })
}

async fn plan_stream(
    js: &jetstream::Context,
    declared: &StreamSpec,
    refused: &mut Vec<String>,
) -> anyhow::Result<StreamPlan> {
    let name = &declared.name;
    let current = server_config(js, name, &format!("stream {name}")).await?;
    let Some(current) = current else {
        let consumers = declared
            .consumers
            .iter()
            .map(|c| ConsumerPlan {
                durable: c.durable.clone(),
                action: Action::Create,
                config: consumer_config(c, consumer::Config::default()),
            })
            .collect();
        return Ok(StreamPlan {
            name: name.clone(),
            action: Action::Create,
            config: stream_config(declared, stream::Config::default()),
            consumers,
            destructive: Vec::new(),
        });
    };

    let config = stream_config(declared, current.clone());
    let changes = diff(stream_fields(&current), stream_fields(&config));
    let destructive = destructive::changes(name, &current, &config);
    for change in &changes {
        if let Some(why) = stream_change_refusal(change) {
            refused.push(format!(
                "stream {name}: {} {} → {}: {why}",
                change.field, change.old, change.new
            ));
        }
    }
    let stream = js
        .get_stream(name)
        .await
        .with_context(|| format!("looking up stream {name}"))?;
    let mut consumers = Vec::new();
    for declared_consumer in &declared.consumers {
        consumers.push(plan_consumer(&stream, name, declared_consumer, refused).await?);
    }
    Ok(StreamPlan {
        name: name.clone(),
        action: action_for(changes),
        config,
        consumers,
        destructive,
    })
}

/// The configuration the server has for stream `stream`, or `None` when there is no such
/// stream; `label` names it in errors (`stream ORDERS`, `kv carts`).
async fn server_config(
    js: &jetstream::Context,
    stream: &str,
    label: &str,
) -> anyhow::Result<Option<stream::Config>> {
    match js.get_stream(stream).await {
        Ok(mut handle) => Ok(Some(
            handle
                .info()
                .await
                .with_context(|| format!("reading {label}"))?
                .config
                .clone(),
        )),
        Err(e) if is_stream_not_found(e.kind()) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("looking up {label}")),
    }
}

async fn plan_bucket(
    js: &jetstream::Context,
    declared: &KvSpec,
    refused: &mut Vec<String>,
) -> anyhow::Result<KvPlan> {
    let name = &declared.name;
    let label = format!("kv {name}");
    let Some(current) = server_config(js, &declared.stream_name(), &label).await? else {
        return Ok(KvPlan {
            name: name.clone(),
            action: Action::Create,
            config: kv_config(declared, stream::Config::default()),
            destructive: Vec::new(),
        });
    };
    let config = kv_config(declared, current.clone());
    let mut changes = diff(kv_fields(&current), kv_fields(&config));
    changes.extend(diff(kv_layout_fields(&current), kv_layout_fields(&config)));
    for change in &changes {
        if let Some(why) = kv_change_refusal(declared, change) {
            refused.push(format!(
                "{label}: {} {} → {}: {why}",
                change.field, change.old, change.new
            ));
        }
    }
    Ok(KvPlan {
        name: name.clone(),
        action: action_for(changes),
        destructive: destructive::kv_changes(name, &current, &config),
        config,
    })
}

async fn plan_consumer(
    stream: &stream::Stream,
    stream_name: &str,
    declared: &ConsumerSpec,
    refused: &mut Vec<String>,
) -> anyhow::Result<ConsumerPlan> {
    let durable = &declared.durable;
    let current = match stream.consumer_info(durable).await {
        Ok(info) => info.config,
        Err(e) if is_consumer_not_found(e.kind()) => {
            return Ok(ConsumerPlan {
                durable: durable.clone(),
                action: Action::Create,
                config: consumer_config(declared, consumer::Config::default()),
            })
        }
        Err(e) => {
            return Err(e).with_context(|| format!("looking up consumer {stream_name}/{durable}"))
        }
    };
    let config = consumer_config(declared, current.clone());
    let changes = diff(consumer_fields(&current), consumer_fields(&config));
    for change in &changes {
        if matches!(change.field, "ack_policy" | "deliver_policy") {
            refused.push(format!(
                "consumer {stream_name}/{durable}: {} {} → {}: JetStream cannot change it on an existing consumer; \
                 declare a consumer with a new durable name instead",
                change.field, change.old, change.new
            ));
        }
    }
    Ok(ConsumerPlan {
        durable: durable.clone(),
        action: action_for(changes),
        config,
    })
}

/// The managed fields in which a consumer's configuration on the server (`actual`) differs
/// from its declaration: what was changed by hand since the spec was applied. Each change's
/// `old` is the server's value, `new` the spec's.
pub fn consumer_drift(declared: &ConsumerSpec, actual: &consumer::Config) -> Vec<FieldChange> {
    let desired = consumer_config(declared, actual.clone());
    diff(consumer_fields(actual), consumer_fields(&desired))
}

fn is_stream_not_found(kind: GetStreamErrorKind) -> bool {
    matches!(kind, GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

fn is_consumer_not_found(kind: ConsumerInfoErrorKind) -> bool {
    match kind {
        ConsumerInfoErrorKind::NotFound => true,
        ConsumerInfoErrorKind::JetStream(e) => e.error_code() == ErrorCode::CONSUMER_NOT_FOUND,
        _ => false,
    }
}

/// Why JetStream cannot make `change` on an existing stream, if it cannot. (`allow_atomic`
/// can be turned on and off in place: tests/stream_init/atomic.rs.)
fn stream_change_refusal(change: &FieldChange) -> Option<&'static str> {
    match change.field {
        "storage" => Some("JetStream cannot change the storage type of an existing stream; create a new stream and move the data"),
        "retention" if change.old == "workqueue" || change.new == "workqueue" => {
            Some("JetStream cannot change retention to or from workqueue on an existing stream")
        }
        _ => None,
    }
}

fn kv_change_refusal(bucket: &KvSpec, change: &FieldChange) -> Option<String> {
    match change.field {
        "storage" => Some("JetStream cannot change the storage type of an existing bucket; declare a new bucket and copy the keys".to_owned()),
        "subjects" => Some(format!(
            "the stream {} is not this key-value bucket (a mirror, or a stream made for something \
             else?); remove it or declare another bucket name",
            bucket.stream_name()
        )),
        "retention" if change.old == "workqueue" => {
            Some("JetStream cannot change retention from workqueue on an existing stream".to_owned())
        }
        _ => None,
    }
}

fn action_for(changes: Vec<FieldChange>) -> Action {
    if changes.is_empty() {
        Action::Unchanged
    } else {
        Action::Update(changes)
    }
}

impl Plan {
    /// True when applying would change nothing.
    pub fn is_empty(&self) -> bool {
        self.actions()
            .all(|(_, action)| *action == Action::Unchanged)
    }

    /// Every planned object with its action: `stream NAME`, `consumer STREAM/DURABLE` or
    /// `kv BUCKET`.
    pub fn actions(&self) -> impl Iterator<Item = (String, &Action)> {
        let streams = self.streams.iter().flat_map(|s| {
            std::iter::once((format!("stream {}", s.name), &s.action)).chain(
                s.consumers
                    .iter()
                    .map(move |c| (format!("consumer {}/{}", s.name, c.durable), &c.action)),
            )
        });
        let buckets = self
            .kv
            .iter()
            .map(|b| (format!("kv {}", b.name), &b.action));
        streams.chain(buckets)
    }

    /// Fails with [`Destructive`], naming every field, when the plan lowers what protects
    /// stored messages and `allow` is false.
    pub fn check_destructive(&self, allow: bool) -> Result<(), Destructive> {
        let streams = self.streams.iter().flat_map(|s| &s.destructive);
        let found: Vec<String> = streams
            .chain(self.kv.iter().flat_map(|b| &b.destructive))
            .cloned()
            .collect();
        if allow || found.is_empty() {
            Ok(())
        } else {
            Err(Destructive(found))
        }
    }

    /// How many objects would be created, updated and left unchanged.
    pub fn counts(&self) -> (usize, usize, usize) {
        self.actions()
            .fold((0, 0, 0), |(c, u, n), (_, action)| match action {
                Action::Create => (c + 1, u, n),
                Action::Update(_) => (c, u + 1, n),
                Action::Unchanged => (c, u, n + 1),
            })
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for stream in &self.streams {
            write_action(
                f,
                &format!("stream {}", stream.name),
                &stream.action,
                || stream_create_fields(&stream.config),
            )?;
            for why in &stream.destructive {
                writeln!(f, "    ! destructive: {why} (needs --allow-destructive)")?;
            }
            for c in &stream.consumers {
                let label = format!("consumer {}/{}", stream.name, c.durable);
                write_action(f, &label, &c.action, || consumer_fields(&c.config))?;
            }
        }
        for bucket in &self.kv {
            write_action(f, &format!("kv {}", bucket.name), &bucket.action, || {
                kv_fields(&bucket.config)
            })?;
            for why in &bucket.destructive {
                writeln!(f, "    ! destructive: {why} (needs --allow-destructive)")?;
            }
        }
        let (create, update, unchanged) = self.counts();
        write!(
            f,
            "Plan: {create} to create, {update} to update, {unchanged} unchanged."
        )
    }
}

fn write_action(
    f: &mut fmt::Formatter<'_>,
    label: &str,
    action: &Action,
    fields: impl FnOnce() -> Fields,
) -> fmt::Result {
    match action {
        Action::Create => {
            writeln!(f, "+ {label}: create")?;
            for (field, value) in fields() {
                writeln!(f, "      {field:<17} {value}")?;
            }
        }
        Action::Update(changes) => {
            writeln!(f, "~ {label}: update")?;
            for c in changes {
                writeln!(f, "      {:<17} {} → {}", c.field, c.old, c.new)?;
            }
        }
        Action::Unchanged => writeln!(f, "  {label}: no changes")?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use async_nats::jetstream::stream::{DiscardPolicy, RetentionPolicy};

    use super::*;

    fn orders() -> StreamSpec {
        Spec::parse(
            r#"
[[stream]]
name = "ORDERS"
subjects = ["orders.*"]
replicas = 3
max_age = "24h"
max_msgs = 1_000_000
[[stream.consumer]]
durable = "processor"
filter_subjects = ["orders.created"]
backoff = ["1s", "5s"]
max_deliver = 5
"#,
            None,
        )
        .unwrap()
        .streams
        .remove(0)
    }

    #[test]
    fn same_spec_over_its_own_config_has_no_changes() {
        let s = orders();
        let cfg = stream_config(&s, stream::Config::default());
        assert!(diff(
            stream_fields(&cfg),
            stream_fields(&stream_config(&s, cfg.clone()))
        )
        .is_empty());
        let c = consumer_config(&s.consumers[0], consumer::Config::default());
        assert!(diff(
            consumer_fields(&c),
            consumer_fields(&consumer_config(&s.consumers[0], c.clone()))
        )
        .is_empty());
    }

    #[test]
    fn update_lists_old_and_new_values_and_keeps_unmanaged_fields() {
        let mut s = orders();
        let mut server = stream_config(&s, stream::Config::default());
        server.description = Some("kept".into());
        s.replicas = 1;
        s.max_age = Some(Duration::from_secs(3600));
        let desired = stream_config(&s, server.clone());
        assert_eq!(desired.description.as_deref(), Some("kept"));
        let changes = diff(stream_fields(&server), stream_fields(&desired));
        assert_eq!(
            changes,
            vec![
                FieldChange {
                    field: "replicas",
                    old: "3".into(),
                    new: "1".into()
                },
                FieldChange {
                    field: "max_age",
                    old: "24h".into(),
                    new: "1h".into()
                },
            ]
        );
    }

    #[test]
    fn allow_atomic_is_planned_like_other_fields_and_listed_on_create_only_when_on() {
        let mut s = orders();
        let server = stream_config(&s, stream::Config::default());
        assert!(!server.allow_atomic_publish);
        let fields = |c: &stream::Config| -> Vec<&'static str> {
            stream_create_fields(c)
                .into_iter()
                .map(|(f, _)| f)
                .collect()
        };
        assert!(!fields(&server).contains(&"allow_atomic"));
        s.allow_atomic = true;
        let desired = stream_config(&s, server.clone());
        assert!(desired.allow_atomic_publish);
        assert_eq!(
            stream_create_fields(&desired).last(),
            Some(&("allow_atomic", "true".to_owned()))
        );
        assert_eq!(
            diff(stream_fields(&server), stream_fields(&desired)),
            vec![FieldChange {
                field: "allow_atomic",
                old: "false".into(),
                new: "true".into()
            }]
        );
        let change = &diff(stream_fields(&desired), stream_fields(&server))[0];
        assert_eq!(
            (change.old.as_str(), change.new.as_str()),
            ("true", "false")
        );
        assert!(stream_change_refusal(change).is_none());
    }

    #[test]
    fn storage_and_workqueue_changes_are_refused() {
        let change = |field, old: &str, new: &str| FieldChange {
            field,
            old: old.into(),
            new: new.into(),
        };
        assert!(stream_change_refusal(&change("storage", "file", "memory")).is_some());
        assert!(stream_change_refusal(&change("retention", "limits", "workqueue")).is_some());
        assert!(stream_change_refusal(&change("retention", "limits", "interest")).is_none());
        assert!(stream_change_refusal(&change("replicas", "1", "3")).is_none());
    }

    #[test]
    fn single_filter_uses_the_portable_field() {
        let s = orders();
        let c = consumer_config(&s.consumers[0], consumer::Config::default());
        assert_eq!(c.filter_subject, "orders.created");
        assert!(c.filter_subjects.is_empty());
        assert_eq!(
            c.backoff,
            vec![Duration::from_secs(1), Duration::from_secs(5)]
        );
    }

    fn carts() -> KvSpec {
        Spec::parse(
            r#"
[[kv]]
name = "carts"
history = 5
ttl = "1h"
max_value_size = "1KiB"
"#,
            None,
        )
        .unwrap()
        .kv
        .remove(0)
    }

    #[test]
    fn a_bucket_is_the_stream_async_nats_makes_for_it() {
        let c = kv_config(&carts(), stream::Config::default());
        assert_eq!(c.name, "KV_carts");
        assert_eq!(c.subjects, vec!["$KV.carts.>".to_owned()]);
        assert_eq!(c.max_messages_per_subject, 5);
        assert_eq!(c.max_age, Duration::from_secs(3600));
        assert_eq!(c.max_message_size, 1024);
        assert_eq!((c.max_bytes, c.max_messages), (-1, 0));
        assert_eq!(c.discard, DiscardPolicy::New);
        assert_eq!(c.retention, RetentionPolicy::Limits);
        assert!(c.allow_rollup && c.deny_delete && c.allow_direct && !c.deny_purge);
        assert_eq!(c.duplicate_window, Duration::ZERO, "the server's default");
        assert_eq!(c.num_replicas, 1);
    }

    #[test]
    fn same_bucket_over_its_own_config_has_no_changes_and_keeps_unmanaged_fields() {
        let b = carts();
        let mut server = kv_config(&b, stream::Config::default());
        server.duplicate_window = Duration::from_secs(120);
        server.compression = Some(stream::Compression::S2);
        let desired = kv_config(&b, server.clone());
        assert!(diff(kv_fields(&server), kv_fields(&desired)).is_empty());
        assert!(diff(kv_layout_fields(&server), kv_layout_fields(&desired)).is_empty());
        assert_eq!(desired.compression, Some(stream::Compression::S2));
    }

    #[test]
    fn bucket_updates_use_the_spec_names() {
        let mut b = carts();
        let server = kv_config(&b, stream::Config::default());
        b.history = 10;
        b.ttl = None;
        let changes = diff(
            kv_fields(&server),
            kv_fields(&kv_config(&b, server.clone())),
        );
        assert_eq!(
            changes,
            vec![
                FieldChange {
                    field: "history",
                    old: "5".into(),
                    new: "10".into()
                },
                FieldChange {
                    field: "ttl",
                    old: "1h".into(),
                    new: "unlimited".into()
                },
            ]
        );
    }

    #[test]
    fn bucket_storage_changes_and_foreign_streams_are_refused() {
        let b = carts();
        let change = |field, old: &str, new: &str| FieldChange {
            field,
            old: old.into(),
            new: new.into(),
        };
        let storage = kv_change_refusal(&b, &change("storage", "file", "memory")).unwrap();
        assert!(
            storage.contains("storage type of an existing bucket"),
            "{storage}"
        );
        let subjects = kv_change_refusal(&b, &change("subjects", "[\"carts.*\"]", "[]")).unwrap();
        assert!(
            subjects.contains("KV_carts is not this key-value bucket"),
            "{subjects}"
        );
        assert!(kv_change_refusal(&b, &change("history", "1", "5")).is_none());
        assert!(kv_change_refusal(&b, &change("allow_direct", "false", "true")).is_none());
    }
}
