//! `jetwasm.toml`: where NATS is, which streams to set up first, runtime defaults and the
//! handlers to run. Parsing is strict (unknown keys name the key and line); [`Config::load`]
//! reports every validation problem at once. Relative paths are relative to the file.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use bytesize::ByteSize;
use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// NATS connection (the URL may also come from `--server` or `NATS_URL`).
    #[serde(default)]
    pub nats: NatsConfig,
    /// A stream-init spec applied before any handler starts.
    #[serde(default)]
    pub streams: Option<PathBuf>,
    /// The overlay of `streams` to apply (e.g. `dev`).
    #[serde(default)]
    pub env: Option<String>,
    /// Let the host apply changes to `streams` that lower what protects stored messages
    /// (fewer replicas, lower limits); refused by default, naming the field.
    #[serde(default)]
    pub allow_destructive: bool,
    /// Host-wide settings and handler defaults.
    #[serde(default)]
    pub runtime: Runtime,
    /// The handlers to run.
    #[serde(default, rename = "handler")]
    pub handlers: Vec<HandlerConfig>,
    /// The publishers to run.
    #[serde(default, rename = "publisher")]
    pub publishers: Vec<PublisherConfig>,
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

/// `[runtime]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Runtime {
    /// Address of the HTTP listener serving `/metrics`, `/healthz` and `/readyz`.
    pub http: Option<SocketAddr>,
    /// Dead-letter records go to `<dead_letter>.<stream>.<consumer>`.
    pub dead_letter: String,
    /// How long in-flight messages may run after SIGTERM/SIGINT before the host exits.
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
    /// Limits for handlers that do not set their own.
    pub limits: Limits,
    /// Folder of compiled components, keyed by content hash and engine settings (see
    /// [`crate::compile_cache`]); defaults to `~/.cache/jetwasm/compiled`.
    pub compile_cache: Option<PathBuf>,
    /// Most the compile cache may hold; least recently used entries go first.
    pub compile_cache_max: ByteSize,
    /// With a consumer whose `max_deliver` is unlimited, a message the handler keeps failing
    /// on (trap, timeout, memory) is dead-lettered at this delivery rather than retried
    /// forever.
    pub max_failures: u32,
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            http: None,
            dead_letter: "deadletter".to_owned(),
            grace_period: Duration::from_secs(10),
            limits: Limits::default(),
            compile_cache: crate::compile_cache::CompileCache::default_dir(),
            compile_cache_max: ByteSize::b(crate::compile_cache::DEFAULT_MAX_BYTES),
            max_failures: 10,
        }
    }
}

/// Per-handler limits. Each is optional in a handler's table; unset ones come from
/// `[runtime.limits]`, then the built-in defaults.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
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
    /// Most messages handled at once.
    pub max_in_flight: usize,
    /// Messages asked of the server ahead of need, so a free slot never waits for a pull
    /// round trip. Messages waiting for a slot are kept in progress with JetStream, so none
    /// is redelivered for waiting its turn; while every slot is busy the host may hold up to
    /// about twice this many, which other hosts on the same consumer then do not get.
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

/// Limits as written in a handler's table: each field may be absent.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    memory: Option<ByteSize>,
    #[serde(default, with = "humantime_serde")]
    cpu_time: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    max_in_flight: Option<usize>,
    prefetch: Option<usize>,
    max_message_size: Option<ByteSize>,
    max_publishes: Option<u32>,
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

/// One `[[handler]]`: a component bound to a durable consumer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerConfig {
    /// Name used in logs and metrics.
    pub name: String,
    /// Path to the `.wasm` component.
    pub component: PathBuf,
    /// The stream the consumer reads.
    pub stream: String,
    /// The durable pull consumer to bind.
    pub consumer: String,
    /// Subjects (wildcards allowed) the handler may publish to. Empty: none.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Wait for the server to confirm each ack (slower; for effects that must not repeat).
    #[serde(default)]
    pub confirm_acks: bool,
    /// A fresh instance per message (the default), or warm instances reused across messages.
    #[serde(default)]
    pub instances: Instances,
    /// With `instances = "reuse"`: how many messages one instance serves before it is
    /// replaced (default [`DEFAULT_MESSAGES_PER_INSTANCE`]).
    pub messages_per_instance: Option<u32>,
    /// Limits for this handler.
    #[serde(default)]
    pub limits: LimitOverrides,
    /// Values the component reads through the `config` import.
    #[serde(default)]
    pub config: BTreeMap<String, toml::Value>,
}

