//! `jetwasm`: the host binary.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use jetwasm::config::Overrides;
use jetwasm::run::{run, RunOptions};
use stream_init::connect::NatsArgs;

/// Run WebAssembly components as JetStream message handlers.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Log format
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "JETWASM_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// What `run` and `up` share: the config, what overrides it, and the connection.
#[derive(Debug, Args)]
struct HostArgs {
    /// The host configuration
    #[arg(long, short = 'c', default_value = "jetwasm.toml")]
    config: PathBuf,
    /// Serve /metrics, /healthz, /readyz and HTTP publishers here instead of the config's
    /// `[runtime] http` (e.g. one port per host on a shared machine)
    #[arg(long, env = "JETWASM_HTTP")]
    http: Option<SocketAddr>,
    /// Run the handlers and publishers dropped into this folder (NAME.wasm beside its manifest
    /// NAME.toml) instead of the config's `[runtime] handlers_dir`
    #[arg(long)]
    handlers_dir: Option<PathBuf>,
    /// Run what the fleet's registry holds (`jetwasm deploy`), watched for changes, as with
    /// `[runtime] registry = true`
    #[arg(long)]
    registry: bool,
    #[command(flatten)]
    nats: NatsArgs,
}

impl From<HostArgs> for RunOptions {
    fn from(args: HostArgs) -> Self {
        RunOptions {
            config: args.config,
            overrides: Overrides {
                http: args.http,
                handlers_dir: args.handlers_dir,
                registry: args.registry,
            },
            nats: args.nats,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Readable lines
    Human,
    /// One JSON object per line
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the handlers in a config file (and its handlers folder) until SIGTERM/SIGINT.
    Run {
        #[command(flatten)]
        host: HostArgs,
    },
    /// Run the handlers and publishers in a config file; without a server URL, start a local
    /// nats-server with JetStream first (stopped with the host).
    #[command(mut_arg("server", |arg| arg.help(
        "NATS server URL(s), comma-separated; none (and no [nats] url in the config): start a local nats-server"
    )))]
    Up {
        #[command(flatten)]
        host: HostArgs,
        /// Folder for the local server's data and log
        #[arg(long, default_value = ".jetwasm")]
        data: PathBuf,
        /// Port for the local server
        #[arg(long, default_value_t = 4222)]
        port: u16,
        /// The nats-server binary [default: NATS_SERVER_BIN, $JETWASM_TOOLS/venv/bin, PATH]
        #[arg(long)]
        nats_server: Option<PathBuf>,
    },
    /// Show what a running host runs: every handler and publisher, its source, version and
    /// state, and why a drop-in was refused (its `/status`, as a table).
    Status {
        /// The host's listener
        #[arg(long, default_value = "http://127.0.0.1:9090")]
        url: String,
    },
    /// Deploy a handler or publisher to the fleet's registry (JetStream): checked here first,
    /// then its component uploaded and its manifest put; hosts run with `--registry` pick it
    /// up.
    Deploy {
        /// The component (NAME.wasm: its name is the handler's unless --name says)
        component: PathBuf,
        /// Its manifest [default: NAME.toml beside the component]
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// The handler's or publisher's name [default: the component file's]
        #[arg(long)]
        name: Option<String>,
        /// Deploy it as this tenant's (registry key TENANT.NAME); hosts run it with the
        /// tenant's credentials and quotas
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// List what the fleet's registry deploys: name, component digest, revision, when.
    Handlers {
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Deploy an earlier revision of a handler again (the one before the current by default).
    Rollback {
        /// The handler or publisher (TENANT.NAME for a tenant's)
        name: String,
        /// The revision to go back to (see `jetwasm handlers` and the key's history)
        #[arg(long)]
        to: Option<u64>,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Remove a handler or publisher from the registry (its history stays); hosts stop it.
    Undeploy {
        /// The handler or publisher (TENANT.NAME for a tenant's)
        name: String,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Say which jetwasm world a component fits (handler, publisher, http-publisher), and if
    /// none, why, without NATS; or with --config, whether the server's streams fit a config.
    Check {
        /// The component to check
        #[arg(required_unless_present = "config")]
        component: Option<PathBuf>,
        /// Instead, check that the server's streams fit this host configuration: a stream
        /// captures every handler's dead letters and every subject it may publish to, each
        /// consumer exists and does not deliver the handler's own outputs back to it
        #[arg(long, conflicts_with = "component")]
        config: Option<PathBuf>,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Call a component in the host's sandbox and default limits, without NATS: a handler
    /// with one message (or each file of a folder), a timer publisher with one tick. Prints
    /// what the call decided and the publishes it attempted (recorded, never sent); fails for
    /// a term, a tick's error or a failed call.
    Try {
        /// The handler or timer publisher component
        component: PathBuf,
        /// A message for a handler: the payload's file
        #[arg(long, conflicts_with_all = ["messages", "tick"])]
        message: Option<PathBuf>,
        /// Each file in this folder, as one message each, with a table of the results
        #[arg(long, conflicts_with = "tick")]
        messages: Option<PathBuf>,
        /// One tick, for a timer publisher
        #[arg(long)]
        tick: bool,
        /// A request for an HTTP publisher: the body's file
        #[arg(long, conflicts_with_all = ["message", "messages", "tick"])]
        request: Option<PathBuf>,
        /// The request's method
        #[arg(long, default_value = "POST")]
        method: String,
        /// The request's path
        #[arg(long, default_value = "/")]
        path: String,
        /// The message's subject
        #[arg(long, default_value = "try.message")]
        subject: String,
        /// A header, NAME=VALUE (repeatable)
        #[arg(long = "header", value_parser = key_value)]
        headers: Vec<(String, String)>,
        /// A config entry, KEY=VALUE (repeatable)
        #[arg(long = "config", value_parser = key_value)]
        config: Vec<(String, String)>,
        /// Which delivery this is (from 1)
        #[arg(long, default_value_t = 1)]
        delivered: u32,
        /// A subject it may publish to (repeatable) [default: any]
        #[arg(long)]
        publish: Vec<String>,
    },
    /// Run a configured handler over a stretch of its stream's history, through an ordered
    /// ephemeral consumer (the durable consumer's position is never touched); publishes are
    /// captured and counted unless --publish on; nothing is acknowledged.
    Replay {
        /// The host config naming the handler
        #[arg(long)]
        config: PathBuf,
        /// The handler to run
        #[arg(long)]
        handler: String,
        /// Start at this stream sequence
        #[arg(long, group = "start", required_unless_present_any = ["since", "from_time"])]
        from_seq: Option<u64>,
        /// Start at messages stored this long ago (e.g. 2h)
        #[arg(long, group = "start", value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        /// Start at messages stored from this time (RFC 3339, e.g. 2026-11-29T10:00:00Z)
        #[arg(long, group = "start", value_parser = jetwasm::replay::rfc3339)]
        from_time: Option<time::OffsetDateTime>,
        /// Stop after this stream sequence [default: the last stored when the replay starts]
        #[arg(long)]
        to_seq: Option<u64>,
        /// Only messages on this subject [default: the durable consumer's filter]
        #[arg(long)]
        subject: Option<String>,
        /// Send the handler's publishes (on) or capture and count them (off)
        #[arg(long, default_value = "off", value_parser = ["off", "on"])]
        publish: String,
        /// Count what would be replayed without running the handler
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Read the dead-letter records and put their messages back (against a live fleet).
    #[command(alias = "dlq")]
    DeadLetters {
        #[command(subcommand)]
        action: jetwasm::dead_letters::Action,
    },
    /// Build a project made by `jetwasm new` and drop it into a running host's handlers
    /// folder (`jetwasm up --handlers-dir DIR`), again at every change to its sources,
    /// printing the build's error or what the host made of the new version.
    Dev {
        /// The project's folder
        #[arg(default_value = ".")]
        project: PathBuf,
        /// The handler's or publisher's name [default: the project folder's]
        #[arg(long)]
        name: Option<String>,
        /// The running host's handlers folder
        #[arg(long, default_value = "handlers.d")]
        handlers_dir: PathBuf,
        /// The running host's listener, for its /status
        #[arg(long, default_value = "http://127.0.0.1:9090")]
        url: String,
    },
    /// Write a new handler or publisher project that `./build.sh` builds into a component.
    New {
        /// What the component is
        kind: jetwasm::scaffold::Kind,
        /// The project's name (lowercase letters, digits, dashes); also its folder
        name: String,
        /// The language to write it in
        #[arg(long, short = 'l', default_value = "rust")]
        lang: jetwasm::scaffold::Lang,
        /// Where to create the project's folder
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

/// Logs to stderr at `level` unless `RUST_LOG` says otherwise; with `export`, also sends
/// spans to the OpenTelemetry collector the environment names, if it names one (see
/// [`jetwasm::telemetry`]). Keep the returned exporter until exit: dropping it flushes.
fn init_logging(
    format: LogFormat,
    level: &str,
    export: bool,
) -> anyhow::Result<Option<jetwasm::telemetry::Exporter>> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level))
        .add_directive(format!("{}=off", jetwasm::telemetry::TARGET).parse()?);
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Human => fmt.with_filter(filter).boxed(),
        LogFormat::Json => fmt.json().with_filter(filter).boxed(),
    };
    let (otel, exporter) = match export {
        true => jetwasm::telemetry::layer()?.unzip(),
        false => (None, None),
    };
    tracing_subscriber::registry().with(fmt).with(otel).init();
    Ok(exporter)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // The host reports what it does; one-shot commands print their answer, and log only
    // what went wrong.
    let level = match cli.command {
        Command::Run { .. } | Command::Up { .. } => "info",
        _ => "warn",
    };
    let export = matches!(cli.command, Command::Run { .. } | Command::Up { .. });
    let exporter = match init_logging(cli.log_format, level, export) {
        Ok(exporter) => exporter,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(exporter) = &exporter {
        tracing::info!(endpoint = %exporter.endpoint, "exporting spans over OTLP");
    }
    let result = match cli.command {
        Command::Run { host } => run(host.into()).await,
        Command::Up {
            host,
            data,
            port,
            nats_server,
        } => up(host.into(), &data, port, nats_server.as_deref()).await,
        Command::Check {
            component,
            config,
            nats,
        } => match (component, config) {
            (_, Some(config)) => print(jetwasm::check::config(&config, &nats).await),
            (Some(component), None) => check(&component).await,
            (None, None) => unreachable!("clap requires one"),
        },
        Command::Status { url } => status(&url).await,
        Command::DeadLetters { action } => jetwasm::dead_letters::run(action).await,
        Command::Replay {
            config,
            handler,
            from_seq,
            since,
            from_time,
            to_seq,
            subject,
            publish,
            dry_run,
            nats,
        } => {
            let start = match (from_seq, since, from_time) {
                (Some(seq), _, _) => jetwasm::replay::Start::Seq(seq),
                (_, Some(ago), _) => jetwasm::replay::Start::Since(ago),
                (_, _, Some(at)) => jetwasm::replay::Start::Time(at),
                (None, None, None) => unreachable!("clap requires one"),
            };
            jetwasm::replay::print(jetwasm::replay::Replay {
                config,
                handler,
                start,
                to_seq,
                subject,
                publish: publish == "on",
                dry_run,
                nats,
            })
            .await
        }
        Command::Try {
            component,
            message,
            messages,
            tick,
            request,
            method,
            path,
            subject,
            headers,
            config,
            delivered,
            publish,
        } => {
            let template = jetwasm::try_run::TryMessage {
                payload: Vec::new(),
                subject,
                headers,
                delivered,
            };
            let input = match (message, messages, tick, request) {
                (Some(file), ..) => Ok(Input::Message(file)),
                (None, Some(dir), ..) => Ok(Input::Folder(dir)),
                (None, None, true, _) => Ok(Input::Tick),
                (None, None, false, Some(body)) => Ok(Input::Request { body, method, path }),
                (None, None, false, None) => Err(anyhow::anyhow!(
                    "say what to call it with: --message FILE, --messages DIR, --tick or --request FILE"
                )),
            };
            match input {
                Ok(input) => try_component(&component, input, template, config, publish).await,
                Err(e) => Err(e),
            }
        }
        Command::Deploy {
            component,
            manifest,
            name,
            tenant,
            nats,
        } => {
            let (manifest, name, tenant) =
                (manifest.as_deref(), name.as_deref(), tenant.as_deref());
            jetwasm::fleet::deploy(&component, manifest, name, tenant, &nats).await
        }
        Command::Handlers { nats } => jetwasm::fleet::handlers(&nats).await,
        Command::Rollback { name, to, nats } => jetwasm::fleet::rollback(&name, to, &nats).await,
        Command::Undeploy { name, nats } => jetwasm::fleet::undeploy(&name, &nats).await,
        Command::New {
            kind,
            name,
            lang,
            dir,
        } => new(kind, &name, lang, &dir),
        Command::Dev {
            project,
            name,
            handlers_dir,
            url,
        } => match jetwasm::dev::Dev::new(&project, name, handlers_dir, url) {
            Ok(dev) => dev.run().await,
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn up(
    mut options: RunOptions,
    data: &std::path::Path,
    port: u16,
    nats_server: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let configured = jetwasm::config::Config::load(&options.config, options.overrides.clone())?
        .nats
        .url;
    if options.nats.server.is_some() || configured.is_some() {
        return run(options).await;
    }
    let bin = jetwasm::up::find_nats_server(nats_server)?;
    let server = jetwasm::up::LocalServer::start(&bin, data, port).await?;
    options.nats.server = Some(server.url.clone());
    let result = run(options).await;
    server.stop().await?;
    result
}

/// Writes a project and says how to build, check and run it.
fn new(
    kind: jetwasm::scaffold::Kind,
    name: &str,
    lang: jetwasm::scaffold::Lang,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    let root = jetwasm::scaffold::create(kind, name, lang, dir)?;
    let component = std::path::absolute(root.join(format!("{name}.wasm")))?;
    println!("Created {} ({lang}). Next:", root.display());
    println!("  cd {} && ./build.sh", root.display());
    println!("  jetwasm check {name}.wasm");
    println!("Run it on a local host, rebuilt and swapped in at every save:");
    println!("  jetwasm up --config jetwasm.toml --handlers-dir handlers.d   # in one terminal; a config with the ORDERS stream, e.g. deploy/jetwasm.dev.toml");
    println!(
        "  jetwasm dev {} --handlers-dir handlers.d   # in another ({name}.toml is its manifest)",
        root.display()
    );
    println!("Or add it to the host's config:");
    println!(
        "{}",
        jetwasm::scaffold::config_snippet(kind, name, &component)
    );
    Ok(())
}

/// Prints a running host's status as a table.
async fn status(url: &str) -> anyhow::Result<()> {
    let components = jetwasm::status::fetch(url).await?;
    print!("{}", jetwasm::status::table(&components));
    Ok(())
}

/// What `jetwasm try` calls the component with.
enum Input {
    Message(PathBuf),
    Folder(PathBuf),
    Tick,
    Request {
        body: PathBuf,
        method: String,
        path: String,
    },
}

/// Calls `component` as `input` says and prints what happened; fails for a term, a tick's
/// error or a failed call.
async fn try_component(
    component: &std::path::Path,
    input: Input,
    template: jetwasm::try_run::TryMessage,
    config: Vec<(String, String)>,
    publish: Vec<String>,
) -> anyhow::Result<()> {
    use jetwasm::try_run::{folder, table, Trier, TryMessage};
    let trier = Trier::new(component, config, publish).await?;
    let tried = match input {
        Input::Message(file) => {
            let payload = std::fs::read(&file)
                .with_context(|| format!("reading the message {}", file.display()))?;
            trier
                .message(&TryMessage {
                    payload,
                    ..template
                })
                .await?
        }
        Input::Tick => trier.tick().await?,
        Input::Request { body, method, path } => {
            let body = std::fs::read(&body)
                .with_context(|| format!("reading the request body {}", body.display()))?;
            (trier.request(&method, &path, &template.headers, body)).await?
        }
        Input::Folder(dir) => {
            let results = folder(&trier, &dir, &template).await?;
            print!("{}", table(&results));
            let failed = results.iter().filter(|(_, t)| !t.succeeded).count();
            anyhow::ensure!(
                failed == 0,
                "{failed} of {} messages did not succeed",
                results.len()
            );
            return Ok(());
        }
    };
    println!("{}", tried.report());
    anyhow::ensure!(tried.succeeded, "the call did not succeed");
    Ok(())
}

/// `NAME=VALUE`.
fn key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?} is not NAME=VALUE"))
}

/// Prints the line `result` holds.
fn print(result: anyhow::Result<String>) -> anyhow::Result<()> {
    println!("{}", result?);
    Ok(())
}

/// Says which worlds the component fits; fails (listing why for each) when it fits none.
async fn check(component: &std::path::Path) -> anyhow::Result<()> {
    println!("{}", jetwasm::check::component(component).await?);
    Ok(())
}
