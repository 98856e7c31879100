//! `jetwasm.toml`: where NATS is, which streams to set up first, runtime defaults and the
//! handlers and publishers to run. The file is read strictly into `raw` structs (unknown
//! keys name the key and line), then resolved into typed values: each component with its
//! limits laid over the defaults, its publish policy and its config strings; a handler's
//! [`Instances`], a publisher's [`Trigger`]. [`Config::load`] reports every problem at once,
//! one line each, naming the file. Relative paths are relative to the file.

mod raw;
mod resolve;
mod tenant;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use crate::schedule::Schedule;
use raw::{RawConfig, RawHandler, RawPublisher};
use resolve::{handler, one_line, publisher, resolve, Defaults, Problems};
pub use tenant::{Credentials, Quotas, Tenant, DEFAULT_TENANT};

/// The configuration, resolved and checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// NATS connection (the URL may also come from `--server` or `NATS_URL`).
    pub nats: NatsConfig,
    /// A stream-init spec applied before any handler starts.
    pub streams: Option<Streams>,
    /// Host-wide settings and handler defaults.
    pub runtime: Runtime,
    /// The handlers to run.
    pub handlers: Vec<Handler>,
    /// The publishers to run.
    pub publishers: Vec<Publisher>,
    /// The tenants whose components run here besides the host's own (see the `tenant`
    /// module).
    pub tenants: Vec<Tenant>,
}

/// `[nats]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated.
    pub url: Option<String>,
    /// NATS credentials file.
    pub creds: Option<PathBuf>,
}

/// `streams`, `env` and `allow_destructive`: the spec the host applies at start.
#[derive(Debug, Clone, PartialEq)]
pub struct Streams {
    /// The stream-init spec file.
    pub spec: PathBuf,
    /// The overlay to apply (e.g. `dev`).
    pub env: Option<String>,
    /// Let the host apply changes that lower what protects stored messages (fewer replicas,
    /// lower limits); refused by default, naming the field.
    pub allow_destructive: bool,
}

/// `[runtime]`, as written but for its paths, resolved against the config's folder.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Runtime {
    /// Address of the HTTP listener serving `/metrics`, `/healthz`, `/readyz` and HTTP
    /// publishers' routes.
    pub http: Option<SocketAddr>,
    /// Dead-letter records go to `<dead_letter>.<stream>.<consumer>`.
    pub dead_letter: String,
    /// How long in-flight messages may run after SIGTERM/SIGINT before the host exits.
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
    /// Limits for components that do not set their own.
    pub limits: Limits,
    /// Folder of compiled components (`None`: the compile cache's default folder).
    pub compile_cache: Option<PathBuf>,
    /// Most the compile cache may hold; least recently used entries go first.
    pub compile_cache_max: ByteSize,
    /// With a consumer whose `max_deliver` is unlimited, a message the handler keeps failing
    /// on (trap, timeout, memory) is dead-lettered at this delivery rather than retried
    /// forever.
    pub max_failures: u32,
    /// The folder of drop-in handlers and publishers (`NAME.wasm` beside its manifest
    /// `NAME.toml`; see the `drop_in` module).
    pub handlers_dir: Option<PathBuf>,
    /// Component instances alive at once, host-wide, shared by every component's calls: when
    /// all are in use, calls wait, and the freed instances go to the waiting components in
    /// turn. Unset: what the components at start can use at once (each handler and HTTP
    /// publisher its `max_in_flight`, each timer publisher one), plus [`HOT_INSTANCES`] for
    /// drop-ins added later when there is a handlers folder, at most
    /// [`DEFAULT_MAX_INSTANCES`].
    pub max_instances: Option<u32>,
    /// Run what the fleet's registry (JetStream KV and Object Store, written by `jetwasm
    /// deploy`) holds, watched like the handlers folder.
    pub registry: bool,
    /// A warm instance (`instances = "reuse"`) unused this long is dropped, giving its
    /// memory back; the next message gets a new one.
    #[serde(with = "humantime_serde")]
    pub warm_idle: Duration,
    /// Bytes of each linear memory the instance pool keeps resident (zeroed in place rather
    /// than given back) when an instance ends, so the next instance of the same component
    /// finds its pages mapped: fresh sandboxes run twice as fast with the default as with 0,
    /// and the pool's unused slots hold up to this much each until their component goes idle
    /// (see the `reload` module). Most a host can keep: [`MAX_KEEP_RESIDENT`].
    pub keep_resident: ByteSize,
}

