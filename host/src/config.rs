//! `jetwasm.toml`: where NATS is, which streams to set up first, runtime defaults and the
//! handlers and publishers to run. The file is read strictly into `raw` structs (unknown
//! keys name the key and line), then resolved into typed values: each component with its
//! limits laid over the defaults, its publish policy and its config strings; a handler's
//! [`Instances`], a publisher's [`Trigger`]. [`Config::load`] reports every problem at once,
//! one line each, naming the file. Relative paths are relative to the file.

mod raw;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use crate::schedule::Schedule;
use raw::{Common, RawConfig, RawHandler, RawInstances, RawPublisher, RawRuntime};

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

/// `[runtime]`.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// Address of the HTTP listener serving `/metrics`, `/healthz`, `/readyz` and HTTP
    /// publishers' routes.
    pub http: Option<SocketAddr>,
    /// Dead-letter records go to `<dead_letter>.<stream>.<consumer>`.
    pub dead_letter: String,
    /// How long in-flight messages may run after SIGTERM/SIGINT before the host exits.
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
}

impl Default for RawRuntime {
    fn default() -> Self {
        RawRuntime {
            http: None,
            dead_letter: "deadletter".to_owned(),
            grace_period: Duration::from_secs(10),
            limits: Limits::default(),
            compile_cache: None,
            compile_cache_max: DEFAULT_COMPILE_CACHE_MAX,
            max_failures: 10,
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
    /// The `.wasm` component.
    pub wasm: PathBuf,
    /// Its limits, its own laid over the runtime's.
    pub limits: Limits,
    /// Where it may publish.
    pub publish: PublishPolicy,
    /// The `config` table as the strings the component reads, sorted by key.
    pub config: Vec<(String, String)>,
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
    /// How its instances live.
    pub instances: Instances,
}

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

impl Config {
    /// Reads and checks `path`; relative paths in it are resolved against its folder.
    /// `listener`, when given (`--http`), replaces `[runtime] http`, before the checks that
    /// depend on it.
    pub fn load(path: &Path, listener: Option<SocketAddr>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse_with(&text, base, listener).map_err(|problems| ConfigError::Invalid {
            file: path.to_owned(),
            problems,
        })
    }

    /// Parses and checks config text, resolving relative paths against `base`; the error is
    /// every problem, one line each.
    pub fn parse(text: &str, base: &Path) -> Result<Config, Vec<String>> {
        Config::parse_with(text, base, None)
    }

    fn parse_with(
        text: &str,
        base: &Path,
        listener: Option<SocketAddr>,
    ) -> Result<Config, Vec<String>> {
        let mut raw: RawConfig = toml::from_str(text).map_err(|e| vec![one_line(&e, text)])?;
        if listener.is_some() {
            raw.runtime.http = listener;
        }
        let mut problems = Problems::default();
        let config = resolve(raw, base, &mut problems);
        match problems.0.is_empty() {
            true => Ok(config),
            false => Err(problems.0),
        }
    }
}

/// Problems found so far, one line each.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, problem: impl Into<String>) {
        self.0.push(problem.into());
    }
}

