//! Turning the file as written ([`super::raw`]) into typed values: defaults laid under each
//! component's settings, every check made, every problem noted, one line each.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use bytesize::ByteSize;

use super::raw::{
    Common, RawBatch, RawConfig, RawHandler, RawInstances, RawKvGrant, RawMessageIds, RawPublisher,
    RawTraceparent,
};
use super::tenant::{check_counts, check_member, defaults_for, tenants};
use super::*;
use crate::schedule::Schedule;

/// Problems found so far, one line each.
#[derive(Default)]
pub(super) struct Problems(pub(super) Vec<String>);

impl Problems {
    pub(super) fn add(&mut self, problem: impl Into<String>) {
        self.0.push(problem.into());
    }

    /// Adds `own`, each line prefixed with `label` (`handler orders: ...`).
    pub(super) fn under(&mut self, label: &str, own: Problems) {
        self.0
            .extend(own.0.into_iter().map(|p| format!("{label}: {p}")));
    }
}

/// What a component's settings are laid over and checked against: `[runtime.limits]` and the
/// tenants.
#[derive(Clone, Copy)]
pub(super) struct Defaults<'a> {
    pub(super) limits: Limits,
    pub(super) tenants: &'a [Tenant],
}

/// The raw file resolved into typed values, every problem noted in `problems`.
pub(super) fn resolve(raw: RawConfig, base: &Path, problems: &mut Problems) -> Config {
    let path = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };
    if raw.env.is_some() && raw.streams.is_none() {
        problems.add("`env` is set but `streams` is not");
    }
    if raw.allow_destructive && raw.streams.is_none() {
        problems.add("`allow_destructive` is set but `streams` is not");
    }
    if let Some(n) = raw.runtime.max_instances {
        if !(1..=MAX_INSTANCES).contains(&n) {
            problems.add(format!(
                "runtime.max_instances is {n}: it must be 1 to {MAX_INSTANCES}"
            ));
        }
    }
    if raw.runtime.keep_resident > MAX_KEEP_RESIDENT {
        problems.add(format!(
            "runtime.keep_resident is {}: it must be at most {}",
            raw.runtime.keep_resident.display().iec(),
            MAX_KEEP_RESIDENT.display().iec()
        ));
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
    let drop_ins = raw.runtime.handlers_dir.is_some() || raw.runtime.registry;
    if raw.handlers.is_empty() && raw.publishers.is_empty() && !drop_ins {
        problems.add(
            "nothing to run: add a [[handler]] or a [[publisher]], or set [runtime] handlers_dir or registry",
        );
    }
    let mut names = BTreeSet::new();
    let mut routes = BTreeSet::new();
    let streams = (&raw.env, raw.allow_destructive);
    let tenants = tenants(&raw.tenants, raw.runtime.limits, streams, &path, problems);
    let defaults = Defaults {
        limits: raw.runtime.limits,
        tenants: &tenants,
    };
    let listener = raw.runtime.http.is_some();
    let handlers: Vec<Handler> = (raw.handlers.iter())
        .map(|h| handler(h, defaults, &path, &mut names, problems))
        .collect();
    let publishers: Vec<Publisher> = (raw.publishers.iter())
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
    let components =
        (handlers.iter().map(|h| &h.component)).chain(publishers.iter().map(|p| &p.component));
    check_counts(components, &tenants, problems);
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
        compile_cache: raw.runtime.compile_cache.map(path),
        handlers_dir: raw.runtime.handlers_dir.map(path),
        ..raw.runtime
    };
    Config {
        nats,
        streams,
        runtime,
        handlers,
        publishers,
        tenants,
    }
}

/// A `[[handler]]` table (or a handler's manifest) resolved, its problems noted under its
/// name.
pub(super) fn handler<'a>(
    raw: &'a RawHandler,
    defaults: Defaults<'_>,
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
        ordering: (raw.ordering.as_ref()).and_then(|o| match o.key.parse() {
            Ok(key) => Some(key),
            Err(e) => {
                own.add(format!("`ordering`: {e}"));
                None
            }
        }),
        shadow: (raw.shadow.as_ref()).and_then(|shadow| {
            if !(shadow.sample > 0.0 && shadow.sample <= 1.0) {
                own.add(format!(
                    "`shadow.sample` is {}: a share of messages, above 0 and at most 1 (0.1: one in ten)",
                    shadow.sample
                ));
                return None;
            }
            Some(Shadow {
                wasm: path(shadow.component.clone()),
                sample: shadow.sample,
            })
        }),
        batch: None,
        instances: instances(raw, &mut own),
        own_consumer: None,
    };
    let handler = Handler {
        batch: raw
            .batch
            .as_ref()
            .and_then(|b| batch(b, &handler, &mut own)),
        ..handler
    };
    problems.under(&format!("handler {}", raw.name), own);
    handler
}

