//! Diffing the spec against the server: what to create, what to update field by field, and
//! which changes JetStream cannot make in place (refused before anything is touched).

use std::fmt;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy};
use async_nats::jetstream::context::{ConsumerInfoErrorKind, GetStreamErrorKind};
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, ErrorCode};
use bytesize::ByteSize;

use crate::destructive::{self, Destructive};
use crate::spec::{self, human_duration, ConsumerSpec, Spec, StreamSpec};

/// Everything `apply` would do, stream by stream.
#[derive(Debug, Clone)]
pub struct Plan {
    /// One entry per declared stream, in file order.
    pub streams: Vec<StreamPlan>,
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
    if refused.is_empty() {
        Ok(Plan { streams })
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
    })
}

async fn plan_stream(
    js: &jetstream::Context,
    declared: &StreamSpec,
    refused: &mut Vec<String>,
) -> anyhow::Result<StreamPlan> {
    let name = &declared.name;
    let current = match js.get_stream(name).await {
        Ok(mut stream) => Some(
            stream
                .info()
                .await
                .with_context(|| format!("reading stream {name}"))?
                .clone(),
        ),
        Err(e) if is_stream_not_found(e.kind()) => None,
        Err(e) => return Err(e).with_context(|| format!("looking up stream {name}")),
    };
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

    let config = stream_config(declared, current.config.clone());
    let changes = diff(stream_fields(&current.config), stream_fields(&config));
    let destructive = destructive::changes(name, &current.config, &config);
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

fn stream_change_refusal(change: &FieldChange) -> Option<&'static str> {
    match change.field {
        "storage" => Some("JetStream cannot change the storage type of an existing stream; create a new stream and move the data"),
        "retention" if change.old == "workqueue" || change.new == "workqueue" => {
            Some("JetStream cannot change retention to or from workqueue on an existing stream")
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

/// The declared stream laid over `base` (the server's config on update, defaults on create).
fn stream_config(s: &StreamSpec, base: stream::Config) -> stream::Config {
    stream::Config {
        name: s.name.clone(),
        subjects: s.subjects.clone(),
        storage: match s.storage {
            spec::Storage::File => StorageType::File,
            spec::Storage::Memory => StorageType::Memory,
        },
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
        ..base
    }
}

/// The declared consumer laid over `base` (the server's config on update, defaults on create).
fn consumer_config(c: &ConsumerSpec, base: consumer::Config) -> consumer::Config {
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

type Fields = Vec<(&'static str, String)>;

/// The managed stream fields, rendered the same way for the server's config and the spec's.
fn stream_fields(c: &stream::Config) -> Fields {
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
    ]
}

/// The managed consumer fields, rendered the same way for the server's config and the spec's.
fn consumer_fields(c: &consumer::Config) -> Fields {
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

fn deliver_policy_name(policy: &DeliverPolicy) -> &'static str {
    match policy {
        DeliverPolicy::All => "all",
        DeliverPolicy::Last => "last",
        DeliverPolicy::New => "new",
        DeliverPolicy::LastPerSubject => "last_per_subject",
        DeliverPolicy::ByStartSequence { .. } => "by_start_sequence",
        DeliverPolicy::ByStartTime { .. } => "by_start_time",
    }
}

fn diff(old: Fields, new: Fields) -> Vec<FieldChange> {
    old.into_iter()
        .zip(new)
        .filter(|((_, o), (_, n))| o != n)
        .map(|((field, old), (_, new))| FieldChange { field, old, new })
        .collect()
}

fn count_or_unlimited(n: i64) -> String {
    if n <= 0 {
        "unlimited".to_owned()
    } else {
        n.to_string()
    }
}

fn bytes_or_unlimited(n: i64) -> String {
    if n < 0 {
        "unlimited".to_owned()
    } else {
        ByteSize(n as u64).display().iec().to_string()
    }
}

fn duration_or_unlimited(d: Duration) -> String {
    if d.is_zero() {
        "unlimited".to_owned()
    } else {
        human_duration(d)
    }
}

impl Plan {
    /// True when applying would change nothing.
    pub fn is_empty(&self) -> bool {
        self.actions()
            .all(|(_, action)| *action == Action::Unchanged)
    }

    /// Every planned object with its action: `stream NAME` or `consumer STREAM/DURABLE`.
    pub fn actions(&self) -> impl Iterator<Item = (String, &Action)> {
        self.streams.iter().flat_map(|s| {
            std::iter::once((format!("stream {}", s.name), &s.action)).chain(
                s.consumers
                    .iter()
                    .map(move |c| (format!("consumer {}/{}", s.name, c.durable), &c.action)),
            )
        })
    }

    /// Fails with [`Destructive`], naming every field, when the plan lowers what protects
    /// stored messages and `allow` is false.
    pub fn check_destructive(&self, allow: bool) -> Result<(), Destructive> {
        let found: Vec<String> = self
            .streams
            .iter()
            .flat_map(|s| s.destructive.iter().cloned())
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
                || stream_fields(&stream.config),
            )?;
            for why in &stream.destructive {
                writeln!(f, "    ! destructive: {why} (needs --allow-destructive)")?;
            }
            for c in &stream.consumers {
                let label = format!("consumer {}/{}", stream.name, c.durable);
                write_action(f, &label, &c.action, || consumer_fields(&c.config))?;
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
}