/// The instance pool's keep-resident size per linear memory unless `[runtime] keep_resident`
/// says: the Rust template's whole memory (1.06 MiB) and then some.
pub const DEFAULT_KEEP_RESIDENT: ByteSize = ByteSize::mib(2);

/// The largest `[runtime] keep_resident` accepted.
pub const MAX_KEEP_RESIDENT: ByteSize = ByteSize::mib(64);

/// Instances kept for drop-ins added while the host runs, unless `[runtime] max_instances`
/// says.
pub const HOT_INSTANCES: u32 = 256;

/// The largest pool sized without `[runtime] max_instances`: a thousand handlers of 64 calls
/// each do not get 64,000 instances' worth of address space, but take turns at these.
pub const DEFAULT_MAX_INSTANCES: u32 = 1024;

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            http: None,
            dead_letter: "deadletter".to_owned(),
            grace_period: Duration::from_secs(10),
            limits: Limits::default(),
            compile_cache: None,
            compile_cache_max: DEFAULT_COMPILE_CACHE_MAX,
            max_failures: 10,
            handlers_dir: None,
            max_instances: None,
            registry: false,
            warm_idle: Duration::from_secs(30),
            keep_resident: DEFAULT_KEEP_RESIDENT,
        }
    }
}

/// The compile cache's size unless `[runtime] compile_cache_max` says.
pub const DEFAULT_COMPILE_CACHE_MAX: ByteSize = ByteSize::gib(1);

/// A component's limits. Each may be set in its own `limits` table; unset ones come from
/// `[runtime.limits]`, then the built-in defaults.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest linear memory one instance may grow to.
    pub memory: ByteSize,
    /// CPU time one call's guest code may use (counted in epoch ticks while it runs).
    #[serde(with = "humantime_serde")]
    pub cpu_time: Duration,
    /// Wall-clock ceiling for one call, host calls and sleeps included; the host sends
    /// in-progress to JetStream meanwhile, so a long call is not redelivered.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Most messages handled (or requests served) at once.
    pub max_in_flight: usize,
    /// Messages asked of the server ahead of need, so a free slot never waits for a pull
    /// round trip. Messages waiting for a slot are kept in progress with JetStream, so none
    /// is redelivered for waiting its turn; the host holds at most `max_in_flight` plus this
    /// many, which other hosts on the same consumer then do not get.
    pub prefetch: usize,
    /// Largest message handed to the handler; larger ones are dead-lettered unread.
    pub max_message_size: ByteSize,
    /// Most messages one call may publish.
    pub max_publishes: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: ByteSize::mib(64),
            cpu_time: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
            max_in_flight: 64,
            prefetch: 1024,
            max_message_size: ByteSize::mib(1),
            max_publishes: 100,
        }
    }
}

/// What every handler and publisher has: a component with a name, limits, a publish policy
/// and a `config` table.
#[derive(Debug, Clone, PartialEq)]
pub struct Component {
    /// Its name, in logs, metrics and derived message ids.
    pub name: String,
    /// Its tenant ([`DEFAULT_TENANT`] unless it names one).
    pub tenant: String,
    /// The `.wasm` component.
    pub wasm: PathBuf,
    /// Its limits, its own laid over the runtime's.
    pub limits: Limits,
    /// Where it may publish.
    pub publish: PublishPolicy,
    /// The key-value buckets it may use (`kv = [...]`).
    pub kv: Vec<KvGrant>,
    /// Whether a publish without a message id gets one derived from what is processed
    /// (`message_ids = "derived"`, the default), or goes without (`"given"`: only the ids the
    /// component gives; the stream then tracks no id for it).
    pub derive_message_ids: bool,
    /// Whether a publish without a `traceparent` header gets the call's, so the trace goes
    /// on (`traceparent = "stamped"`, the default), or goes without (`"given"`: only the
    /// headers the component gives; with `message_ids = "given"` too, a publish with no
    /// headers of its own is sent bare, as cheap for the server as it gets).
    pub stamp_traceparent: bool,
    /// The `config` table as the strings the component reads, sorted by key.
    pub config: Vec<(String, String)>,
}

