//! `jetwasm.toml` as written: strict serde structs (unknown keys are refused, naming the key
//! and line), with every optional key still optional. [`super::Config`] is what they become
//! once resolved and checked.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use super::{HttpRoute, Limits, NatsConfig, Runtime};

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub nats: NatsConfig,
    #[serde(default)]
    pub streams: Option<PathBuf>,
    #[serde(default)]
    pub env: Option<String>,
    #[serde(default)]
    pub allow_destructive: bool,
    #[serde(default)]
    pub runtime: Runtime,
    #[serde(default, rename = "handler")]
    pub handlers: Vec<RawHandler>,
    #[serde(default, rename = "publisher")]
    pub publishers: Vec<RawPublisher>,
    #[serde(default, rename = "tenant")]
    pub tenants: Vec<super::tenant::RawTenant>,
}

/// Limits as written in a component's table: each may be absent.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    pub memory: Option<ByteSize>,
    #[serde(default, with = "humantime_serde")]
    pub cpu_time: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    pub max_in_flight: Option<usize>,
    pub prefetch: Option<usize>,
    pub max_message_size: Option<ByteSize>,
    pub max_publishes: Option<u32>,
}

impl LimitOverrides {
    /// These overrides laid over `base`.
    pub fn over(&self, base: Limits) -> Limits {
        Limits {
            memory: self.memory.unwrap_or(base.memory),
            cpu_time: self.cpu_time.unwrap_or(base.cpu_time),
            timeout: self.timeout.unwrap_or(base.timeout),
            max_in_flight: self.max_in_flight.unwrap_or(base.max_in_flight),
            prefetch: self.prefetch.unwrap_or(base.prefetch),
            max_message_size: self.max_message_size.unwrap_or(base.max_message_size),
            max_publishes: self.max_publishes.unwrap_or(base.max_publishes),
        }
    }
}

/// What handlers and publishers both have, borrowed from either.
pub struct Common<'a> {
    pub name: &'a str,
    pub tenant: Option<&'a str>,
    pub component: &'a PathBuf,
    pub publish: &'a [String],
    pub kv: &'a [RawKvGrant],
    pub message_ids: RawMessageIds,
    pub traceparent: RawTraceparent,
    pub limits: &'a LimitOverrides,
    pub config: &'a BTreeMap<String, toml::Value>,
}

/// `instances = "fresh" | "reuse"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawInstances {
    #[default]
    Fresh,
    Reuse,
}

/// One `[[handler]]`. (Shared keys are repeated here and in [`RawPublisher`]: serde cannot
/// refuse unknown keys in a flattened struct.)
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHandler {
    pub name: String,
    pub tenant: Option<String>,
    pub component: PathBuf,
    pub stream: String,
    pub consumer: String,
    #[serde(default)]
    pub publish: Vec<String>,
    #[serde(default)]
    pub kv: Vec<RawKvGrant>,
    #[serde(default)]
    pub message_ids: RawMessageIds,
    #[serde(default)]
    pub traceparent: RawTraceparent,
    #[serde(default)]
    pub confirm_acks: bool,
    pub ordering: Option<RawOrdering>,
    pub shadow: Option<RawShadow>,
    pub batch: Option<RawBatch>,
    #[serde(default)]
    pub instances: RawInstances,
    pub messages_per_instance: Option<u32>,
    #[serde(default)]
    pub limits: LimitOverrides,
    #[serde(default)]
    pub config: BTreeMap<String, toml::Value>,
}

/// `message_ids = "derived" | "given"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawMessageIds {
    #[default]
    Derived,
    Given,
}

/// `traceparent = "stamped" | "given"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawTraceparent {
    #[default]
    Stamped,
    Given,
}

/// One entry of `kv = [...]`: a bucket name, or a table saying how.
#[derive(Debug, Clone, Deserialize)]
#[serde(
    untagged,
    expecting = "a bucket name, or a table like { bucket = \"prices\", read_only = true }"
)]
pub enum RawKvGrant {
    Bucket(String),
    Table(RawKvTable),
}

/// `{ bucket = "...", read_only = true }` in `kv = [...]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKvTable {
    pub bucket: String,
    #[serde(default)]
    pub read_only: bool,
}

/// A handler's `ordering = { key = "..." }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOrdering {
    pub key: String,
}

/// A batch handler's `batch = { max = 100, max_wait = "50ms" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBatch {
    #[serde(default = "RawBatch::default_max")]
    pub max: usize,
    #[serde(default = "RawBatch::default_max_wait", with = "humantime_serde")]
    pub max_wait: Duration,
}

impl RawBatch {
    fn default_max() -> usize {
        100
    }

    fn default_max_wait() -> Duration {
        Duration::from_millis(50)
    }
}

/// A handler's `shadow = { component = "...", sample = 0.1 }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShadow {
    pub component: PathBuf,
    #[serde(default = "RawShadow::every_message")]
    pub sample: f64,
}

impl RawShadow {
    fn every_message() -> f64 {
        1.0
    }
}

/// One `[[publisher]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPublisher {
    pub name: String,
    pub tenant: Option<String>,
    pub component: PathBuf,
    #[serde(default, with = "humantime_serde")]
    pub every: Option<Duration>,
    pub cron: Option<String>,
    pub http: Option<HttpRoute>,
    #[serde(default)]
    pub publish: Vec<String>,
    #[serde(default)]
    pub kv: Vec<RawKvGrant>,
    #[serde(default)]
    pub message_ids: RawMessageIds,
    #[serde(default)]
    pub traceparent: RawTraceparent,
    #[serde(default)]
    pub limits: LimitOverrides,
    #[serde(default)]
    pub config: BTreeMap<String, toml::Value>,
}

/// `common()` for each component table: the keys every component has.
macro_rules! common {
    ($($raw:ty),*) => {$(
        impl $raw {
            /// The keys every component has.
            pub fn common(&self) -> Common<'_> {
                Common {
                    name: &self.name,
                    tenant: self.tenant.as_deref(),
                    component: &self.component,
                    publish: &self.publish,
                    kv: &self.kv,
                    message_ids: self.message_ids,
                    traceparent: self.traceparent,
                    limits: &self.limits,
                    config: &self.config,
                }
            }
        }
    )*};
}

common!(RawHandler, RawPublisher);
