//! `jetwasm dead-letters list / show / redrive`: reading the records the host writes (see the
//! `dead_letter` module) and putting their messages back where they came from, against a live
//! fleet without stopping it.
//!
//! A redrive republishes each record's original payload and headers to its original subject
//! (or `--to`) with the message id `redrive:<dead-letter stream>:<seq>`, waits for the stream
//! to store it, then deletes the record. Running a redrive twice republishes each message once:
//! a redriven record is gone, and one whose deletion failed is republished under the same id,
//! which the stream drops as a duplicate within its duplicate window.

use std::time::Duration;

use anyhow::{bail, Context as _};
use async_nats::header::{HeaderMap, HeaderName, HeaderValue, NATS_MESSAGE_ID};
use async_nats::jetstream::{self, consumer, stream};
use base64::Engine as _;
use futures::StreamExt as _;
use std::fmt::Write as _;
use std::str::FromStr as _;

use stream_init::connect::NatsArgs;

use crate::dead_letter::headers;

/// Which records a command is about.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// The dead-letter stream (`None`: the one capturing `<prefix>.>`).
    pub dead_letters: Option<String>,
    /// The dead-letter subject prefix (`[runtime] dead_letter`).
    pub prefix: String,
    /// Records of messages from this stream only.
    pub stream: Option<String>,
    /// Records of messages delivered by this consumer only.
    pub consumer: Option<String>,
    /// Records written this recently only.
    pub since: Option<Duration>,
    /// Records whose reason contains this text (case-insensitive).
    pub reason: Option<String>,
}

/// One record, read back.
struct Record {
    seq: u64,
    time: time::OffsetDateTime,
    headers: HeaderMap,
    payload: bytes::Bytes,
}

impl Record {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.as_str())
    }

    fn reason(&self) -> &str {
        self.header(headers::REASON).unwrap_or("")
    }
}

/// The dead-letter stream `filter` names, or the one capturing its prefix.
async fn dead_letter_stream(
    js: &jetstream::Context,
    filter: &Filter,
) -> anyhow::Result<stream::Stream> {
    let name = match &filter.dead_letters {
        Some(name) => name.clone(),
        None => {
            let subject = format!("{}.x.y", filter.prefix);
            js.stream_by_subject(subject).await.with_context(|| {
                format!(
                    "no stream captures {}.> (pass --dead-letters STREAM, or --prefix)",
                    filter.prefix
                )
            })?
        }
    };
    js.get_stream(&name)
        .await
        .with_context(|| format!("dead-letter stream {name}"))
}

/// Every record `filter` selects, oldest first, read through an ordered consumer.
async fn records(stream: &stream::Stream, filter: &Filter) -> anyhow::Result<Vec<Record>> {
    let token = |t: &Option<String>| t.clone().unwrap_or_else(|| "*".to_owned());
    let subject = format!(
        "{}.{}.{}",
        filter.prefix,
        token(&filter.stream),
        token(&filter.consumer)
    );
    let deliver_policy = match filter.since {
        Some(since) => consumer::DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::now_utc() - since,
        },
        None => consumer::DeliverPolicy::All,
    };
    let ordered = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject,
            deliver_policy,
            ..Default::default()
        })
        .await
        .context("reading the dead-letter stream")?;
    let mut out = Vec::new();
    if ordered.cached_info().num_pending == 0 {
        return Ok(out);
    }
    let mut messages = ordered.messages().await?;
    let wanted = filter.reason.as_ref().map(|r| r.to_lowercase());
    while let Some(message) = messages.next().await {
        let message = message?;
        let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        let (seq, time, pending) = (info.stream_sequence, info.published, info.pending);
        let record = Record {
            seq,
            time,
            headers: message.headers.clone().unwrap_or_default(),
            payload: message.payload.clone(),
        };
        let fits = (wanted.as_ref()).is_none_or(|w| record.reason().to_lowercase().contains(w));
        if fits {
            out.push(record);
        }
        if pending == 0 {
            break;
        }
    }
    Ok(out)
}