/// A key-value bucket a component may use: `kv = ["carts"]`, or
/// `kv = [{ bucket = "prices", read_only = true }]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvGrant {
    /// The bucket's name.
    pub bucket: String,
    /// Reads only: every write is `denied`.
    pub read_only: bool,
}

/// The subjects a component may publish to: inside its allow-list (wildcards allowed) and
/// outside every reserved subject.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PublishPolicy {
    allowed: Vec<String>,
}

impl PublishPolicy {
    /// A policy allowing the subjects under `allowed`.
    pub fn new(allowed: Vec<String>) -> Self {
        PublishPolicy { allowed }
    }

    /// True when the component may publish to `subject`.
    pub fn allows(&self, subject: &str) -> bool {
        self.allowed
            .iter()
            .any(|a| stream_init::subject::is_subset(subject, a))
            && !RESERVED_SUBJECTS
                .iter()
                .any(|r| stream_init::subject::overlaps(subject, r))
    }

    /// The allow-list as written.
    pub fn allowed(&self) -> &[String] {
        &self.allowed
    }
}

/// One `[[handler]]`: a component bound to a durable consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct Handler {
    /// The component and its settings.
    pub component: Component,
    /// The stream the consumer reads.
    pub stream: String,
    /// The durable pull consumer to bind.
    pub consumer: String,
    /// Wait for the server to confirm each ack (slower; for effects that must not repeat).
    pub confirm_acks: bool,
    /// Where its messages' ordering key comes from, if they are handled in order per key.
    pub ordering: Option<crate::ordering::OrderingKey>,
    /// A candidate version run beside it on a sample of messages, never affecting them.
    pub shadow: Option<Shadow>,
    /// Messages per call, for a `batch-handler` component.
    pub batch: Option<Batch>,
    /// How its instances live.
    pub instances: Instances,
    /// The handler's own durable consumer, declared in its manifest (`[consumer]`, the
    /// stream-init consumer keys): created or updated on the operator's stream when the
    /// handler is loaded, never deleted. Configured handlers use the streams spec instead.
    pub own_consumer: Option<Box<stream_init::spec::ConsumerSpec>>,
}

/// A handler's shadow: a candidate component a share of its messages also runs through, in
/// its own sandbox, its publishes captured and compared with the live version's.
#[derive(Debug, Clone, PartialEq)]
pub struct Shadow {
    /// The candidate component.
    pub wasm: PathBuf,
    /// The share of messages it sees, in (0, 1].
    pub sample: f64,
}

/// A batch handler's `batch = { max = 100, max_wait = "50ms" }`: each call gets up to `max`
/// messages, made at most `max_wait` after the first arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    /// Most messages per call.
    pub max: usize,
    /// Longest a message waits for others to join its batch.
    pub max_wait: Duration,
}

/// Most messages one batch call may get.
pub const MAX_BATCH: usize = 1000;

/// How a handler's instances live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instances {
    /// A new sandbox for every message: nothing survives from one message to the next.
    Fresh,
    /// A small pool of warm instances, each serving one message at a time; an instance is
    /// discarded after any failure and after `per_instance` messages. Guest state (globals,
    /// memory) carries over between the messages one instance serves.
    Reuse {
        /// Messages one instance serves before it is replaced.
        per_instance: u32,
    },
}

/// Messages a reused instance serves before it is replaced, unless the handler says.
pub const DEFAULT_MESSAGES_PER_INSTANCE: u32 = 1000;

/// One `[[publisher]]`: a component called on a schedule or for HTTP requests.
#[derive(Debug, Clone)]
pub struct Publisher {
    /// The component and its settings.
    pub component: Component,
    /// What calls it.
    pub trigger: Trigger,
}

/// What calls a publisher.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// A timer (`every` or `cron`): the `publisher` world's `on-tick`.
    Schedule(Schedule),
    /// Requests to a route on the host's listener: the `wasi:http` incoming handler.
    Http(HttpRoute),
}

/// An HTTP route: `{ method = "POST", path = "/orders" }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRoute {
    /// The HTTP method, e.g. `POST`.
    pub method: String,
    /// The path, e.g. `/orders`.
    pub path: String,
}

