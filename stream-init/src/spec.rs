//! The declarative spec: `[[stream]]` tables with their `[[stream.consumer]]`s, `[[kv]]`
//! key-value buckets, plus `[env.<name>.stream.<STREAM>]` and `[env.<name>.kv.<BUCKET>]`
//! overlays. Parsing is strict (unknown keys are errors that name the key and line) and
//! [`Spec::load`] reports every validation problem at once.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use humantime_serde::Serde as Human;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::subject;

/// Every stream, consumer and key-value bucket the file declares, with the chosen overlay
/// applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// Streams in file order.
    pub streams: Vec<StreamSpec>,
    /// Key-value buckets (`[[kv]]`) in file order.
    pub kv: Vec<KvSpec>,
}

/// One stream as declared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSpec {
    /// Stream name, e.g. `ORDERS`.
    pub name: String,
    /// Subjects the stream captures, wildcards allowed.
    pub subjects: Vec<String>,
    /// Where messages are kept.
    #[serde(default)]
    pub storage: Storage,
    /// When messages may be removed.
    #[serde(default)]
    pub retention: Retention,
    /// What happens when a limit is reached.
    #[serde(default)]
    pub discard: Discard,
    /// Number of replicas (1 on a single server, up to 5 in a cluster).
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// Oldest message kept; unlimited when absent.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_age: Option<Duration>,
    /// Most messages kept; unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_msgs: Option<i64>,
    /// Most bytes kept; unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<ByteSize>,
    /// Largest single message accepted; unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_msg_size: Option<ByteSize>,
    /// Window in which a repeated `Nats-Msg-Id` is dropped as a duplicate.
    #[serde(default = "default_duplicate_window", with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// Whether the stream accepts JetStream atomic batch publishes (all messages stored or
    /// none; nats-server 2.12+), as the contract's `publish-atomic` needs.
    #[serde(default)]
    pub allow_atomic: bool,
    /// Durable consumers on this stream.
    #[serde(default, rename = "consumer", skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<ConsumerSpec>,
}

/// One durable pull consumer as declared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSpec {
    /// Durable name, unique within its stream.
    pub durable: String,
    /// Subjects delivered; all of the stream's when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filter_subjects: Vec<String>,
    /// How messages must be acknowledged.
    #[serde(default)]
    pub ack_policy: AckPolicy,
    /// How long the server waits for an ack before redelivering (30s when absent). With a
    /// `backoff`, JetStream uses its first step instead, so the two must agree.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub ack_wait: Option<Duration>,
    /// Deliveries allowed per message; unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_deliver: Option<i64>,
    /// Redelivery delays after each failed delivery (the last one repeats).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backoff: Vec<Human<Duration>>,
    /// Most messages delivered and not yet acked.
    #[serde(default = "default_max_ack_pending")]
    pub max_ack_pending: i64,
    /// Where a new consumer starts.
    #[serde(default)]
    pub deliver_policy: DeliverPolicy,
}

impl ConsumerSpec {
    /// The ack wait JetStream will use: the first backoff step if there is a backoff, else
    /// `ack_wait`, else 30s.
    pub fn effective_ack_wait(&self) -> Duration {
        match self.backoff.first() {
            Some(first) => **first,
            None => self.ack_wait.unwrap_or(Duration::from_secs(30)),
        }
    }
}

/// The most values a key-value bucket keeps per key (JetStream's limit).
pub const MAX_HISTORY: i64 = 64;

/// One key-value bucket as declared. JetStream keeps it in the stream `KV_<name>` (see
/// [`KvSpec::stream_name`]), configured the way async-nats's `create_key_value` makes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvSpec {
    /// Bucket name, e.g. `customer-totals`: letters, digits, `-` and `_`.
    pub name: String,
    /// Values kept per key, the latest included (1 to [`MAX_HISTORY`]).
    #[serde(default = "default_history")]
    pub history: i64,
    /// How long a value is kept after it was written; forever when absent.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
    /// Number of replicas (1 on a single server, up to 5 in a cluster).
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// Largest single value accepted; unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_value_size: Option<ByteSize>,
    /// Most bytes the bucket keeps; unlimited when absent. A full bucket refuses new values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<ByteSize>,
    /// Where values are kept.
    #[serde(default)]
    pub storage: Storage,
    /// What the bucket is for, shown by `nats kv info`; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl KvSpec {
    /// The stream JetStream keeps the bucket in: `KV_<name>`.
    pub fn stream_name(&self) -> String {
        format!("KV_{}", self.name)
    }

    /// The subjects the bucket's stream captures: `$KV.<name>.>`.
    pub fn subject(&self) -> String {
        format!("$KV.{}.>", self.name)
    }
}