/// The raw file resolved into typed values, every problem noted in `problems`.
fn resolve(raw: RawConfig, base: &Path, problems: &mut Problems) -> Config {
    let path = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };
    if raw.env.is_some() && raw.streams.is_none() {
        problems.add("`env` is set but `streams` is not");
    }
    if raw.allow_destructive && raw.streams.is_none() {
        problems.add("`allow_destructive` is set but `streams` is not");
    }
    if raw.runtime.max_failures == 0 {
        problems.add("runtime.max_failures must be at least 1");
    }
    if let Err(why) = stream_init::subject::validate(&raw.runtime.dead_letter) {
        problems.add(format!(
            "runtime.dead_letter {:?} {why}",
            raw.runtime.dead_letter
        ));
    }
    if raw.handlers.is_empty() && raw.publishers.is_empty() {
        problems.add("nothing to run: add a [[handler]] or a [[publisher]]");
    }
    let mut names = BTreeSet::new();
    let mut routes = BTreeSet::new();
    let defaults = raw.runtime.limits;
    let mut handlers = Vec::new();
    for handler in &raw.handlers {
        let label = format!("handler {}", handler.name);
        let mut own = Problems::default();
        note_name(&handler.name, &mut names, &mut own);
        let component = component(handler.common(), defaults, &path, &mut own);
        let instances = instances(handler, &mut own);
        handlers.push(Handler {
            component,
            stream: handler.stream.clone(),
            consumer: handler.consumer.clone(),
            confirm_acks: handler.confirm_acks,
            instances,
        });
        problems
            .0
            .extend(own.0.into_iter().map(|p| format!("{label}: {p}")));
    }
    let mut publishers = Vec::new();
    for publisher in &raw.publishers {
        let label = format!("publisher {}", publisher.name);
        let mut own = Problems::default();
        note_name(&publisher.name, &mut names, &mut own);
        let component = component(publisher.common(), defaults, &path, &mut own);
        let listener = raw.runtime.http.is_some();
        if let Some(trigger) = trigger(publisher, listener, &mut routes, &mut own) {
            publishers.push(Publisher { component, trigger });
        }
        problems
            .0
            .extend(own.0.into_iter().map(|p| format!("{label}: {p}")));
    }
    let streams = raw.streams.map(|spec| Streams {
        spec: path(spec),
        env: raw.env,
        allow_destructive: raw.allow_destructive,
    });
    let nats = NatsConfig {
        creds: raw.nats.creds.map(path),
        ..raw.nats
    };
    let runtime = Runtime {
        http: raw.runtime.http,
        dead_letter: raw.runtime.dead_letter,
        grace_period: raw.runtime.grace_period,
        limits: defaults,
        compile_cache: raw.runtime.compile_cache.map(path),
        compile_cache_max: raw.runtime.compile_cache_max,
        max_failures: raw.runtime.max_failures,
    };
    Config {
        nats,
        streams,
        runtime,
        handlers,
        publishers,
    }
}

fn note_name<'a>(name: &'a str, names: &mut BTreeSet<&'a str>, problems: &mut Problems) {
    if name.is_empty() {
        problems.add("`name` must not be empty");
    } else if !names.insert(name) {
        problems.add("the name is used more than once");
    }
}

/// A component's shared settings, resolved and checked.
fn component(
    common: Common<'_>,
    defaults: Limits,
    path: &impl Fn(PathBuf) -> PathBuf,
    problems: &mut Problems,
) -> Component {
    for subject in common.publish {
        if let Err(why) = stream_init::subject::validate(subject) {
            problems.add(format!("publish subject {subject:?} {why}"));
        } else if let Some(reserved) = RESERVED_SUBJECTS
            .iter()
            .find(|r| stream_init::subject::overlaps(subject, r))
        {
            problems.add(format!(
                "publish subject {subject:?} overlaps the reserved {reserved}"
            ));
        }
    }
    let limits = common.limits.over(defaults);
    check_limits(&limits, problems);
    let mut config = Vec::new();
    for (key, value) in common.config {
        match config_value(value) {
            Some(value) => config.push((key.clone(), value)),
            None => problems.add(format!(
                "config.{key} must be a string, number or boolean, not a {}",
                value.type_str()
            )),
        }
    }
    Component {
        name: common.name.to_owned(),
        wasm: path(common.component.clone()),
        limits,
        publish: PublishPolicy::new(common.publish.to_vec()),
        config,
    }
}

