//! `[[tenant]]`: a team or customer whose handlers run beside others'. Each tenant has its own
//! NATS credentials (the server enforces what they may touch), its own streams spec (applied
//! with those credentials), quotas summed over all its components, a grant of the subjects
//! its components may list in `publish`, and default limits for them. A component names its
//! tenant with `tenant = "NAME"`; one without runs as the implicit tenant [`DEFAULT_TENANT`],
//! on the host's own connection, with no quotas but the host's.

use std::collections::BTreeSet;
use std::path::PathBuf;

use bytesize::ByteSize;
use serde::Deserialize;

use super::raw::LimitOverrides;
use super::resolve::{check_limits, Problems};
use super::{Component, Limits, Streams, MAX_IN_FLIGHT};

/// The tenant of components that name none.
pub const DEFAULT_TENANT: &str = "default";

/// Most `cpu_share` a tenant may have.
pub const MAX_CPU_SHARE: u32 = 10_000;

/// One `[[tenant]]`, resolved and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    /// Its name: in `tenant = "..."`, metric labels and `/status`.
    pub name: String,
    /// How its connection authenticates.
    pub credentials: Credentials,
    /// Its streams spec, applied with its credentials before its components load.
    pub streams: Option<Streams>,
    /// What its components may use together.
    pub quotas: Quotas,
    /// Subjects its components may list in `publish` (`None`: any; the server still
    /// enforces its account's permissions).
    pub grant: Option<Vec<String>>,
    /// Limits for its components that do not set their own.
    pub limits: Limits,
}

/// NATS credentials, as for `[nats]`: a creds file, an nkey seed file, or user and password.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// A credentials file (JWT and nkey seed).
    pub creds: Option<PathBuf>,
    /// A file holding an nkey seed (`SU...`).
    pub nkey: Option<PathBuf>,
    /// User and password.
    pub user_password: Option<(String, String)>,
}

/// What a tenant's components may use together on one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// Calls (messages and requests) running at once across its components.
    pub max_in_flight: Option<usize>,
    /// Linear memory summed over its live instances; past it, its calls fail (the message
    /// is retried with backoff), never another tenant's.
    pub max_memory: Option<ByteSize>,
    /// Its weight when tenants' long-running calls compete for the CPU.
    pub cpu_share: u32,
    /// Most handlers and publishers it may run on one host.
    pub max_handlers: Option<usize>,
}

/// `[[tenant]]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    name: String,
    creds: Option<PathBuf>,
    nkey: Option<PathBuf>,
    user: Option<String>,
    password: Option<String>,
    streams: Option<PathBuf>,
    publish: Option<Vec<String>>,
    max_in_flight: Option<usize>,
    max_memory: Option<ByteSize>,
    cpu_share: Option<u32>,
    max_handlers: Option<usize>,
    #[serde(default)]
    limits: LimitOverrides,
}

/// The `[[tenant]]` tables resolved; `defaults` are `[runtime.limits]`, `env` and
/// `allow_destructive` the file's, applied to each tenant's streams too.
pub(super) fn tenants(
    raw: &[RawTenant],
    defaults: Limits,
    streams: (&Option<String>, bool),
    path: &impl Fn(PathBuf) -> PathBuf,
    problems: &mut Problems,
) -> Vec<Tenant> {
    let mut names = BTreeSet::new();
    raw.iter()
        .map(|raw| {
            let mut own = Problems::default();
            let tenant = tenant(raw, defaults, streams, path, &mut own);
            if !names.insert(raw.name.as_str()) {
                own.add("the name is used more than once");
            }
            problems.under(&format!("tenant {}", raw.name), own);
            tenant
        })
        .collect()
}