/// How a handler's instances live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Instances {
    /// A new sandbox for every message: nothing survives from one message to the next.
    #[default]
    Fresh,
    /// A small pool of warm instances, each serving one message at a time; an instance is
    /// discarded after any failure and after `messages_per_instance` messages. Guest state
    /// (globals, memory) carries over between the messages one instance serves.
    Reuse,
}

/// Messages a reused instance serves before it is replaced, unless the handler says.
pub const DEFAULT_MESSAGES_PER_INSTANCE: u32 = 1000;

impl HandlerConfig {
    /// How the handler's instances live: `None` for fresh, else the messages per instance.
    pub fn reuse(&self) -> Option<u32> {
        (self.instances == Instances::Reuse).then(|| {
            self.messages_per_instance
                .unwrap_or(DEFAULT_MESSAGES_PER_INSTANCE)
        })
    }
}

/// One `[[publisher]]`: a component called on a schedule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublisherConfig {
    /// Name used in logs, metrics and derived message ids.
    pub name: String,
    /// Path to the `.wasm` component (the `publisher` world).
    pub component: PathBuf,
    /// Fire at this interval.
    #[serde(default, with = "humantime_serde")]
    pub every: Option<Duration>,
    /// Fire on this cron schedule, in UTC, seconds first: `"0/5 * * * * *"`.
    pub cron: Option<String>,
    /// Serve this route on the host's HTTP listener (the component is then a `wasi:http`
    /// incoming handler: the `http-publisher` world).
    pub http: Option<HttpRoute>,
    /// Subjects (wildcards allowed) the publisher may publish to. Empty: none.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Limits for each tick.
    #[serde(default)]
    pub limits: LimitOverrides,
    /// Values the component reads through the `config` import.
    #[serde(default)]
    pub config: BTreeMap<String, toml::Value>,
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

/// What handlers and publishers share: a component with a name, an allow-list, limits and
/// a `config` table.
pub trait ComponentConfig {
    /// `handler NAME` or `publisher NAME`, for error messages.
    fn label(&self) -> String;
    /// The component's name.
    fn name(&self) -> &str;
    /// Subjects it may publish to.
    fn publish(&self) -> &[String];
    /// Its `config` table.
    fn config(&self) -> &BTreeMap<String, toml::Value>;
    /// Its own limits.
    fn limit_overrides(&self) -> &LimitOverrides;

    /// The `config` table as the strings the component reads, sorted by key.
    fn config_strings(&self) -> Vec<(String, String)> {
        self.config()
            .iter()
            .filter_map(|(k, v)| config_value(v).map(|v| (k.clone(), v)))
            .collect()
    }

    /// True when the component may publish to `subject`.
    fn may_publish(&self, subject: &str) -> bool {
        may_publish(self.publish(), subject)
    }
}

/// True when `subject` is inside one of `allowed` and outside every reserved subject.
pub fn may_publish(allowed: &[String], subject: &str) -> bool {
    allowed
        .iter()
        .any(|a| stream_init::subject::is_subset(subject, a))
        && !RESERVED_SUBJECTS
            .iter()
            .any(|r| stream_init::subject::overlaps(subject, r))
}