fn check_limits(limits: &Limits, problems: &mut Problems) {
    if !(1..=MAX_IN_FLIGHT).contains(&limits.max_in_flight) {
        problems.add(format!(
            "limits.max_in_flight is {}: it must be 1 to {MAX_IN_FLIGHT}",
            limits.max_in_flight
        ));
    }
    if !(1..=MAX_PREFETCH).contains(&limits.prefetch) {
        problems.add(format!(
            "limits.prefetch is {}: it must be 1 to {MAX_PREFETCH}",
            limits.prefetch
        ));
    }
    if limits.max_message_size.as_u64() == 0 || limits.max_message_size > MAX_MESSAGE_SIZE {
        problems.add(format!(
            "limits.max_message_size is {}: it must be 1B to {} (NATS's largest payload)",
            limits.max_message_size.display().iec(),
            MAX_MESSAGE_SIZE.display().iec()
        ));
    }
    for (key, value) in [("cpu_time", limits.cpu_time), ("timeout", limits.timeout)] {
        if value < SHORTEST_TIME_LIMIT {
            problems.add(format!(
                "limits.{key} must be at least {SHORTEST_TIME_LIMIT:?}"
            ));
        }
    }
    if limits.memory < ByteSize::mib(1) || limits.memory > MAX_MEMORY {
        problems.add(format!(
            "limits.memory is {}: it must be 1MiB to {} (a 32-bit linear memory's largest)",
            limits.memory.display().iec(),
            MAX_MEMORY.display().iec()
        ));
    }
}

fn instances(handler: &RawHandler, problems: &mut Problems) -> Instances {
    match (handler.instances, handler.messages_per_instance) {
        (RawInstances::Fresh, None) => Instances::Fresh,
        (RawInstances::Fresh, Some(_)) => {
            problems.add("`messages_per_instance` needs `instances = \"reuse\"`");
            Instances::Fresh
        }
        (RawInstances::Reuse, Some(0)) => {
            problems.add("`messages_per_instance` must be at least 1");
            Instances::Fresh
        }
        (RawInstances::Reuse, per_instance) => Instances::Reuse {
            per_instance: per_instance.unwrap_or(DEFAULT_MESSAGES_PER_INSTANCE),
        },
    }
}

/// A publisher's one trigger, checked; `listener` says whether the host serves HTTP, `routes`
/// holds the routes taken so far.
fn trigger<'a>(
    publisher: &'a RawPublisher,
    listener: bool,
    routes: &mut BTreeSet<(&'a str, &'a str)>,
    problems: &mut Problems,
) -> Option<Trigger> {
    let trigger = match (publisher.every, &publisher.cron, &publisher.http) {
        (None, None, None) => {
            problems.add("set one of `every`, `cron` or `http`");
            return None;
        }
        (Some(every), None, None) => {
            if every < SHORTEST_INTERVAL {
                problems.add(format!("`every` must be at least {SHORTEST_INTERVAL:?}"));
            }
            Trigger::Schedule(Schedule::Every(every))
        }
        (None, Some(cron), None) => match cron::Schedule::from_str(cron) {
            Ok(schedule) => Trigger::Schedule(Schedule::Cron(Box::new(schedule))),
            Err(e) => {
                problems.add(format!("cron {cron:?}: {e}"));
                return None;
            }
        },
        (None, None, Some(route)) => {
            check_route(route, listener, routes, problems);
            Trigger::Http(route.clone())
        }
        _ => {
            problems.add("set only one of `every`, `cron` or `http`");
            return None;
        }
    };
    Some(trigger)
}