fn tenant(
    raw: &RawTenant,
    defaults: Limits,
    (env, allow_destructive): (&Option<String>, bool),
    path: &impl Fn(PathBuf) -> PathBuf,
    problems: &mut Problems,
) -> Tenant {
    check_name(&raw.name, problems);
    let user_password = match (&raw.user, &raw.password) {
        (Some(user), Some(password)) => Some((user.clone(), password.clone())),
        (None, None) => None,
        _ => {
            problems.add("`user` and `password` go together");
            None
        }
    };
    let ways = [
        raw.creds.is_some(),
        raw.nkey.is_some(),
        user_password.is_some(),
    ];
    match ways.iter().filter(|set| **set).count() {
        0 => problems.add(
            "no credentials: set `creds`, `nkey` or `user` and `password` (a tenant's \
             components connect as the tenant, so that the server enforces its permissions)",
        ),
        1 => {}
        _ => problems.add("set only one of `creds`, `nkey` or `user` and `password`"),
    }
    if let Some(n) = raw.max_in_flight {
        if !(1..=MAX_IN_FLIGHT).contains(&n) {
            problems.add(format!(
                "max_in_flight is {n}: it must be 1 to {MAX_IN_FLIGHT}"
            ));
        }
    }
    if raw.max_memory.is_some_and(|m| m < ByteSize::mib(1)) {
        problems.add("max_memory must be at least 1MiB");
    }
    let cpu_share = raw.cpu_share.unwrap_or(1);
    if !(1..=MAX_CPU_SHARE).contains(&cpu_share) {
        problems.add(format!(
            "cpu_share is {cpu_share}: it must be 1 to {MAX_CPU_SHARE}"
        ));
    }
    if raw.max_handlers == Some(0) {
        problems.add("max_handlers must be at least 1");
    }
    for subject in raw.publish.iter().flatten() {
        if let Err(why) = stream_init::subject::validate(subject) {
            problems.add(format!("publish subject {subject:?} {why}"));
        }
    }
    let mut limits = raw.limits.over(defaults);
    // Defaults never ask for more than the tenant's quotas: only a handler's own setting can.
    if let (None, Some(quota)) = (raw.limits.max_in_flight, raw.max_in_flight) {
        limits.max_in_flight = limits.max_in_flight.min(quota);
    }
    if let (None, Some(quota)) = (raw.limits.memory, raw.max_memory) {
        limits.memory = limits.memory.min(quota);
    }
    check_limits(&limits, problems);
    Tenant {
        name: raw.name.clone(),
        credentials: Credentials {
            creds: raw.creds.clone().map(path),
            nkey: raw.nkey.clone().map(path),
            user_password,
        },
        streams: raw.streams.clone().map(|spec| Streams {
            spec: path(spec),
            env: env.clone(),
            allow_destructive,
        }),
        quotas: Quotas {
            max_in_flight: raw.max_in_flight,
            max_memory: raw.max_memory,
            cpu_share,
            max_handlers: raw.max_handlers,
        },
        grant: raw.publish.clone(),
        limits,
    }
}

/// A tenant name is a subject token and a folder name: letters, digits, `-` and `_`.
fn check_name(name: &str, problems: &mut Problems) {
    let plain = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if name.is_empty() || !name.chars().all(plain) {
        problems.add(format!(
            "the name {name:?} must be letters, digits, - and _ (it is a folder and a subject token)"
        ));
    } else if name == DEFAULT_TENANT {
        problems.add(format!(
            "{DEFAULT_TENANT:?} is the tenant of components that name none; pick another name"
        ));
    }
}

/// The limits a component of `tenant` starts from: the tenant's, or `defaults` for the
/// implicit tenant or one not declared (reported by [`check_member`]).
pub(super) fn defaults_for(tenant: Option<&str>, tenants: &[Tenant], defaults: Limits) -> Limits {
    (tenant.and_then(|name| tenants.iter().find(|t| t.name == name))).map_or(defaults, |t| t.limits)
}

/// Checks `component` against its tenant: declared, and asking for no more than the tenant's
/// quotas and grant allow.
pub(super) fn check_member(component: &Component, tenants: &[Tenant], problems: &mut Problems) {
    if component.tenant == DEFAULT_TENANT {
        return;
    }
    let Some(tenant) = tenants.iter().find(|t| t.name == component.tenant) else {
        let declared: Vec<&str> = tenants.iter().map(|t| t.name.as_str()).collect();
        problems.add(format!(
            "tenant {:?} is not declared (declared: {}); add a [[tenant]] with that name",
            component.tenant,
            if declared.is_empty() {
                "none".to_owned()
            } else {
                declared.join(", ")
            }
        ));
        return;
    };
    let limits = &component.limits;
    if let Some(quota) = tenant.quotas.max_in_flight {
        if limits.max_in_flight > quota {
            problems.add(format!(
                "limits.max_in_flight is {}, over tenant {}'s max_in_flight {quota}",
                limits.max_in_flight, tenant.name
            ));
        }
    }
    if let Some(quota) = tenant.quotas.max_memory {
        if limits.memory > quota {
            problems.add(format!(
                "limits.memory is {}, over tenant {}'s max_memory {}",
                limits.memory.display().iec(),
                tenant.name,
                quota.display().iec()
            ));
        }
    }
    if let Some(grant) = &tenant.grant {
        for subject in component.publish.allowed() {
            if !grant
                .iter()
                .any(|g| stream_init::subject::is_subset(subject, g))
            {
                problems.add(format!(
                    "publish subject {subject:?} is outside tenant {}'s grant [{}]",
                    tenant.name,
                    grant.join(", ")
                ));
            }
        }
    }
}

/// Checks that no tenant runs more components than its `max_handlers`.
pub(super) fn check_counts<'a>(
    components: impl Iterator<Item = &'a Component>,
    tenants: &[Tenant],
    problems: &mut Problems,
) {
    let components: Vec<&Component> = components.collect();
    for tenant in tenants {
        let Some(max) = tenant.quotas.max_handlers else {
            continue;
        };
        let count = (components.iter())
            .filter(|c| c.tenant == tenant.name)
            .count();
        if count > max {
            problems.add(format!(
                "tenant {}: {count} handlers and publishers configured, over its max_handlers {max}",
                tenant.name
            ));
        }
    }
}