/// `jetwasm dead-letters list`: a line per record.
pub async fn list(js: &jetstream::Context, filter: &Filter) -> anyhow::Result<String> {
    let stream = dead_letter_stream(js, filter).await?;
    let records = records(&stream, filter).await?;
    let now = time::OffsetDateTime::now_utc();
    let mut out = format!(
        "{:>6}  {:<24} {:<22} {:<16} {:>8}  REASON\n",
        "SEQ", "SUBJECT", "FROM", "HANDLER", "AGE"
    );
    for r in &records {
        let from = match (r.header(headers::STREAM), r.header(headers::SEQUENCE)) {
            (Some(stream), Some(seq)) => format!("{stream}:{seq}"),
            _ => "-".to_owned(),
        };
        let age = humantime::format_duration(Duration::from_secs(
            (now - r.time).whole_seconds().max(0) as u64,
        ));
        let reason: String = r.reason().chars().take(80).collect();
        let _ = writeln!(
            out,
            "{:>6}  {:<24} {:<22} {:<16} {:>8}  {}",
            r.seq,
            r.header(headers::SUBJECT)
                .unwrap_or("(not a jetwasm record)"),
            from,
            r.header(headers::HANDLER).unwrap_or("-"),
            age.to_string(),
            reason
        );
    }
    let _ = write!(
        out,
        "{} record(s) in {}",
        records.len(),
        stream.cached_info().config.name
    );
    Ok(out)
}

/// `jetwasm dead-letters show SEQ`: a record's headers and payload.
pub async fn show(js: &jetstream::Context, filter: &Filter, seq: u64) -> anyhow::Result<String> {
    let stream = dead_letter_stream(js, filter).await?;
    let name = stream.cached_info().config.name.clone();
    let message = stream
        .get_raw_message(seq)
        .await
        .with_context(|| format!("{name} has no record {seq}"))?;
    let mut out = format!(
        "{name} record {seq}, subject {}, written {}\n",
        message.subject, message.time
    );
    for (header, values) in message.headers.iter() {
        for value in values {
            let _ = writeln!(out, "{header}: {}", value.as_str());
        }
    }
    out.push('\n');
    match std::str::from_utf8(&message.payload) {
        Ok(text) => out.push_str(text),
        Err(_) => {
            let _ = write!(
                out,
                "({} bytes, not UTF-8; base64:)\n{}",
                message.payload.len(),
                base64::engine::general_purpose::STANDARD.encode(&message.payload)
            );
        }
    }
    Ok(out)
}

/// What a redrive did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Redriven {
    /// Records whose message was stored again (and the record deleted).
    pub done: usize,
    /// Records left alone, each with why.
    pub failed: Vec<String>,
}

