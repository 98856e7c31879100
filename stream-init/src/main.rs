//! `stream-init`: plan or apply a JetStream spec file.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use stream_init::connect::{self, NatsArgs};
use stream_init::Spec;

/// Declare JetStream streams, durable consumers and key-value buckets in a file and make a
/// server match it.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print what would change; change nothing.
    Plan {
        #[command(flatten)]
        target: Target,
        /// Exit 2 (instead of 0) when the server differs from the file.
        #[arg(long)]
        detailed_exitcode: bool,
    },
    /// Make the changes and print what was done.
    Apply {
        #[command(flatten)]
        target: Target,
        /// Also make changes that lower what protects stored messages: fewer replicas, or a
        /// lower max_age / max_msgs / max_bytes, or a bucket's history / ttl / max_bytes (the
        /// server then deletes messages or values)
        #[arg(long)]
        allow_destructive: bool,
    },
}

#[derive(Debug, clap::Args)]
struct Target {
    /// Spec file to read
    #[arg(long, short = 'f', default_value = "deploy/streams.toml")]
    file: PathBuf,
    /// Environment overlay to apply (an [env.NAME] table in the file)
    #[arg(long, env = "JETWASM_ENV")]
    env: Option<String>,
    /// How long to wait for a JetStream that is still starting (a cluster electing its meta
    /// leader), retrying timed-out or temporarily refused requests; all are idempotent
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    wait: Duration,
    #[command(flatten)]
    nats: NatsArgs,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let (target, apply, detailed, allow_destructive) = match cli.command {
        Command::Plan {
            target,
            detailed_exitcode,
        } => (target, false, detailed_exitcode, false),
        Command::Apply {
            target,
            allow_destructive,
        } => (target, true, false, allow_destructive),
    };
    let spec = Spec::load(&target.file, target.env.as_deref())?;
    let url = target.nats.url_or(None);
    let deadline = Instant::now() + target.wait;
    let js = retry(deadline, || connect::jetstream(&target.nats, &url)).await?;
    let plan = retry(deadline, || stream_init::plan(&js, &spec)).await?;
    let source = target.file.display();
    if !apply {
        println!("{plan}");
        let code = if detailed && !plan.is_empty() { 2 } else { 0 };
        return Ok(ExitCode::from(code));
    }
    if plan.is_empty() {
        let (_, _, unchanged) = plan.counts();
        println!(
            "No changes: {} already matches {source} ({unchanged} objects).",
            connect::redact(&url)
        );
        return Ok(ExitCode::SUCCESS);
    }
    plan.check_destructive(allow_destructive)?;
    let mut plan = Some(plan);
    let (plan, lines) = retry(deadline, || {
        // A retry plans again: an apply cut off half way may have made some objects already,
        // and creating them a second time would fail.
        let planned = plan.take();
        async {
            let plan = match planned {
                Some(plan) => plan,
                None => stream_init::plan(&js, &spec).await?,
            };
            plan.check_destructive(allow_destructive)?;
            let lines = stream_init::apply(&js, &plan).await?;
            Ok((plan, lines))
        }
    })
    .await?;
    for line in lines {
        println!("{line}");
    }
    let (create, update, unchanged) = plan.counts();
    println!("Apply complete: {create} created, {update} updated, {unchanged} unchanged.");
    Ok(ExitCode::SUCCESS)
}

/// Runs `attempt` until it succeeds, fails for good, or `deadline` passes. Only transient
/// errors are retried (see [`is_transient`]); planning is read-only, and an apply is retried
/// on a fresh plan.
async fn retry<T, F, Fut>(deadline: Instant, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    loop {
        match attempt().await {
            Err(e) if is_transient(&e) && Instant::now() < deadline => {
                eprintln!("waiting for JetStream ({e:#}); retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            result => return result,
        }
    }
}

/// Errors a starting JetStream gives (a request timing out while the meta leader is elected,
/// "temporarily unavailable", too few peers yet for an R3 stream), as opposed to a wrong spec,
/// refused credentials or a server without JetStream, which fail at once.
fn is_transient(error: &anyhow::Error) -> bool {
    let text = format!("{error:#}").to_ascii_lowercase();
    [
        "timed out",
        "temporarily unavailable",
        "no suitable peers",
        "insufficient resources",
    ]
    .iter()
    .any(|sign| text.contains(sign))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_starting_jetstream_is_waited_for() {
        let transient =
            anyhow::anyhow!("timed out: didn't receive a reply").context("creating stream ORDERS");
        assert!(is_transient(&transient));
        assert!(is_transient(&anyhow::anyhow!(
            "JetStream system temporarily unavailable (10008)"
        )));
        assert!(is_transient(&anyhow::anyhow!(
            "no suitable peers for placement"
        )));
        assert!(!is_transient(&anyhow::anyhow!(
            "cannot connect to NATS at nats://x:1"
        )));
        assert!(!is_transient(&anyhow::anyhow!(
            "JetStream is not available at nats://x:1: no responders"
        )));
    }
}