/// Why a configuration file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {}: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file has problems; every one is listed.
    #[error("{}", problems.iter().map(|p| format!("{}: {p}", file.display())).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The file.
        file: PathBuf,
        /// One line per problem, e.g. `handler orders: limits.prefetch is 0: ...`.
        problems: Vec<String>,
    },
}

/// Most calls one handler may run at once (each may hold an instance of the engine's pool).
pub const MAX_IN_FLIGHT: usize = 4096;
/// Most messages one handler may pull ahead of need.
pub const MAX_PREFETCH: usize = 65_536;
/// The largest `[runtime] max_instances` accepted.
pub const MAX_INSTANCES: u32 = 100_000;
/// Largest `max_message_size`: the most a NATS server can be configured to carry.
pub const MAX_MESSAGE_SIZE: ByteSize = ByteSize::mib(64);
/// Largest `memory`: a 32-bit linear memory cannot grow past 4GiB.
pub const MAX_MEMORY: ByteSize = ByteSize::gib(4);
/// Shortest `cpu_time` or `timeout`: the engine counts a call's time in ticks this long.
pub const SHORTEST_TIME_LIMIT: Duration = Duration::from_millis(10);
/// Shortest `every` for a timer publisher.
pub const SHORTEST_INTERVAL: Duration = Duration::from_millis(10);

/// Methods an HTTP publisher may serve.
pub const ROUTE_METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// Paths the host serves itself.
const RESERVED_PATHS: [&str; 3] = ["/metrics", "/healthz", "/readyz"];

/// Subjects no guest may publish to, whatever its allow-list says.
pub const RESERVED_SUBJECTS: [&str; 3] = ["$JS.>", "$SYS.>", "_INBOX.>"];

/// Settings given on the command line, replacing the file's before it is checked.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--http`: the listener address (`[runtime] http`).
    pub http: Option<SocketAddr>,
    /// `--handlers-dir`: the drop-in folder (`[runtime] handlers_dir`), relative to the
    /// working directory.
    pub handlers_dir: Option<PathBuf>,
    /// `--registry`: run what the fleet's registry holds (`[runtime] registry`).
    pub registry: bool,
}

impl Config {
    /// Reads and checks `path`; relative paths in it are resolved against its folder.
    /// `overrides` replace the file's settings before the checks that depend on them.
    pub fn load(path: &Path, overrides: Overrides) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse_with(&text, base, overrides).map_err(|problems| ConfigError::Invalid {
            file: path.to_owned(),
            problems,
        })
    }

    /// Parses and checks config text, resolving relative paths against `base`; the error is
    /// every problem, one line each.
    pub fn parse(text: &str, base: &Path) -> Result<Config, Vec<String>> {
        Config::parse_with(text, base, Overrides::default())
    }

    fn parse_with(text: &str, base: &Path, overrides: Overrides) -> Result<Config, Vec<String>> {
        let mut raw: RawConfig = toml::from_str(text).map_err(|e| vec![one_line(&e, text)])?;
        if overrides.http.is_some() {
            raw.runtime.http = overrides.http;
        }
        if let Some(dir) = overrides.handlers_dir {
            let cwd = std::env::current_dir().unwrap_or_default();
            raw.runtime.handlers_dir = Some(cwd.join(dir));
        }
        raw.runtime.registry |= overrides.registry;
        let mut problems = Problems::default();
        let config = resolve(raw, base, &mut problems);
        match problems.0.is_empty() {
            true => Ok(config),
            false => Err(problems.0),
        }
    }
}

/// A handler or publisher dropped into the handlers folder, resolved like a table of the
/// config file.
#[derive(Debug, Clone)]
pub enum DropIn {
    /// A handler.
    Handler(Handler),
    /// A publisher.
    Publisher(Publisher),
}

impl Config {
    /// The configured handlers and publishers, as drop-ins are.
    pub fn components(&self) -> Vec<DropIn> {
        (self.handlers.iter().cloned().map(DropIn::Handler))
            .chain(self.publishers.iter().cloned().map(DropIn::Publisher))
            .collect()
    }
}