/// `jetwasm dead-letters redrive`: republishes what `filter` selects (to `to`, else each
/// record's original subject) and deletes each record once its message is stored; with
/// `dry_run`, only says what it would do. `progress` is called after each record.
pub async fn redrive(
    js: &jetstream::Context,
    filter: &Filter,
    to: Option<&str>,
    dry_run: bool,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<Redriven> {
    let stream = dead_letter_stream(js, filter).await?;
    let name = stream.cached_info().config.name.clone();
    let mut outcome = Redriven::default();
    for record in records(&stream, filter).await? {
        match redrive_one(js, &stream, &name, &record, to, dry_run).await {
            Ok(line) => {
                outcome.done += 1;
                progress(&line);
            }
            Err(e) => {
                let line = format!("{name} record {}: {e:#}; left alone", record.seq);
                progress(&line);
                outcome.failed.push(line);
            }
        }
    }
    Ok(outcome)
}

async fn redrive_one(
    js: &jetstream::Context,
    stream: &stream::Stream,
    name: &str,
    record: &Record,
    to: Option<&str>,
    dry_run: bool,
) -> anyhow::Result<String> {
    let Some(original) = record.header(headers::SUBJECT) else {
        bail!(
            "not a jetwasm dead-letter record (no {} header)",
            headers::SUBJECT
        );
    };
    if record.header(headers::ORIGINAL_HEADERS).is_some() {
        bail!(
            "the original's headers could not be read as headers (they are in {}, base64): \
             republish it by hand",
            headers::ORIGINAL_HEADERS
        );
    }
    let payload = match record.header(headers::TRUNCATED) {
        None => record.payload.clone(),
        // The record holds the start of the payload only: the original may still be stored.
        Some(size) => {
            let (from, seq) = (
                record.header(headers::STREAM),
                record.header(headers::SEQUENCE),
            );
            let (Some(from), Some(seq)) = (from, seq.and_then(|s| s.parse::<u64>().ok())) else {
                bail!("the record holds only the start of the payload ({size} bytes), and names no original");
            };
            let stored = js.get_stream(from).await?.get_raw_message(seq).await;
            stored
                .with_context(|| format!("the record holds only the start of the payload ({size} bytes), and {from}:{seq} is gone"))?
                .payload
        }
    };
    let subject = to.unwrap_or(original);
    let id = format!("redrive:{name}:{}", record.seq);
    if dry_run {
        return Ok(format!(
            "would republish {name} record {} to {subject} as {id}",
            record.seq
        ));
    }
    let mut map = HeaderMap::new();
    for (header, values) in record.headers.iter() {
        let key = header.to_string();
        let lower = key.to_ascii_lowercase();
        if lower.starts_with("jetwasm-") || lower.starts_with("nats-") {
            continue;
        }
        for value in values {
            map.append(HeaderName::from_str(&key)?, value.clone());
        }
    }
    map.insert(NATS_MESSAGE_ID, HeaderValue::from(id.as_str()));
    map.insert(
        "Jetwasm-Redriven-From",
        HeaderValue::from(format!("{name}:{}", record.seq).as_str()),
    );
    let ack = js
        .publish_with_headers(subject.to_owned(), map, payload)
        .await?
        .await
        .with_context(|| format!("republishing to {subject}"))?;
    stream.delete_message(record.seq).await.with_context(|| {
        format!(
            "republished as {}:{}, but deleting the record",
            ack.stream, ack.sequence
        )
    })?;
    let again = if ack.duplicate {
        " (already there: a redrive ran before)"
    } else {
        ""
    };
    Ok(format!(
        "{name} record {} → {subject} ({}:{}){again}",
        record.seq, ack.stream, ack.sequence
    ))
}

/// `jetwasm dead-letters ...`.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// A line per record: sequence, original subject, stream and sequence, handler, age, reason.
    List {
        /// Which records.
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// One record's headers and payload.
    Show {
        /// The record's sequence in the dead-letter stream
        seq: u64,
        /// Which records.
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Republish each selected record's payload and headers to its original subject (or --to)
    /// with message id redrive:STREAM:SEQ (the record's dead-letter stream and sequence),
    /// then delete the record; a second run republishes nothing twice.
    Redrive {
        /// Republish to this subject instead of each record's original one
        #[arg(long)]
        to: Option<String>,
        /// Only say what would be republished
        #[arg(long)]
        dry_run: bool,
        /// Which records.
        #[command(flatten)]
        filter: FilterArgs,
    },
}

/// Which dead-letter records a command is about.
#[derive(Debug, clap::Args)]
pub struct FilterArgs {
    /// Records of messages from this stream
    #[arg(long)]
    stream: Option<String>,
    /// Records of messages delivered by this consumer
    #[arg(long)]
    consumer: Option<String>,
    /// Records written within this long (e.g. 1h, 30m)
    #[arg(long, value_parser = humantime::parse_duration)]
    since: Option<Duration>,
    /// Records whose reason contains this text (case-insensitive)
    #[arg(long)]
    reason: Option<String>,
    /// The dead-letter stream [default: the stream capturing PREFIX.>]
    #[arg(long)]
    dead_letters: Option<String>,
    /// The dead-letter subject prefix (`[runtime] dead_letter`)
    #[arg(long, default_value = "deadletter")]
    prefix: String,
    #[command(flatten)]
    nats: NatsArgs,
}

impl FilterArgs {
    fn split(self) -> (Filter, NatsArgs) {
        let filter = Filter {
            dead_letters: self.dead_letters,
            prefix: self.prefix,
            stream: self.stream,
            consumer: self.consumer,
            since: self.since,
            reason: self.reason,
        };
        (filter, self.nats)
    }
}

/// Runs a `jetwasm dead-letters` command, printing what it finds or does.
pub async fn run(action: Action) -> anyhow::Result<()> {
    let connect = |nats: NatsArgs| async move {
        stream_init::connect::jetstream(&nats, &nats.url_or(None)).await
    };
    match action {
        Action::List { filter } => {
            let (filter, nats) = filter.split();
            println!("{}", list(&connect(nats).await?, &filter).await?);
        }
        Action::Show { seq, filter } => {
            let (filter, nats) = filter.split();
            println!("{}", show(&connect(nats).await?, &filter, seq).await?);
        }
        Action::Redrive {
            to,
            dry_run,
            filter,
        } => {
            let (filter, nats) = filter.split();
            let js = connect(nats).await?;
            let bar = indicatif::ProgressBar::new_spinner().with_style(
                indicatif::ProgressStyle::with_template("{spinner} {pos} records, {per_sec} {msg}")
                    .expect("a valid template"),
            );
            let outcome = redrive(&js, &filter, to.as_deref(), dry_run, |line| {
                bar.inc(1);
                bar.suspend(|| println!("{line}"));
            })
            .await?;
            bar.finish_and_clear();
            let verb = if dry_run { "would redrive" } else { "redriven" };
            println!(
                "{verb} {}, left alone {}",
                outcome.done,
                outcome.failed.len()
            );
            if !outcome.failed.is_empty() {
                anyhow::bail!("{} record(s) left alone (see above)", outcome.failed.len());
            }
        }
    }
    Ok(())
}
