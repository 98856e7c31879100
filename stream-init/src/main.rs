//! `stream-init`: plan or apply a JetStream spec file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use stream_init::connect::{self, NatsArgs};
use stream_init::Spec;

/// Declare JetStream streams and durable consumers in a file and make a server match it.
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
    let (target, apply, detailed) = match cli.command {
        Command::Plan {
            target,
            detailed_exitcode,
        } => (target, false, detailed_exitcode),
        Command::Apply { target } => (target, true, false),
    };
    let spec = Spec::load(&target.file, target.env.as_deref())?;
    let url = target.nats.url_or(None);
    let js = connect::jetstream(&target.nats, &url).await?;
    let plan = stream_init::plan(&js, &spec).await?;
    let source = target.file.display();
    if !apply {
        println!("{plan}");
        let code = if detailed && !plan.is_empty() { 2 } else { 0 };
        return Ok(ExitCode::from(code));
    }
    if plan.is_empty() {
        let (_, _, unchanged) = plan.counts();
        println!("No changes: {url} already matches {source} ({unchanged} objects).");
        return Ok(ExitCode::SUCCESS);
    }
    for line in stream_init::apply(&js, &plan).await? {
        println!("{line}");
    }
    let (create, update, unchanged) = plan.counts();
    println!("Apply complete: {create} created, {update} updated, {unchanged} unchanged.");
    Ok(ExitCode::SUCCESS)
}