/// Stream or bucket storage type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Storage {
    /// On disk.
    #[default]
    File,
    /// In memory.
    Memory,
}

/// Stream retention policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Retention {
    /// Keep messages until a limit removes them.
    #[default]
    Limits,
    /// Keep messages while a consumer is interested.
    Interest,
    /// Remove each message once acknowledged.
    Workqueue,
}

/// Stream discard policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Discard {
    /// Drop the oldest messages to make room.
    #[default]
    Old,
    /// Refuse new messages.
    New,
}

/// Consumer ack policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckPolicy {
    /// Every message is acked on its own.
    #[default]
    Explicit,
    /// Acking a message acks every earlier one.
    All,
    /// No acks.
    None,
}

/// Consumer deliver policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliverPolicy {
    /// From the first message in the stream.
    #[default]
    All,
    /// From the last message.
    Last,
    /// Only messages published after the consumer was created.
    New,
    /// The last message of each subject.
    LastPerSubject,
}

fn default_replicas() -> usize {
    1
}
fn default_history() -> i64 {
    1
}
fn default_duplicate_window() -> Duration {
    Duration::from_secs(120)
}
fn default_max_ack_pending() -> i64 {
    1000
}

/// The file as written: base streams and buckets plus named overlays kept as raw tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecFile {
    #[serde(default, rename = "stream")]
    streams: Vec<StreamSpec>,
    #[serde(default)]
    kv: Vec<KvSpec>,
    #[serde(default)]
    env: BTreeMap<String, EnvOverlay>,
}

/// The same file as plain tables, in the same order: what overlays are merged into, so every
/// value the overlay does not name stays exactly as written (`"1500000B"` is not rounded
/// through a displayed `1.4 MiB`).
#[derive(Debug, Deserialize)]
struct RawFile {
    #[serde(default)]
    stream: Vec<toml::Table>,
    #[serde(default)]
    kv: Vec<toml::Table>,
}

/// `[env.<name>]`: per-stream and per-bucket tables merged over the base declaration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvOverlay {
    #[serde(default)]
    stream: BTreeMap<String, toml::Table>,
    #[serde(default)]
    kv: BTreeMap<String, toml::Table>,
}

/// A spec that could not be loaded: every problem found, each naming where it is.
#[derive(Debug, thiserror::Error)]
pub struct SpecError {
    /// The file that was read.
    pub path: PathBuf,
    /// One line per problem.
    pub problems: Vec<String>,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid spec {}:", self.path.display())?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

impl Spec {
    /// The declaration of consumer `durable` on stream `stream`, if the spec has one.
    pub fn consumer(&self, stream: &str, durable: &str) -> Option<&ConsumerSpec> {
        let stream = self.streams.iter().find(|s| s.name == stream)?;
        stream.consumers.iter().find(|c| c.durable == durable)
    }

    /// Reads `path`, applies the overlay `env` (if any) and validates the result.
    pub fn load(path: &Path, env: Option<&str>) -> Result<Spec, SpecError> {
        let fail = |problems: Vec<String>| SpecError {
            path: path.to_owned(),
            problems,
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| fail(vec![format!("cannot read file: {e}")]))?;
        Spec::parse(&text, env).map_err(fail)
    }