impl DropIn {
    /// The component and its settings.
    pub fn component(&self) -> &Component {
        match self {
            DropIn::Handler(handler) => &handler.component,
            DropIn::Publisher(publisher) => &publisher.component,
        }
    }
}

impl Config {
    /// The drop-in `name` of `tenant` from its manifest `text` (`NAME.toml`), its component
    /// `wasm`: the keys of a `[[handler]]` table, or with `kind = "publisher"` of a
    /// `[[publisher]]` table, minus `name` (the file's), `component` (`NAME.wasm` beside it)
    /// and `tenant` (the folder's or the registry key's), with this config's and its tenant's
    /// defaults, and checked against what the config runs (names, HTTP routes) and its
    /// tenant's quotas and grant. The error is every problem, one line each.
    pub fn manifest(
        &self,
        name: &str,
        tenant: &str,
        wasm: &Path,
        text: &str,
    ) -> Result<DropIn, Vec<String>> {
        let mut table: toml::Table = text.parse().map_err(|e| vec![one_line(&e, text)])?;
        let mut problems = Problems::default();
        for (key, whose) in [
            ("name", "the file's name"),
            ("component", "the .wasm beside it"),
            (
                "tenant",
                "the folder it is in (TENANT/NAME.toml) or its registry key (TENANT.NAME)",
            ),
        ] {
            if table.contains_key(key) {
                problems.add(format!("`{key}` is not set in a manifest: it is {whose}"));
            }
        }
        let kind = match table.remove("kind") {
            None => "handler".to_owned(),
            Some(toml::Value::String(kind)) if kind == "handler" || kind == "publisher" => kind,
            Some(other) => {
                problems.add(format!(
                    "kind = {other}: it must be \"handler\" or \"publisher\""
                ));
                String::new()
            }
        };
        if !problems.0.is_empty() {
            return Err(problems.0);
        }
        // `[consumer]` declares the handler's own consumer; `consumer` is then its name.
        let own_consumer = match table.get("consumer") {
            Some(toml::Value::Table(declared)) if kind == "handler" => {
                let declared: stream_init::spec::ConsumerSpec =
                    (toml::Value::Table(declared.clone())).try_into().map_err(
                        |e: toml::de::Error| vec![format!("[consumer]: {}", one_line(&e, ""))],
                    )?;
                table.insert("consumer".into(), declared.durable.clone().into());
                Some(Box::new(declared))
            }
            _ => None,
        };
        table.insert("name".into(), name.into());
        table.insert("component".into(), wasm.display().to_string().into());
        if tenant != DEFAULT_TENANT {
            table.insert("tenant".into(), tenant.into());
        }
        let value = toml::Value::Table(table);
        let mut names: BTreeSet<&str> = (self.handlers.iter().map(|h| &h.component))
            .chain(self.publishers.iter().map(|p| &p.component))
            .filter(|c| c.tenant == tenant)
            .map(|c| c.name.as_str())
            .collect();
        let mut routes: BTreeSet<(&str, &str)> = (self.publishers.iter())
            .filter_map(|p| match &p.trigger {
                Trigger::Http(route) => Some((route.method.as_str(), route.path.as_str())),
                Trigger::Schedule(_) => None,
            })
            .collect();
        let defaults = Defaults {
            limits: self.runtime.limits,
            tenants: &self.tenants,
        };
        let same = |p: PathBuf| p;
        let listener = self.runtime.http.is_some();
        // serde lists every key it expected; a manifest may not set these two.
        let unreadable = |e: toml::de::Error| {
            let line = one_line(&e, "").replace("`name`, `tenant`, `component`, ", "");
            vec![line]
        };
        let resolved = if kind == "publisher" {
            let raw: RawPublisher = value.try_into().map_err(unreadable)?;
            let taken = (&mut names, &mut routes);
            publisher(&raw, defaults, &same, taken, listener, &mut problems).map(DropIn::Publisher)
        } else {
            let raw: RawHandler = value.try_into().map_err(unreadable)?;
            let mut handler = handler(&raw, defaults, &same, &mut names, &mut problems);
            handler.own_consumer = own_consumer;
            Some(DropIn::Handler(handler))
        };
        match resolved {
            Some(drop_in) if problems.0.is_empty() => Ok(drop_in),
            _ => Err(problems.0),
        }
    }
}

#[cfg(test)]
mod tests;
