//! Tenants as the host runs them. Each `[[tenant]]` gets its own NATS connection made with
//! its credentials, so the server enforces what its components may consume, acknowledge and
//! publish, and which JetStream API calls they may make; its streams spec is applied over
//! that connection; its quota account is shared by all its components' calls. The implicit
//! tenant ([`DEFAULT_TENANT`]) is the host's own connection and the config's streams, with no
//! quotas but the host's.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use async_nats::jetstream;
use stream_init::connect::NatsArgs;

use crate::config::{Config, Credentials, Quotas, Streams, DEFAULT_TENANT};
use crate::fair_share::Gate;
use crate::metrics::Metrics;
use crate::publish::{Connection, Denials};
use crate::quota::Account;

/// One tenant on this host.
pub struct Tenant {
    /// Its name.
    pub name: Arc<str>,
    /// Its connection: its components consume, acknowledge and publish over it.
    pub connection: Connection,
    /// Its streams spec, as applied at start (consumers are checked against it).
    pub spec: Option<Arc<stream_init::Spec>>,
    /// The spec's file, for advice.
    pub spec_file: Option<PathBuf>,
    /// Its quotas as configured (`None` for the implicit tenant).
    pub quotas: Option<Quotas>,
    /// What its calls use of its quotas.
    pub account: Arc<Account>,
}

impl Tenant {
    /// Its JetStream context.
    pub fn js(&self) -> &jetstream::Context {
        &self.connection.js
    }
}

/// Every tenant on this host, the implicit one included.
pub struct Tenants {
    by_name: BTreeMap<String, Arc<Tenant>>,
}

impl Tenants {
    /// Connects the host (`nats` at `url`) and each tenant with its own credentials, and
    /// applies each one's streams spec over its connection (unless `apply` is false: `jetwasm
    /// check` changes nothing). Fails naming the tenant whose connection or streams fail.
    pub async fn start(
        config: &Config,
        nats: &NatsArgs,
        url: &str,
        metrics: &Metrics,
        apply: bool,
    ) -> anyhow::Result<Tenants> {
        let gate = Gate::per_core();
        let mut by_name = BTreeMap::new();
        let host = connect(nats, url, DEFAULT_TENANT).await?;
        let shown = stream_init::connect::redact(url);
        tracing::info!(url = %shown, "connected to NATS");
        let streams = config.streams.as_ref().filter(|_| apply);
        let spec = set_up_streams(&host.js, streams).await?;
        let account = Account::new(
            DEFAULT_TENANT,
            None,
            None,
            gate.share(0, 1),
            metrics.tenant_memory(DEFAULT_TENANT),
        );
        let default = Tenant {
            name: DEFAULT_TENANT.into(),
            connection: host,
            spec,
            spec_file: config.streams.as_ref().map(|s| s.spec.clone()),
            quotas: None,
            account: Arc::new(account),
        };
        by_name.insert(DEFAULT_TENANT.to_owned(), Arc::new(default));
        for (id, tenant) in (1..).zip(&config.tenants) {
            let label = || format!("tenant {}", tenant.name);
            let args = with_credentials(nats, &tenant.credentials);
            let connection = connect(&args, url, &tenant.name)
                .await
                .with_context(label)?;
            let spec = set_up_streams(&connection.js, tenant.streams.as_ref().filter(|_| apply))
                .await
                .with_context(label)?;
            let quotas = tenant.quotas;
            let account = Account::new(
                &tenant.name,
                quotas.max_in_flight,
                quotas.max_memory.map(|m| m.as_u64()),
                gate.share(id, quotas.cpu_share),
                metrics.tenant_memory(&tenant.name),
            );
            tracing::info!(tenant = tenant.name, "tenant connected");
            let tenant = Tenant {
                name: tenant.name.as_str().into(),
                connection,
                spec,
                spec_file: tenant.streams.as_ref().map(|s| s.spec.clone()),
                quotas: Some(quotas),
                account: Arc::new(account),
            };
            by_name.insert(tenant.name.to_string(), Arc::new(tenant));
        }
        Ok(Tenants { by_name })
    }