impl ComponentConfig for HandlerConfig {
    fn label(&self) -> String {
        format!("handler {}", self.name)
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn publish(&self) -> &[String] {
        &self.publish
    }
    fn config(&self) -> &BTreeMap<String, toml::Value> {
        &self.config
    }
    fn limit_overrides(&self) -> &LimitOverrides {
        &self.limits
    }
}

impl ComponentConfig for PublisherConfig {
    fn label(&self) -> String {
        format!("publisher {}", self.name)
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn publish(&self) -> &[String] {
        &self.publish
    }
    fn config(&self) -> &BTreeMap<String, toml::Value> {
        &self.config
    }
    fn limit_overrides(&self) -> &LimitOverrides {
        &self.limits
    }
}

/// Most calls one handler may run at once (each may hold an instance of the engine's pool).
pub const MAX_IN_FLIGHT: usize = 4096;
/// Most messages one handler may pull ahead of need.
pub const MAX_PREFETCH: usize = 65_536;
/// Largest `max_message_size`: the most a NATS server can be configured to carry.
pub const MAX_MESSAGE_SIZE: ByteSize = ByteSize::mib(64);
/// Largest `memory`: a 32-bit linear memory cannot grow past 4GiB.
pub const MAX_MEMORY: ByteSize = ByteSize::gib(4);

/// Methods an HTTP publisher may serve.
pub const ROUTE_METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// Paths the host serves itself.
const RESERVED_PATHS: [&str; 3] = ["/metrics", "/healthz", "/readyz"];

/// Subjects no guest may publish to, whatever its allow-list says.
pub const RESERVED_SUBJECTS: [&str; 3] = ["$JS.>", "$SYS.>", "_INBOX.>"];

impl Config {
    /// Reads and validates `path`; relative paths in it are resolved against its folder.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base).map_err(|problems| {
            // One line per problem, each naming the file: `PATH: handler orders: ...`.
            let at = path.display();
            let lines: Vec<String> = problems.iter().map(|p| format!("{at}: {p}")).collect();
            anyhow::anyhow!("{}", lines.join("\n"))
        })
    }

    /// Parses config text, resolving relative paths against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, Vec<String>> {
        let mut config: Config = toml::from_str(text).map_err(|e| vec![one_line(&e, text)])?;
        config.resolve_paths(base);
        let problems = config.problems();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        self.streams.iter_mut().for_each(resolve);
        self.nats.creds.iter_mut().for_each(resolve);
        self.runtime.compile_cache.iter_mut().for_each(resolve);
        self.publishers
            .iter_mut()
            .for_each(|p| resolve(&mut p.component));
        self.handlers
            .iter_mut()
            .for_each(|h| resolve(&mut h.component));
    }

    /// The limits a handler or publisher runs with.
    pub fn limits(&self, component: &dyn ComponentConfig) -> Limits {
        component.limit_overrides().over(self.runtime.limits)
    }

    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.env.is_some() && self.streams.is_none() {
            problems.push("`env` is set but `streams` is not".to_owned());
        }
        if self.runtime.max_failures == 0 {
            problems.push("runtime.max_failures must be at least 1".to_owned());
        }
        if self.handlers.is_empty() && self.publishers.is_empty() {
            problems.push("nothing to run: add a [[handler]] or a [[publisher]]".to_owned());
        }
        if self.allow_destructive && self.streams.is_none() {
            problems.push("`allow_destructive` is set but `streams` is not".to_owned());
        }
        if let Err(why) = stream_init::subject::validate(&self.runtime.dead_letter) {
            problems.push(format!(
                "runtime.dead_letter {:?} {why}",
                self.runtime.dead_letter
            ));
        }
        let mut names = BTreeSet::new();
        let components = self.handlers.iter().map(|h| h as &dyn ComponentConfig);
        let components =
            components.chain(self.publishers.iter().map(|p| p as &dyn ComponentConfig));
        for component in components {
            let at = component.label();
            if component.name().is_empty() {
                problems.push(format!("{at}: `name` must not be empty"));
            } else if !names.insert(component.name()) {
                problems.push(format!("{at}: the name is used more than once"));
            }
            problems.extend(
                self.component_problems(component)
                    .into_iter()
                    .map(|p| format!("{at}: {p}")),
            );
        }
        for handler in &self.handlers {
            let at = handler.label();
            match (handler.instances, handler.messages_per_instance) {
                (Instances::Fresh, Some(_)) => problems.push(format!(
                    "{at}: `messages_per_instance` needs `instances = \"reuse\"`"
                )),
                (Instances::Reuse, Some(0)) => {
                    problems.push(format!("{at}: `messages_per_instance` must be at least 1"))
                }
                _ => {}
            }
        }
        let mut routes = BTreeSet::new();
        for publisher in &self.publishers {
            let at = publisher.label();
            let triggers = [
                publisher.every.is_some(),
                publisher.cron.is_some(),
                publisher.http.is_some(),
            ];
            match triggers.iter().filter(|set| **set).count() {
                0 => problems.push(format!("{at}: set one of `every`, `cron` or `http`")),
                1 => {}
                _ => problems.push(format!("{at}: set only one of `every`, `cron` or `http`")),
            }
            if publisher
                .every
                .is_some_and(|every| every < Duration::from_millis(10))
            {
                problems.push(format!("{at}: `every` must be at least 10ms"));
            }
            if let Some(cron) = &publisher.cron {
                if let Err(e) = cron::Schedule::from_str(cron) {
                    problems.push(format!("{at}: cron {cron:?}: {e}"));
                }
            }
            if let Some(route) = &publisher.http {
                if !ROUTE_METHODS.contains(&route.method.as_str()) {
                    problems.push(format!(
                        "{at}: http.method {:?} must be one of {}",
                        route.method,
                        ROUTE_METHODS.join(", ")
                    ));
                }
                let plain = |c: char| c.is_ascii_alphanumeric() || "/-._~".contains(c);
                if !route.path.starts_with('/') || !route.path.chars().all(plain) {
                    problems.push(format!(
                        "{at}: http.path {:?} must start with '/' and use only letters, digits and /-._~",
                        route.path
                    ));
                }
                if RESERVED_PATHS.contains(&route.path.as_str()) {
                    problems.push(format!(
                        "{at}: http.path {:?} is the host's own",
                        route.path
                    ));
                }
                if !routes.insert((route.method.as_str(), route.path.as_str())) {
                    problems.push(format!(
                        "{at}: another publisher already serves {} {}",
                        route.method, route.path
                    ));
                }
                if self.runtime.http.is_none() {
                    problems.push(format!(
                        "{at}: an HTTP route needs the listener: set [runtime] http"
                    ));
                }
            }
        }
        problems
    }

    fn component_problems(&self, component: &dyn ComponentConfig) -> Vec<String> {
        let mut problems = Vec::new();
        for subject in component.publish() {
            if let Err(why) = stream_init::subject::validate(subject) {
                problems.push(format!("publish subject {subject:?} {why}"));
            } else if let Some(reserved) = RESERVED_SUBJECTS
                .iter()
                .find(|r| stream_init::subject::overlaps(subject, r))
            {
                problems.push(format!(
                    "publish subject {subject:?} overlaps the reserved {reserved}"
                ));
            }
        }
        let limits = self.limits(component);
        if !(1..=MAX_IN_FLIGHT).contains(&limits.max_in_flight) {
            problems.push(format!(
                "limits.max_in_flight is {}: it must be 1 to {MAX_IN_FLIGHT}",
                limits.max_in_flight
            ));
        }
        if !(1..=MAX_PREFETCH).contains(&limits.prefetch) {
            problems.push(format!(
                "limits.prefetch is {}: it must be 1 to {MAX_PREFETCH}",
                limits.prefetch
            ));
        }
        if limits.max_message_size.as_u64() == 0 || limits.max_message_size > MAX_MESSAGE_SIZE {
            problems.push(format!(
                "limits.max_message_size is {}: it must be 1B to {} (NATS's largest payload)",
                limits.max_message_size.display().iec(),
                MAX_MESSAGE_SIZE.display().iec()
            ));
        }
        if limits.cpu_time < crate::engine::EPOCH_TICK {
            problems.push("limits.cpu_time must be at least 10ms".to_owned());
        }
        if limits.timeout < crate::engine::EPOCH_TICK {
            problems.push("limits.timeout must be at least 10ms".to_owned());
        }
        if limits.memory < ByteSize::mib(1) || limits.memory > MAX_MEMORY {
            problems.push(format!(
                "limits.memory is {}: it must be 1MiB to {} (a 32-bit linear memory's largest)",
                limits.memory.display().iec(),
                MAX_MEMORY.display().iec()
            ));
        }
        for (key, value) in component.config() {
            if config_value(value).is_none() {
                problems.push(format!(
                    "config.{key} must be a string, number or boolean, not a {}",
                    value.type_str()
                ));
            }
        }
        problems
    }
}

