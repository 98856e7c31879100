//! A test setup on a real server: the test streams applied, host configs written for a
//! component, and helpers to read what reached the streams.

use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream::Stream};
use futures::TryStreamExt;
use tempfile::TempDir;

use crate::{handler_wasm, Host, NatsServer};

/// The consumer settings most tests use: quick backoff so retries finish fast.
pub const QUICK_RETRIES: &str = r#"max_deliver = 3
backoff = ["200ms", "400ms"]"#;

/// Streams for the tests: ORDERS with consumer `proc` (plus `consumer` lines), DEADLETTER,
/// and PAYMENTS (a stream no handler may publish to).
pub fn streams(consumer: &str) -> String {
    format!(
        r#"
[[stream]]
name = "ORDERS"
subjects = ["orders.*"]
storage = "memory"

[[stream.consumer]]
durable = "proc"
filter_subjects = ["orders.created"]
{consumer}

[[stream]]
name = "DEADLETTER"
subjects = ["deadletter.>"]
storage = "memory"

[[stream]]
name = "PAYMENTS"
subjects = ["payments.*"]
storage = "memory"

[[stream]]
name = "TICKS"
subjects = ["ticks.>"]
storage = "memory"

# Publishers may publish here (the host checks a stream captures every subject in a publish
# list at start); tests of the `no-stream` error delete it once their host runs.
[[stream]]
name = "NOSTREAM"
subjects = ["nostream.>"]
storage = "memory"
"#
    )
}

/// A host config applying the streams spec at `spec` and running `component` as handler `h`
/// on ORDERS/proc. `handler` adds keys to the handler table (limits, config); `runtime` adds
/// keys to `[runtime]`.
pub fn host_config(spec: &Path, component: &Path, handler: &str, runtime: &str) -> String {
    format!(
        r#"
streams = "{spec}"

[runtime]
http = "{{http}}"
{runtime}

[[handler]]
name = "h"
component = "{component}"
stream = "ORDERS"
consumer = "proc"
publish = ["orders.processed", "orders.audited"]
{handler}
"#,
        spec = spec.display(),
        component = component.display(),
    )
}

/// A running server with the test streams applied, and the folder holding the spec.
pub struct Setup {
    /// The server.
    pub server: NatsServer,
    /// A JetStream context on it.
    pub js: jetstream::Context,
    /// Holds the stream spec.
    pub dir: TempDir,
}

