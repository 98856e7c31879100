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
    /// The folder of drop-in handlers and publishers (`NAME.wasm` beside its manifest
    /// `NAME.toml`; see the `drop_in` module).
    pub handlers_dir: Option<PathBuf>,
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
            handlers_dir: None,
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

/// Settings given on the command line, replacing the file's before it is checked.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--http`: the listener address (`[runtime] http`).
    pub http: Option<SocketAddr>,
    /// `--handlers-dir`: the drop-in folder (`[runtime] handlers_dir`), relative to the
    /// working directory.
    pub handlers_dir: Option<PathBuf>,
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
    /// The drop-in `name` from its manifest `text` (`NAME.toml`), its component `wasm`: the
    /// keys of a `[[handler]]` table, or with `kind = "publisher"` of a `[[publisher]]` table,
    /// minus `name` (the file's) and `component` (`NAME.wasm` beside it), with this config's
    /// defaults, and checked against what the config runs (names, HTTP routes). The error is
    /// every problem, one line each.
    pub fn manifest(&self, name: &str, wasm: &Path, text: &str) -> Result<DropIn, Vec<String>> {
        let mut table: toml::Table = text.parse().map_err(|e| vec![one_line(&e, text)])?;
        let mut problems = Problems::default();
        for (key, whose) in [
            ("name", "the file's name"),
            ("component", "the .wasm beside it"),
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
        table.insert("name".into(), name.into());
        table.insert("component".into(), wasm.display().to_string().into());
        let value = toml::Value::Table(table);
        let mut names: BTreeSet<&str> = (self.handlers.iter().map(|h| h.component.name.as_str()))
            .chain(self.publishers.iter().map(|p| p.component.name.as_str()))
            .collect();
        let mut routes: BTreeSet<(&str, &str)> = (self.publishers.iter())
            .filter_map(|p| match &p.trigger {
                Trigger::Http(route) => Some((route.method.as_str(), route.path.as_str())),
                Trigger::Schedule(_) => None,
            })
            .collect();
        let (defaults, same) = (self.runtime.limits, |p: PathBuf| p);
        let listener = self.runtime.http.is_some();
        let unreadable = |e: toml::de::Error| vec![one_line(&e, "")];
        let resolved = if kind == "publisher" {
            let raw: RawPublisher = value.try_into().map_err(unreadable)?;
            let taken = (&mut names, &mut routes);
            publisher(&raw, defaults, &same, taken, listener, &mut problems).map(DropIn::Publisher)
        } else {
            let raw: RawHandler = value.try_into().map_err(unreadable)?;
            Some(DropIn::Handler(handler(
                &raw,
                defaults,
                &same,
                &mut names,
                &mut problems,
            )))
        };
        match resolved {
            Some(drop_in) if problems.0.is_empty() => Ok(drop_in),
            _ => Err(problems.0),
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

    /// Adds `own`, each line prefixed with `label` (`handler orders: ...`).
    fn under(&mut self, label: &str, own: Problems) {
        self.0
            .extend(own.0.into_iter().map(|p| format!("{label}: {p}")));
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
    if raw.handlers.is_empty() && raw.publishers.is_empty() && raw.runtime.handlers_dir.is_none() {
        problems.add(
            "nothing to run: add a [[handler]] or a [[publisher]], or set [runtime] handlers_dir",
        );
    }
    let mut names = BTreeSet::new();
    let mut routes = BTreeSet::new();
    let defaults = raw.runtime.limits;
    let listener = raw.runtime.http.is_some();
    let handlers = (raw.handlers.iter())
        .map(|h| handler(h, defaults, &path, &mut names, problems))
        .collect();
    let publishers = (raw.publishers.iter())
        .filter_map(|p| {
            publisher(
                p,
                defaults,
                &path,
                (&mut names, &mut routes),
                listener,
                problems,
            )
        })
        .collect();
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
        handlers_dir: raw.runtime.handlers_dir.map(path),
    };
    Config {
        nats,
        streams,
        runtime,
        handlers,
        publishers,
    }
}

/// A `[[handler]]` table (or a handler's manifest) resolved, its problems noted under its
/// name.
fn handler<'a>(
    raw: &'a RawHandler,
    defaults: Limits,
    path: &impl Fn(PathBuf) -> PathBuf,
    names: &mut BTreeSet<&'a str>,
    problems: &mut Problems,
) -> Handler {
    let mut own = Problems::default();
    note_name(&raw.name, names, &mut own);
    let handler = Handler {
        component: component(raw.common(), defaults, path, &mut own),
        stream: raw.stream.clone(),
        consumer: raw.consumer.clone(),
        confirm_acks: raw.confirm_acks,
        instances: instances(raw, &mut own),
    };
    problems.under(&format!("handler {}", raw.name), own);
    handler
}

/// A `[[publisher]]` table (or a publisher's manifest) resolved, its problems noted under its
/// name; `None` when it has no usable trigger. `taken` holds the names and routes already
/// used; `listener` says whether the host serves HTTP.
fn publisher<'a>(
    raw: &'a RawPublisher,
    defaults: Limits,
    path: &impl Fn(PathBuf) -> PathBuf,
    taken: (&mut BTreeSet<&'a str>, &mut BTreeSet<(&'a str, &'a str)>),
    listener: bool,
    problems: &mut Problems,
) -> Option<Publisher> {
    let (names, routes) = taken;
    let mut own = Problems::default();
    note_name(&raw.name, names, &mut own);
    let component = component(raw.common(), defaults, path, &mut own);
    let trigger = trigger(raw, listener, routes, &mut own);
    problems.under(&format!("publisher {}", raw.name), own);
    Some(Publisher {
        component,
        trigger: trigger?,
    })
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
mod tests;