    /// Only the implicit tenant, on `js`, with no streams spec (for tools and benchmarks that
    /// load components by hand).
    pub fn single(js: &jetstream::Context, metrics: &Metrics) -> Tenants {
        let share = Gate::per_core().share(0, 1);
        let memory = metrics.tenant_memory(DEFAULT_TENANT);
        let tenant = Tenant {
            name: DEFAULT_TENANT.into(),
            connection: Connection {
                js: js.clone(),
                denials: Denials::default(),
            },
            spec: None,
            spec_file: None,
            quotas: None,
            account: Arc::new(Account::new(DEFAULT_TENANT, None, None, share, memory)),
        };
        let by_name = BTreeMap::from([(DEFAULT_TENANT.to_owned(), Arc::new(tenant))]);
        Tenants { by_name }
    }

    /// The implicit tenant: the host's own connection.
    pub fn host(&self) -> &Arc<Tenant> {
        &self.by_name[DEFAULT_TENANT]
    }

    /// The tenant named `name`.
    pub fn get(&self, name: &str) -> anyhow::Result<&Arc<Tenant>> {
        (self.by_name.get(name)).with_context(|| format!("tenant {name:?} is not declared"))
    }

    /// Every tenant, the implicit one first.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Tenant>> {
        std::iter::once(self.host())
            .chain((self.by_name.iter()).filter_map(|(n, t)| (n != DEFAULT_TENANT).then_some(t)))
    }
}

/// The host's connection flags with a tenant's credentials instead of the host's.
fn with_credentials(nats: &NatsArgs, credentials: &Credentials) -> NatsArgs {
    let (user, password) = credentials.user_password.clone().unzip();
    NatsArgs {
        creds: credentials.creds.clone(),
        nkey: credentials.nkey.clone(),
        user,
        password,
        token: None,
        ..nats.clone()
    }
}

/// Connects as `tenant` (or another name for the log), hearing what the server refuses it
/// (logged, and told to the work waiting on it: see [`Denials`]).
pub async fn connect(nats: &NatsArgs, url: &str, tenant: &str) -> anyhow::Result<Connection> {
    let denials = Denials::default();
    let heard = denials.clone();
    let tenant: Arc<str> = tenant.into();
    let options = nats.options().await?.event_callback(move |event| {
        let (heard, tenant) = (heard.clone(), tenant.clone());
        async move {
            match event {
                async_nats::Event::ServerError(async_nats::ServerError::Other(error)) => {
                    let denial = heard.heard(&error);
                    tracing::warn!(%tenant, denial, error, "the NATS server refused");
                }
                other => tracing::debug!(%tenant, event = %other, "connection event"),
            }
        }
    });
    let client = nats.connect_with(url, options).await?;
    Ok(Connection {
        js: jetstream::new(client),
        denials,
    })
}

/// Applies a streams spec (refusing destructive changes unless allowed); returns it, so each
/// handler can watch its consumer for changes made by hand.
async fn set_up_streams(
    js: &jetstream::Context,
    streams: Option<&Streams>,
) -> anyhow::Result<Option<Arc<stream_init::Spec>>> {
    let Some(streams) = streams else {
        return Ok(None);
    };
    let file = &streams.spec;
    let spec = stream_init::Spec::load(file, streams.env.as_deref())?;
    let plan = stream_init::plan(js, &spec)
        .await
        .with_context(|| format!("planning {}", file.display()))?;
    plan.check_destructive(streams.allow_destructive)
        .with_context(|| format!("applying {}", file.display()))?;
    if plan.is_empty() {
        tracing::info!(file = %file.display(), "streams up to date");
    }
    for line in stream_init::apply(js, &plan).await? {
        tracing::info!(file = %file.display(), "stream-init: {line}");
    }
    Ok(Some(Arc::new(spec)))
}