fn check_route<'a>(
    route: &'a HttpRoute,
    listener: bool,
    routes: &mut BTreeSet<(&'a str, &'a str)>,
    problems: &mut Problems,
) {
    if !ROUTE_METHODS.contains(&route.method.as_str()) {
        problems.add(format!(
            "http.method {:?} must be one of {}",
            route.method,
            ROUTE_METHODS.join(", ")
        ));
    }
    let plain = |c: char| c.is_ascii_alphanumeric() || "/-._~".contains(c);
    if !route.path.starts_with('/') || !route.path.chars().all(plain) {
        problems.add(format!(
            "http.path {:?} must start with '/' and use only letters, digits and /-._~",
            route.path
        ));
    }
    if RESERVED_PATHS.contains(&route.path.as_str()) {
        problems.add(format!("http.path {:?} is the host's own", route.path));
    }
    if !routes.insert((route.method.as_str(), route.path.as_str())) {
        problems.add(format!(
            "another publisher already serves {} {}",
            route.method, route.path
        ));
    }
    if !listener {
        problems.add("an HTTP route needs the listener: set [runtime] http (or pass --http)");
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
    use crate::schedule::Schedule;

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
        let streams = config.streams.as_ref().unwrap();
        assert_eq!(streams.spec, Path::new("/etc/jw/streams.toml"));
        assert_eq!(streams.env.as_deref(), Some("dev"));
        let h = &config.handlers[0].component;
        assert_eq!(h.wasm, Path::new("/etc/jw/orders.wasm"));
        let limits = h.limits;
        assert_eq!(limits.memory, ByteSize::mib(32));
        assert_eq!(limits.timeout, Duration::from_secs(2));
        assert_eq!(limits.max_in_flight, Limits::default().max_in_flight);
        assert_eq!(
            h.config,
            vec![
                ("output_subject".to_owned(), "orders.processed".to_owned()),
                ("retry_delay_ms".to_owned(), "1500".to_owned())
            ]
        );
    }

    #[test]
    fn publish_allow_list_and_reserved_subjects() {
        let config = Config::parse(EXAMPLE, Path::new(".")).unwrap();
        let publish = &config.handlers[0].component.publish;
        assert!(publish.allows("orders.processed"));
        assert!(!publish.allows("orders.created"));
        assert!(!publish.allows("$JS.API.STREAM.DELETE.ORDERS"));
        let everything = PublishPolicy::new(vec![">".into()]);
        assert!(everything.allows("orders.created"));
        assert!(
            !everything.allows("_INBOX.abc"),
            "reserved whatever the list says"
        );

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
                "publisher p: an HTTP route needs the listener: set [runtime] http (or pass --http)"
            ]
        );
        let err =
            Config::parse(&publisher("cron = \"every tuesday\""), Path::new(".")).unwrap_err();
        assert!(
            err[0].starts_with("publisher p: cron \"every tuesday\""),
            "{err:?}"
        );
        let ok = Config::parse(&publisher("cron = \"0/5 * * * * *\""), Path::new(".")).unwrap();
        let Trigger::Schedule(Schedule::Cron(cron)) = &ok.publishers[0].trigger else {
            panic!("{:?}", ok.publishers[0].trigger);
        };
        assert_eq!(cron.to_string(), "0/5 * * * * *");
        let ok = Config::parse(&publisher("every = \"250ms\""), Path::new(".")).unwrap();
        assert!(matches!(
            ok.publishers[0].trigger,
            Trigger::Schedule(Schedule::Every(every)) if every == Duration::from_millis(250)
        ));
    }

    #[test]
    fn the_http_flag_counts_as_the_listener_a_route_needs() {
        let text = "[[publisher]]\nname = \"p\"\ncomponent = \"p.wasm\"\nhttp = { method = \"POST\", path = \"/orders\" }\n";
        assert!(Config::parse(text, Path::new(".")).is_err());
        let listener = "127.0.0.1:9090".parse().ok();
        let config = Config::parse_with(text, Path::new("."), listener).unwrap();
        assert_eq!(config.runtime.http, listener);
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
        assert_eq!(config.handlers[0].component.limits.prefetch, 1024);
        let with = |prefetch: &str| {
            EXAMPLE.replace(
                "limits = {",
                &format!("limits = {{ prefetch = {prefetch}, "),
            )
        };
        let small = Config::parse(&with("16"), Path::new(".")).unwrap();
        assert_eq!(small.handlers[0].component.limits.prefetch, 16);
        let err = Config::parse(&with("0"), Path::new(".")).unwrap_err();
        assert_eq!(
            err,
            vec!["handler orders: limits.prefetch is 0: it must be 1 to 65536"]
        );
    }

    #[test]
    fn instances_are_fresh_unless_reuse_is_asked_for() {
        let config = Config::parse(EXAMPLE, Path::new(".")).unwrap();
        assert_eq!(config.handlers[0].instances, Instances::Fresh);
        let with = |extra: &str| EXAMPLE.replace("limits = {", &format!("{extra}\nlimits = {{"));
        let reuse = Config::parse(&with("instances = \"reuse\""), Path::new(".")).unwrap();
        assert_eq!(
            reuse.handlers[0].instances,
            Instances::Reuse {
                per_instance: DEFAULT_MESSAGES_PER_INSTANCE
            }
        );
        let text = with("instances = \"reuse\"\nmessages_per_instance = 10");
        let ten = Config::parse(&text, Path::new(".")).unwrap();
        assert_eq!(
            ten.handlers[0].instances,
            Instances::Reuse { per_instance: 10 }
        );

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
        Config::load(&path, None).unwrap()
    }

    /// The examples in deploy/ must always parse, so they never drift from the code.
    #[test]
    fn deploy_examples_parse() {
        let config = deploy("jetwasm.toml");
        assert_eq!(config.handlers.len(), 1);
        assert_eq!(config.publishers.len(), 2);
        assert!(matches!(
            config.publishers[0].trigger,
            Trigger::Schedule(Schedule::Every(every)) if every == Duration::from_millis(500)
        ));
        let Trigger::Http(route) = &config.publishers[1].trigger else {
            panic!("{:?}", config.publishers[1].trigger);
        };
        assert_eq!(
            (route.method.as_str(), route.path.as_str()),
            ("POST", "/orders")
        );
        assert_eq!(config.handlers[0].consumer, "orders-processor");
        assert!(config.streams.unwrap().spec.ends_with("streams.toml"));
        assert_eq!(
            config.runtime.limits,
            Limits::default(),
            "documents every default"
        );
    }

    /// `deploy/jetwasm.toml` is where users look up the defaults: it writes out every limit.
    #[test]
    fn the_deploy_config_writes_out_every_default_limit() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/jetwasm.toml");
        let file: toml::Table = std::fs::read_to_string(path).unwrap().parse().unwrap();
        let written: BTreeSet<&String> = file["runtime"]["limits"]
            .as_table()
            .unwrap()
            .keys()
            .collect();
        let defaults = toml::Table::try_from(Limits::default()).unwrap();
        let every: BTreeSet<&String> = defaults.keys().collect();
        assert_eq!(written, every);
    }

    /// The production config applies no overlay (one would scale the cluster's streams down);
    /// the local one differs from it only in the overlay and the listener address.
    #[test]
    fn production_applies_no_overlay_and_dev_differs_only_in_overlay_and_listener() {
        let (prod, dev) = (deploy("jetwasm.toml"), deploy("jetwasm.dev.toml"));
        let (prod_streams, dev_streams) =
            (prod.streams.clone().unwrap(), dev.streams.clone().unwrap());
        assert_eq!(prod_streams.env, None);
        assert!(!prod_streams.allow_destructive);
        assert_eq!(dev_streams.env.as_deref(), Some("dev"));
        assert_eq!(prod_streams.spec, dev_streams.spec);
        assert_eq!(prod.runtime.limits, dev.runtime.limits);
        let ip = |c: &Config| c.runtime.http.map(|a| a.ip().to_string());
        assert_eq!(
            ip(&prod).as_deref(),
            Some("0.0.0.0"),
            "reachable in a container"
        );
        assert_eq!(ip(&dev).as_deref(), Some("127.0.0.1"), "local only");
        let components = |c: &Config| format!("{:?} {:?}", c.handlers, c.publishers);
        assert_eq!(components(&prod), components(&dev));
    }
}