    /// Parses spec text, applies the overlay `env` (if any) and validates the result.
    pub fn parse(text: &str, env: Option<&str>) -> Result<Spec, Vec<String>> {
        let file: SpecFile =
            toml::from_str(text).map_err(|e| vec![e.to_string().trim_end().to_owned()])?;
        let (mut streams, mut kv) = (file.streams, file.kv);
        if let Some(env) = env {
            let Some(overlay) = file.env.get(env) else {
                let known: Vec<&str> = file.env.keys().map(String::as_str).collect();
                return Err(vec![format!(
                    "no environment `{env}` (declared: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                )]);
            };
            // The text parsed as a SpecFile just above, so it parses as plain tables too.
            let raw: RawFile =
                toml::from_str(text).map_err(|e| vec![e.to_string().trim_end().to_owned()])?;
            overlay::apply_overlay(env, overlay, &raw, &mut streams, &mut kv)?;
        }
        let spec = Spec { streams, kv };
        let problems = spec.problems();
        if problems.is_empty() {
            Ok(spec)
        } else {
            Err(problems)
        }
    }

    /// Every rule the declaration breaks, in file order.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut names = BTreeSet::new();
        for (i, stream) in self.streams.iter().enumerate() {
            let at = format!("stream {}", display_name(&stream.name, i));
            if let Err(why) = check_name(&stream.name) {
                problems.push(format!("{at}: name {why}"));
            }
            if !names.insert(stream.name.as_str()) {
                problems.push(format!("{at}: declared more than once"));
            }
            if stream.subjects.is_empty() {
                problems.push(format!("{at}: `subjects` must list at least one subject"));
            }
            for s in &stream.subjects {
                if let Err(why) = subject::validate(s) {
                    problems.push(format!("{at}: subject {s:?} {why}"));
                }
            }
            if !(1..=5).contains(&stream.replicas) {
                problems.push(format!(
                    "{at}: replicas must be between 1 and 5, not {}",
                    stream.replicas
                ));
            }
            if stream.max_msgs.is_some_and(|n| n < 1) {
                problems.push(format!(
                    "{at}: max_msgs must be at least 1 (omit it for no limit)"
                ));
            }
            if stream
                .max_msg_size
                .is_some_and(|s| s.as_u64() > i32::MAX as u64)
            {
                problems.push(format!("{at}: max_msg_size must be under 2GiB"));
            }
            problems.extend(consumer_problems(stream, &at));
        }
        problems.extend(overlapping_subjects(&self.streams));
        problems.extend(self.bucket_problems());
        problems
    }

    /// Every rule the `[[kv]]` declarations break, in file order.
    fn bucket_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut names = BTreeSet::new();
        for (i, bucket) in self.kv.iter().enumerate() {
            let at = format!("kv {}", display_name(&bucket.name, i));
            if let Err(why) = check_bucket_name(&bucket.name) {
                problems.push(format!("{at}: name {why}"));
            }
            if !names.insert(bucket.name.as_str()) {
                problems.push(format!("{at}: declared more than once"));
            }
            let stream = bucket.stream_name();
            if self.streams.iter().any(|s| s.name == stream) {
                problems.push(format!(
                    "{at}: JetStream keeps the bucket in the stream {stream}, which is also \
                     declared as a [[stream]]"
                ));
            }
            if !(1..=MAX_HISTORY).contains(&bucket.history) {
                problems.push(format!(
                    "{at}: history must be between 1 and {MAX_HISTORY}, not {}",
                    bucket.history
                ));
            }
            if !(1..=5).contains(&bucket.replicas) {
                problems.push(format!(
                    "{at}: replicas must be between 1 and 5, not {}",
                    bucket.replicas
                ));
            }
            if bucket
                .max_value_size
                .is_some_and(|s| s.as_u64() > i32::MAX as u64)
            {
                problems.push(format!("{at}: max_value_size must be under 2GiB"));
            }
            if bucket
                .max_bytes
                .is_some_and(|s| s.as_u64() > i64::MAX as u64)
            {
                problems.push(format!("{at}: max_bytes is too large"));
            }
            for stream in &self.streams {
                for s in &stream.subjects {
                    if subject::overlaps(s, &bucket.subject()) {
                        problems.push(format!(
                            "{at}: stream {} captures subjects matching {s:?}, which include \
                             the bucket's {:?}",
                            stream.name,
                            bucket.subject()
                        ));
                    }
                }
            }
        }
        problems
    }
}

fn consumer_problems(stream: &StreamSpec, at: &str) -> Vec<String> {
    consumer_problems_on(&stream.subjects, &stream.consumers, at)
}

/// Every rule `consumers` break as consumers of a stream with `subjects`; `at` names the
/// stream in each line (`stream ORDERS`).
pub fn consumer_problems_on(
    subjects: &[String],
    consumers: &[ConsumerSpec],
    at: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut durables = BTreeSet::new();
    for (i, consumer) in consumers.iter().enumerate() {
        let at = format!("{at}, consumer {}", display_name(&consumer.durable, i));
        if let Err(why) = check_name(&consumer.durable) {
            problems.push(format!("{at}: durable name {why}"));
        }
        if !durables.insert(consumer.durable.as_str()) {
            problems.push(format!("{at}: declared more than once"));
        }
        for filter in &consumer.filter_subjects {
            if let Err(why) = subject::validate(filter) {
                problems.push(format!("{at}: filter subject {filter:?} {why}"));
            } else if !subjects.iter().any(|s| subject::is_subset(filter, s)) {
                problems.push(format!(
                    "{at}: filter subject {filter:?} is outside the stream's subjects {subjects:?}"
                ));
            }
        }
        if consumer.max_deliver.is_some_and(|n| n < 1) {
            problems.push(format!(
                "{at}: max_deliver must be at least 1 (omit it for no limit)"
            ));
        }
        if let Some(max) = consumer.max_deliver {
            if !consumer.backoff.is_empty() && consumer.backoff.len() as i64 >= max {
                problems.push(format!(
                    "{at}: backoff has {} steps but max_deliver is {max}; JetStream needs max_deliver > steps",
                    consumer.backoff.len()
                ));
            }
        }
        if let (Some(wait), Some(first)) = (consumer.ack_wait, consumer.backoff.first()) {
            if wait != **first {
                problems.push(format!(
                    "{at}: ack_wait {} differs from the first backoff step {}; JetStream uses the \
                     first backoff step as ack_wait, so omit ack_wait or make them equal",
                    human_duration(wait),
                    human_duration(**first)
                ));
            }
        }
        if consumer.max_ack_pending < 1 {
            problems.push(format!("{at}: max_ack_pending must be at least 1"));
        }
        if consumer.ack_policy == AckPolicy::None && !consumer.backoff.is_empty() {
            problems.push(format!(
                "{at}: backoff needs an ack policy other than `none`"
            ));
        }
    }
    problems
}

/// JetStream refuses two streams whose subjects overlap.
fn overlapping_subjects(streams: &[StreamSpec]) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, a) in streams.iter().enumerate() {
        for b in &streams[i + 1..] {
            for sa in &a.subjects {
                for sb in &b.subjects {
                    if subject::overlaps(sa, sb) {
                        problems.push(format!(
                            "streams {} and {} both capture subjects matching {sa:?} / {sb:?}",
                            a.name, b.name
                        ));
                    }
                }
            }
        }
    }
    problems
}