/// A handler's `batch` table, checked against its other settings.
fn batch(raw: &RawBatch, handler: &Handler, problems: &mut Problems) -> Option<Batch> {
    let in_flight = handler.component.limits.max_in_flight;
    let mut fine = true;
    let mut problem = |p: String| {
        problems.add(p);
        fine = false;
    };
    if !(1..=MAX_BATCH).contains(&raw.max) {
        problem(format!(
            "`batch.max` is {}: it must be 1 to {MAX_BATCH}",
            raw.max
        ));
    } else if raw.max > in_flight {
        problem(format!(
            "`batch.max` is {} but limits.max_in_flight is {in_flight}: a batch holds only \
             messages in flight, so set limits.max_in_flight to at least {}",
            raw.max, raw.max
        ));
    }
    if raw.max_wait.is_zero() || raw.max_wait > MAX_BATCH_WAIT {
        problem(format!(
            "`batch.max_wait` is {:?}: it must be above 0 and at most {MAX_BATCH_WAIT:?}",
            raw.max_wait
        ));
    }
    if handler.shadow.is_some() {
        problem("`shadow` runs a handler-world candidate; a batch handler cannot have one".into());
    }
    fine.then_some(Batch {
        max: raw.max,
        max_wait: raw.max_wait,
    })
}

/// Longest `batch.max_wait`: well inside any ack wait.
const MAX_BATCH_WAIT: Duration = Duration::from_secs(5);

/// A `[[publisher]]` table (or a publisher's manifest) resolved, its problems noted under its
/// name; `None` when it has no usable trigger. `taken` holds the names and routes already
/// used; `listener` says whether the host serves HTTP.
pub(super) fn publisher<'a>(
    raw: &'a RawPublisher,
    defaults: Defaults<'_>,
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

pub(super) fn note_name<'a>(name: &'a str, names: &mut BTreeSet<&'a str>, problems: &mut Problems) {
    if name.is_empty() {
        problems.add("`name` must not be empty");
    } else if !names.insert(name) {
        problems.add("the name is used more than once");
    }
}

/// A component's shared settings, resolved and checked.
pub(super) fn component(
    common: Common<'_>,
    defaults: Defaults<'_>,
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
    let kv = kv_grants(common.kv, problems);
    let base = defaults_for(common.tenant, defaults.tenants, defaults.limits);
    let limits = common.limits.over(base);
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
    let component = Component {
        name: common.name.to_owned(),
        tenant: common.tenant.unwrap_or(DEFAULT_TENANT).to_owned(),
        wasm: path(common.component.clone()),
        limits,
        publish: PublishPolicy::new(common.publish.to_vec()),
        kv,
        derive_message_ids: common.message_ids == RawMessageIds::Derived,
        stamp_traceparent: common.traceparent == RawTraceparent::Stamped,
        config,
    };
    check_member(&component, defaults.tenants, problems);
    component
}

/// The `kv = [...]` grants, each bucket named once with a name JetStream accepts.
fn kv_grants(raw: &[RawKvGrant], problems: &mut Problems) -> Vec<KvGrant> {
    let mut grants: Vec<KvGrant> = Vec::new();
    for grant in raw {
        let grant = match grant {
            RawKvGrant::Bucket(bucket) => KvGrant {
                bucket: bucket.clone(),
                read_only: false,
            },
            RawKvGrant::Table(table) => KvGrant {
                bucket: table.bucket.clone(),
                read_only: table.read_only,
            },
        };
        let valid = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if grant.bucket.is_empty() || !grant.bucket.chars().all(valid) {
            problems.add(format!(
                "kv bucket {:?} is not a bucket name: use letters, digits, `-` and `_`",
                grant.bucket
            ));
        } else if grants.iter().any(|g| g.bucket == grant.bucket) {
            problems.add(format!("kv bucket {:?} is granted twice", grant.bucket));
        } else {
            grants.push(grant);
        }
    }
    grants
}

pub(super) fn check_limits(limits: &Limits, problems: &mut Problems) {
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

pub(super) fn instances(handler: &RawHandler, problems: &mut Problems) -> Instances {
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
pub(super) fn trigger<'a>(
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

pub(super) fn check_route<'a>(
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
    // A wildcard tail (`/api/{*rest}`) serves every path under its prefix.
    let prefix = match route.path.rsplit_once("/{*") {
        Some((prefix, name)) => {
            let name = name.strip_suffix('}').unwrap_or("");
            let named =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !named {
                problems.add(format!(
                    "http.path {:?}: a wildcard tail is written /{{*name}}, a name of letters, digits and _",
                    route.path
                ));
            }
            prefix
        }
        None => route.path.as_str(),
    };
    if !route.path.starts_with('/') || !prefix.chars().all(plain) {
        problems.add(format!(
            "http.path {:?} must start with '/' and use only letters, digits and /-._~, and may end with a wildcard tail /{{*name}}",
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
pub(super) fn one_line(error: &toml::de::Error, text: &str) -> String {
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

pub(super) fn config_value(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}