impl Setup {
    /// Starts a server and applies the test streams, with `consumer` lines added to `proc`.
    pub async fn new(consumer: &str) -> Setup {
        let server = NatsServer::start().await.unwrap();
        let js = server.jetstream().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("streams.toml"), streams(consumer)).unwrap();
        let setup = Setup { server, js, dir };
        setup.apply_streams().await;
        setup
    }

    /// Applies the test streams (again), as stream-init would: restores a deleted stream.
    pub async fn apply_streams(&self) {
        let spec_path = self.dir.path().join("streams.toml");
        let spec = stream_init::Spec::load(&spec_path, None).unwrap();
        let plan = stream_init::plan(&self.js, &spec).await.unwrap();
        stream_init::apply(&self.js, &plan).await.unwrap();
    }

    /// A host config running `component` as handler `h` on ORDERS/proc. `handler` adds keys
    /// to the handler table (limits, config); `runtime` adds keys to `[runtime]`.
    pub fn config(&self, component: &Path, handler: &str, runtime: &str) -> String {
        host_config(
            &self.dir.path().join("streams.toml"),
            component,
            handler,
            runtime,
        )
    }

    /// A host config running `component` as a timer publisher `p` (no handlers).
    pub fn publisher_config(&self, component: &Path, publisher: &str) -> String {
        format!(
            r#"
streams = "{streams}"

[runtime]
http = "{{http}}"

[[publisher]]
name = "p"
component = "{component}"
publish = ["orders.created", "ticks.>", "nostream.>"]
{publisher}
"#,
            streams = self.dir.path().join("streams.toml").display(),
            component = component.display(),
        )
    }

    /// Every message in `stream`, oldest first.
    pub async fn messages(&self, stream: &str) -> Vec<jetstream::message::StreamMessage> {
        let mut handle = self.stream(stream).await;
        let last = handle.info().await.unwrap().state.last_sequence;
        let mut all = Vec::new();
        for seq in 1..=last {
            all.push(handle.get_raw_message(seq).await.unwrap());
        }
        all
    }

    /// Starts the host running the built component `component` as handler `h`.
    pub async fn host(&self, component: &str, handler: &str) -> Host {
        let config = self.config(&handler_wasm(component), handler, "");
        Host::start(&self.server.url, &config).await.unwrap()
    }

    /// Changes consumer `proc` on the server, as an operator would by hand.
    pub async fn change_consumer(&self, change: impl FnOnce(&mut jetstream::consumer::Config)) {
        let stream = self.stream("ORDERS").await;
        let consumer = stream
            .get_consumer::<jetstream::consumer::pull::Config>("proc")
            .await
            .unwrap();
        let mut config = consumer.cached_info().config.clone();
        change(&mut config);
        stream.create_consumer(config).await.unwrap();
    }

    /// The stream `name`.
    pub async fn stream(&self, name: &str) -> Stream {
        self.js.get_stream(name).await.unwrap()
    }

    /// The `proc` consumer's current state.
    pub async fn consumer(&self) -> jetstream::consumer::Info {
        self.stream("ORDERS")
            .await
            .consumer_info("proc")
            .await
            .unwrap()
    }

    /// Asserts that each of the `n` messages was delivered once and acked, nothing redelivered.
    pub async fn assert_each_delivered_once(&self, n: u64, host: &Host) {
        let info = self.consumer().await;
        assert_eq!(info.num_redelivered, 0, "{}", tail(&host.log()));
        assert_eq!(info.delivered.consumer_sequence, n, "each delivered once");
        assert_eq!(host.metric(&sample("ack")).unwrap(), n as f64);
    }

    /// Waits until the consumer has nothing pending and nothing unacknowledged.
    pub async fn drained(&self, within: Duration, host: &Host) {
        let deadline = Instant::now() + within;
        loop {
            let info = self.consumer().await;
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not drained after {within:?}: {} pending, {} ack pending\n{}",
                info.num_pending,
                info.num_ack_pending,
                tail(&host.log())
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Messages stored under `subject` in `stream`.
    pub async fn count(&self, stream: &str, subject: &str) -> usize {
        let subjects: Vec<(String, usize)> = self
            .stream(stream)
            .await
            .info_with_subjects(subject)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        subjects.into_iter().map(|(_, n)| n).sum()
    }

    /// Every dead-letter record, oldest first.
    pub async fn dead_letters(&self) -> Vec<jetstream::message::StreamMessage> {
        self.messages("DEADLETTER").await
    }

    /// Waits for `n` dead-letter records.
    pub async fn wait_dead_letters(
        &self,
        n: usize,
        within: Duration,
        host: &Host,
    ) -> Vec<jetstream::message::StreamMessage> {
        let deadline = Instant::now() + within;
        loop {
            let records = self.dead_letters().await;
            if records.len() >= n {
                return records;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} dead letters after {within:?}\n{}",
                records.len(),
                tail(&host.log())
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Publishes payloads to `orders.created`, pipelined, each confirmed.
    pub async fn publish_all(&self, payloads: impl IntoIterator<Item = String>) {
        let mut pending = Vec::new();
        for payload in payloads {
            pending.push(
                self.js
                    .publish("orders.created", payload.into())
                    .await
                    .unwrap(),
            );
            if pending.len() == 500 {
                for ack in pending.drain(..) {
                    ack.await.unwrap();
                }
            }
        }
        for ack in pending {
            ack.await.unwrap();
        }
    }

    /// Publishes orders `0..n` to `orders.created` in the background, one at a time, each
    /// confirmed, with a 20ms pause every 20: a steady stream to change things under.
    pub fn publish_steadily(&self, n: usize) -> tokio::task::JoinHandle<()> {
        let js = self.js.clone();
        tokio::spawn(async move {
            for i in 0..n {
                let ack = js.publish("orders.created", order(i).into()).await;
                ack.unwrap().await.unwrap();
                if i % 20 == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        })
    }
}

/// A valid order, `o-<i>`.
pub fn order(i: usize) -> String {
    format!(
        r#"{{"id":"o-{i}","customer":"c-{}","items":[{{"sku":"A1","qty":1,"price":9.5}}],"total":9.5}}"#,
        i % 97
    )
}

/// The value of header `name` in a stored record; panics when it has none.
pub fn header<'a>(record: &'a jetstream::message::StreamMessage, name: &str) -> &'a str {
    record
        .headers
        .get(name)
        .unwrap_or_else(|| panic!("record has no {name} header"))
        .as_str()
}

/// The last lines of a log, for assertion messages.
pub fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The metric sample counting handler `h`'s messages with `handler_outcome`.
pub fn sample(handler_outcome: &str) -> String {
    format!("jetwasm_messages_total{{handler=\"h\",outcome=\"{handler_outcome}\"}}")
}