/// A TOML error as one line: `line L, column C: what is wrong`.
fn one_line(error: &toml::de::Error, text: &str) -> String {
    let message = error.message().trim().replace('\n', " ");
    match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

fn config_value(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
streams = "streams.toml"
env = "dev"

[runtime]
http = "127.0.0.1:9090"

[runtime.limits]
memory = "32MiB"

[[handler]]
name = "orders"
component = "orders.wasm"
stream = "ORDERS"
consumer = "orders-processor"
publish = ["orders.processed"]
limits = { timeout = "2s" }
config = { retry_delay_ms = 1500, output_subject = "orders.processed" }
"#;

    #[test]
    fn parses_and_layers_limits() {
        let config = Config::parse(EXAMPLE, Path::new("/etc/jw")).unwrap();
        assert_eq!(
            config.streams.as_deref(),
            Some(Path::new("/etc/jw/streams.toml"))
        );
        let h = &config.handlers[0];
        assert_eq!(h.component, Path::new("/etc/jw/orders.wasm"));
        let limits = config.limits(h);
        assert_eq!(limits.memory, ByteSize::mib(32));
        assert_eq!(limits.timeout, Duration::from_secs(2));
        assert_eq!(limits.max_in_flight, Limits::default().max_in_flight);
        assert_eq!(
            h.config_strings(),
            vec![
                ("output_subject".to_owned(), "orders.processed".to_owned()),
                ("retry_delay_ms".to_owned(), "1500".to_owned())
            ]
        );
    }

    #[test]
    fn publish_allow_list_and_reserved_subjects() {
        let config = Config::parse(EXAMPLE, Path::new(".")).unwrap();
        let h = &config.handlers[0];
        assert!(h.may_publish("orders.processed"));
        assert!(!h.may_publish("orders.created"));
        assert!(!h.may_publish("$JS.API.STREAM.DELETE.ORDERS"));

        let bad = EXAMPLE.replace("[\"orders.processed\"]", "[\">\"]");
        let err = Config::parse(&bad, Path::new(".")).unwrap_err();
        assert!(
            err.iter()
                .any(|e| e.contains("overlaps the reserved $JS.>")),
            "{err:?}"
        );
    }

    #[test]
    fn a_publisher_needs_exactly_one_valid_schedule() {
        let publisher = |schedule: &str| {
            format!("[[publisher]]\nname = \"p\"\ncomponent = \"p.wasm\"\n{schedule}\n")
        };
        let err = Config::parse(&publisher(""), Path::new(".")).unwrap_err();
        assert_eq!(
            err,
            vec!["publisher p: set one of `every`, `cron` or `http`"]
        );
        let both = publisher("every = \"1s\"\ncron = \"* * * * * *\"");
        let err = Config::parse(&both, Path::new(".")).unwrap_err();
        assert_eq!(
            err,
            vec!["publisher p: set only one of `every`, `cron` or `http`"]
        );
        let route = publisher("http = { method = \"POST\", path = \"orders/{id}\" }");
        let err = Config::parse(&route, Path::new(".")).unwrap_err();
        assert_eq!(
            err,
            vec![
                "publisher p: http.path \"orders/{id}\" must start with '/' and use only letters, digits and /-._~",
                "publisher p: an HTTP route needs the listener: set [runtime] http"
            ]
        );
        let err =
            Config::parse(&publisher("cron = \"every tuesday\""), Path::new(".")).unwrap_err();
        assert!(
            err[0].starts_with("publisher p: cron \"every tuesday\""),
            "{err:?}"
        );
        let ok = Config::parse(&publisher("cron = \"0/5 * * * * *\""), Path::new(".")).unwrap();
        assert_eq!(ok.publishers[0].cron.as_deref(), Some("0/5 * * * * *"));
    }

    #[test]
    fn http_routes_are_plain_unique_and_leave_the_host_paths_alone() {
        let route = |name: &str, method: &str, path: &str| {
            format!(
                "[[publisher]]\nname = \"{name}\"\ncomponent = \"p.wasm\"\nhttp = {{ method = \"{method}\", path = \"{path}\" }}\n"
            )
        };
        let text = format!(
            "[runtime]\nhttp = \"127.0.0.1:0\"\n{}{}{}{}",
            route("a", "POST", "/orders"),
            route("b", "POST", "/orders"),
            route("c", "GET", "/metrics"),
            route("d", "BREW", "/tea"),
        );
        let err = Config::parse(&text, Path::new(".")).unwrap_err();
        assert_eq!(
            err,
            vec![
                "publisher b: another publisher already serves POST /orders",
                "publisher c: http.path \"/metrics\" is the host's own",
                "publisher d: http.method \"BREW\" must be one of GET, POST, PUT, PATCH, DELETE",
            ]
        );
        let shared = format!(
            "[runtime]\nhttp = \"127.0.0.1:0\"\n{}{}",
            route("a", "POST", "/orders"),
            route("b", "GET", "/orders")
        );
        assert!(
            Config::parse(&shared, Path::new(".")).is_ok(),
            "same path, other method"
        );
    }

    #[test]
    fn prefetch_is_a_limit_like_the_others_and_never_zero() {
        let config = Config::parse(EXAMPLE, Path::new(".")).unwrap();
        assert_eq!(config.limits(&config.handlers[0]).prefetch, 1024);
        let with = |prefetch: &str| {
            EXAMPLE.replace(
                "limits = {",
                &format!("limits = {{ prefetch = {prefetch}, "),
            )
        };
        let small = Config::parse(&with("16"), Path::new(".")).unwrap();
        assert_eq!(small.limits(&small.handlers[0]).prefetch, 16);
        let err = Config::parse(&with("0"), Path::new(".")).unwrap_err();
        assert_eq!(
            err,
            vec!["handler orders: limits.prefetch is 0: it must be 1 to 65536"]
        );
    }

    #[test]
    fn instances_are_fresh_unless_reuse_is_asked_for() {
        let config = Config::parse(EXAMPLE, Path::new(".")).unwrap();
        assert_eq!(config.handlers[0].reuse(), None);
        let with = |extra: &str| EXAMPLE.replace("limits = {", &format!("{extra}\nlimits = {{"));
        let reuse = Config::parse(&with("instances = \"reuse\""), Path::new(".")).unwrap();
        assert_eq!(
            reuse.handlers[0].reuse(),
            Some(DEFAULT_MESSAGES_PER_INSTANCE)
        );
        let text = with("instances = \"reuse\"\nmessages_per_instance = 10");
        let ten = Config::parse(&text, Path::new(".")).unwrap();
        assert_eq!(ten.handlers[0].reuse(), Some(10));

        let err = Config::parse(&with("messages_per_instance = 10"), Path::new(".")).unwrap_err();
        assert_eq!(
            err,
            vec!["handler orders: `messages_per_instance` needs `instances = \"reuse\"`"]
        );
        let text = with("instances = \"reuse\"\nmessages_per_instance = 0");
        let err = Config::parse(&text, Path::new(".")).unwrap_err();
        assert_eq!(
            err,
            vec!["handler orders: `messages_per_instance` must be at least 1"]
        );
        let err = Config::parse(&with("instances = \"warm\""), Path::new(".")).unwrap_err();
        assert!(
            err[0].contains("unknown variant `warm`, expected `fresh` or `reuse`"),
            "{err:?}"
        );
    }

    #[test]
    fn limits_out_of_range_and_an_empty_config_are_named_one_line_each() {
        let limits =
            "limits = { max_message_size = 0, memory = \"8GiB\", max_in_flight = 100000000, ";
        let text = EXAMPLE.replace("limits = {", limits);
        let err = Config::parse(&text, Path::new(".")).unwrap_err();
        assert_eq!(
            err,
            vec![
                "handler orders: limits.max_in_flight is 100000000: it must be 1 to 4096",
                "handler orders: limits.max_message_size is 0 B: it must be 1B to 64.0 MiB (NATS's largest payload)",
                "handler orders: limits.memory is 8.0 GiB: it must be 1MiB to 4.0 GiB (a 32-bit linear memory's largest)",
            ]
        );
        let err = Config::parse("[runtime]\n", Path::new(".")).unwrap_err();
        assert_eq!(
            err,
            vec!["nothing to run: add a [[handler]] or a [[publisher]]"]
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let err =
            Config::parse(&EXAMPLE.replace("consumer =", "consumr ="), Path::new(".")).unwrap_err();
        assert!(
            err[0].starts_with("line 15, column 1: unknown field `consumr`")
                && !err[0].contains('\n'),
            "{err:?}"
        );
        let err = Config::parse(
            &EXAMPLE.replace("\"2s\"", "\"2 fortnights\""),
            Path::new("."),
        )
        .unwrap_err();
        assert!(
            err[0].contains("timeout") || err[0].contains("line 17"),
            "{err:?}"
        );
        let bad = EXAMPLE.replace("retry_delay_ms = 1500", "retry_delay_ms = [1]");
        let err = Config::parse(&bad, Path::new(".")).unwrap_err();
        assert!(
            err[0].contains("config.retry_delay_ms must be a string, number or boolean"),
            "{err:?}"
        );
    }
}

#[cfg(test)]
mod example {
    use super::*;

    fn deploy(file: &str) -> Config {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy")
            .join(file);
        Config::load(&path).unwrap()
    }

    /// The examples in deploy/ must always parse, so they never drift from the code.
    #[test]
    fn deploy_examples_parse() {
        let config = deploy("jetwasm.toml");
        assert_eq!(config.handlers.len(), 1);
        assert_eq!(config.publishers.len(), 2);
        assert_eq!(config.publishers[0].every, Some(Duration::from_millis(500)));
        let route = config.publishers[1].http.as_ref().unwrap();
        assert_eq!(
            (route.method.as_str(), route.path.as_str()),
            ("POST", "/orders")
        );
        assert_eq!(config.handlers[0].consumer, "orders-processor");
        assert!(config.streams.unwrap().ends_with("streams.toml"));
        assert_eq!(
            config.runtime.limits,
            Limits::default(),
            "documents every default"
        );
    }

    /// The production config applies no overlay (one would scale the cluster's streams down);
    /// the local one differs from it only in the overlay and the listener address.
    #[test]
    fn production_applies_no_overlay_and_dev_differs_only_in_overlay_and_listener() {
        let (prod, dev) = (deploy("jetwasm.toml"), deploy("jetwasm.dev.toml"));
        assert_eq!(prod.env, None);
        assert!(!prod.allow_destructive);
        assert_eq!(dev.env.as_deref(), Some("dev"));
        assert_eq!(prod.streams, dev.streams);
        assert_eq!(prod.runtime.limits, dev.runtime.limits);
        let ip = |c: &Config| c.runtime.http.map(|a| a.ip().to_string());
        assert_eq!(
            ip(&prod).as_deref(),
            Some("0.0.0.0"),
            "reachable in a container"
        );
        assert_eq!(ip(&dev).as_deref(), Some("127.0.0.1"), "local only");
        let components = |c: &Config| {
            let handlers = c.handlers.iter().map(|h| {
                format!(
                    "{} {} {}/{} {:?} {:?}",
                    h.name,
                    h.component.display(),
                    h.stream,
                    h.consumer,
                    h.publish,
                    h.config
                )
            });
            let publishers = c.publishers.iter().map(|p| {
                format!(
                    "{} {} {:?} {:?} {:?} {:?} {:?}",
                    p.name,
                    p.component.display(),
                    p.every,
                    p.http,
                    p.publish,
                    p.limits,
                    p.config
                )
            });
            handlers.chain(publishers).collect::<Vec<_>>()
        };
        assert_eq!(components(&prod), components(&dev));
    }
}