fn display_name(name: &str, index: usize) -> String {
    if name.is_empty() {
        format!("#{}", index + 1)
    } else {
        name.to_owned()
    }
}

/// Bucket names become a subject token and part of a stream name: async-nats (like every NATS
/// client) accepts only `[A-Za-z0-9_-]+`.
fn check_bucket_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("must not be empty");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
    {
        return Err("may contain only letters, digits, '-' and '_'");
    }
    Ok(())
}

/// Stream and durable names become subject tokens, so JetStream limits their characters.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("must not be empty");
    }
    if name
        .chars()
        .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
    {
        return Err("must not contain whitespace, '.', '*', '>', '/' or '\\'");
    }
    Ok(())
}

/// A duration in the spec's own notation: `24h`, `2m`, `90s`, `1500ms`: the largest unit that states the duration exactly.
pub fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

mod overlay;

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[[stream]]
name = "ORDERS"
subjects = ["orders.*"]
replicas = 3
max_age = "24h"
max_msgs = 1_000_000
max_bytes = "64MiB"

[[stream.consumer]]
durable = "processor"
filter_subjects = ["orders.created"]
backoff = ["1s", "5s"]
max_deliver = 5

[env.dev.stream.ORDERS]
replicas = 1

[env.dev.stream.ORDERS.consumer.processor]
max_deliver = 3
"#;

    #[test]
    fn durations_render_in_their_largest_exact_unit() {
        assert_eq!(human_duration(Duration::from_secs(86_400)), "24h");
        assert_eq!(human_duration(Duration::from_secs(120)), "2m");
        assert_eq!(human_duration(Duration::from_secs(90)), "90s");
        assert_eq!(human_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn parses_human_durations_and_sizes_with_defaults() {
        let spec = Spec::parse(BASE, None).unwrap();
        let s = &spec.streams[0];
        assert_eq!(s.max_age, Some(Duration::from_secs(86_400)));
        assert_eq!(s.max_bytes, Some(ByteSize::mib(64)));
        assert_eq!(s.storage, Storage::File);
        assert_eq!(s.duplicate_window, Duration::from_secs(120));
        assert!(!s.allow_atomic, "atomic publishing is off unless declared");
        let c = &s.consumers[0];
        assert_eq!(c.ack_wait, None);
        assert_eq!(*c.backoff[1], Duration::from_secs(5));
    }

    #[test]
    fn parses_allow_atomic_and_overlays_it() {
        let text = BASE.replace(
            "max_bytes = \"64MiB\"",
            "max_bytes = \"64MiB\"\nallow_atomic = true",
        );
        let spec = Spec::parse(&text, None).unwrap();
        assert!(spec.streams[0].allow_atomic);
        let text = format!("{text}\n[env.off.stream.ORDERS]\nallow_atomic = false\n");
        let off = Spec::parse(&text, Some("off")).unwrap();
        assert!(!off.streams[0].allow_atomic);
        let err = Spec::parse(
            &BASE.replace("max_age", "allow_atomic = \"yes\"\nmax_age"),
            None,
        )
        .unwrap_err();
        assert!(
            err[0].contains("allow_atomic") || err[0].contains("line 6"),
            "{err:?}"
        );
    }

    #[test]
    fn overlay_changes_only_what_it_names() {
        let base = Spec::parse(BASE, None).unwrap();
        let dev = Spec::parse(BASE, Some("dev")).unwrap();
        assert_eq!(dev.streams[0].replicas, 1);
        assert_eq!(dev.streams[0].consumers[0].max_deliver, Some(3));
        let mut expected = base.streams[0].clone();
        expected.replicas = 1;
        expected.consumers[0].max_deliver = Some(3);
        assert_eq!(dev.streams[0], expected);
    }

    #[test]
    fn unknown_key_names_the_key_and_line() {
        let err = Spec::parse(
            "[[stream]]\nname = \"A\"\nsubjects = [\"a\"]\nreplcas = 1\n",
            None,
        )
        .unwrap_err();
        assert!(err[0].contains("replcas"), "{err:?}");
        assert!(err[0].contains("line 4"), "{err:?}");
    }

    #[test]
    fn bad_duration_is_reported() {
        let err = Spec::parse(
            "[[stream]]\nname = \"A\"\nsubjects = [\"a\"]\nmax_age = \"24 lightyears\"\n",
            None,
        )
        .unwrap_err();
        assert!(
            err[0].contains("max_age") || err[0].contains("line 4"),
            "{err:?}"
        );
    }

    #[test]
    fn unknown_env_and_unknown_overlay_key_are_errors() {
        let err = Spec::parse(BASE, Some("prod")).unwrap_err();
        assert!(
            err[0].contains("no environment `prod`") && err[0].contains("dev"),
            "{err:?}"
        );
        let text = format!("{BASE}\n[env.bad.stream.ORDERS]\nreplcas = 1\n");
        let err = Spec::parse(&text, Some("bad")).unwrap_err();
        assert!(
            err[0].contains("env.bad.stream.ORDERS") && err[0].contains("replcas"),
            "{err:?}"
        );
        let text = format!("{BASE}\n[env.bad.stream.NOPE]\nreplicas = 1\n");
        let err = Spec::parse(&text, Some("bad")).unwrap_err();
        assert!(err[0].contains("no stream `NOPE`"), "{err:?}");
    }

    #[test]
    fn ack_wait_must_agree_with_the_first_backoff_step() {
        let text = BASE.replace("max_deliver = 5", "max_deliver = 5\nack_wait = \"30s\"");
        let err = Spec::parse(&text, None).unwrap_err();
        assert!(
            err[0].contains("ack_wait 30s differs from the first backoff step 1s"),
            "{err:?}"
        );
        let spec = Spec::parse(
            &BASE.replace("max_deliver = 5", "max_deliver = 5\nack_wait = \"1s\""),
            None,
        )
        .unwrap();
        assert_eq!(
            spec.streams[0].consumers[0].effective_ack_wait(),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn reports_every_problem_at_once() {
        let text = r#"
[[stream]]
name = "A"
subjects = ["a.*"]
replicas = 7

[[stream.consumer]]
durable = "c"
filter_subjects = ["b.x"]
max_deliver = 2
backoff = ["1s", "2s"]

[[stream]]
name = "B"
subjects = ["a.>"]
"#;
        let err = Spec::parse(text, None).unwrap_err();
        assert_eq!(err.len(), 4, "{err:#?}");
        assert!(err[0].contains("stream A: replicas"));
        assert!(err[1].contains("consumer c: filter subject \"b.x\" is outside"));
        assert!(err[2].contains("backoff has 2 steps but max_deliver is 2"));
        assert!(err[3].contains("streams A and B"));
    }

    const BUCKETS: &str = r#"
[[kv]]
name = "customer-totals"
history = 5
ttl = "24h"
replicas = 3
max_value_size = 1_500_000
max_bytes = "64MiB"
description = "order totals per customer"

[[kv]]
name = "sessions"
storage = "memory"

[env.dev.kv.customer-totals]
replicas = 1
"#;

    #[test]
    fn parses_buckets_with_defaults() {
        let spec = Spec::parse(BUCKETS, None).unwrap();
        let totals = &spec.kv[0];
        assert_eq!(totals.history, 5);
        assert_eq!(totals.ttl, Some(Duration::from_secs(86_400)));
        assert_eq!(totals.max_value_size, Some(ByteSize(1_500_000)));
        assert_eq!(totals.max_bytes, Some(ByteSize::mib(64)));
        assert_eq!(totals.storage, Storage::File);
        assert_eq!(totals.stream_name(), "KV_customer-totals");
        assert_eq!(totals.subject(), "$KV.customer-totals.>");
        let sessions = &spec.kv[1];
        assert_eq!(
            (sessions.history, sessions.replicas, sessions.ttl),
            (1, 1, None)
        );
        assert_eq!(sessions.storage, Storage::Memory);
        assert_eq!(
            (
                sessions.max_value_size,
                sessions.max_bytes,
                &sessions.description
            ),
            (None, None, &None)
        );
    }

    #[test]
    fn bucket_overlay_changes_only_what_it_names_and_keeps_sizes_exact() {
        let base = Spec::parse(BUCKETS, None).unwrap();
        let dev = Spec::parse(BUCKETS, Some("dev")).unwrap();
        let mut expected = base.kv[0].clone();
        expected.replicas = 1;
        assert_eq!(dev.kv[0], expected);
        assert_eq!(dev.kv[0].max_value_size, Some(ByteSize(1_500_000)));
        assert_eq!(dev.kv[1], base.kv[1]);
    }

    #[test]
    fn stream_overlay_keeps_sizes_exact() {
        let text = BASE.replace("max_bytes = \"64MiB\"", "max_bytes = 1_500_000");
        let dev = Spec::parse(&text, Some("dev")).unwrap();
        assert_eq!(dev.streams[0].max_bytes, Some(ByteSize(1_500_000)));
    }

    #[test]
    fn bucket_overlay_errors_name_the_bucket() {
        let text = format!("{BUCKETS}\n[env.bad.kv.customer-totals]\nhistroy = 2\n");
        let err = Spec::parse(&text, Some("bad")).unwrap_err();
        assert!(
            err[0].contains("env.bad.kv.customer-totals") && err[0].contains("histroy"),
            "{err:?}"
        );
        let text = format!("{BUCKETS}\n[env.bad.kv.carts]\nreplicas = 1\n");
        let err = Spec::parse(&text, Some("bad")).unwrap_err();
        assert!(err[0].contains("no bucket `carts`"), "{err:?}");
        let text = format!("{BUCKETS}\n[env.bad.kv.sessions]\nname = \"other\"\n");
        let err = Spec::parse(&text, Some("bad")).unwrap_err();
        assert!(
            err[0].contains("env.bad.kv.sessions: an overlay cannot rename a bucket"),
            "{err:?}"
        );
    }

    #[test]
    fn unknown_bucket_key_names_the_key_and_line() {
        let err = Spec::parse("[[kv]]\nname = \"carts\"\nhistroy = 2\n", None).unwrap_err();
        assert!(err[0].contains("histroy"), "{err:?}");
        assert!(err[0].contains("line 3"), "{err:?}");
    }

    #[test]
    fn reports_every_bucket_problem_at_once() {
        let text = r#"
[[stream]]
name = "KV_carts"
subjects = [">"]

[[kv]]
name = "carts"
history = 65

[[kv]]
name = "carts"
history = 0
replicas = 7

[[kv]]
name = "bad.name"
max_value_size = "3GiB"
"#;
        let err = Spec::parse(text, None).unwrap_err();
        let expected = [
            "kv carts: JetStream keeps the bucket in the stream KV_carts, which is also declared",
            "kv carts: history must be between 1 and 64, not 65",
            "kv carts: stream KV_carts captures subjects matching \">\"",
            "kv carts: declared more than once",
            "kv carts: history must be between 1 and 64, not 0",
            "kv carts: replicas must be between 1 and 5, not 7",
            "kv bad.name: name may contain only letters, digits, '-' and '_'",
            "kv bad.name: max_value_size must be under 2GiB",
        ];
        for needle in expected {
            assert!(
                err.iter().any(|e| e.contains(needle)),
                "{needle:?} in {err:#?}"
            );
        }
    }
}
