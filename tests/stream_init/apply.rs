//! stream-init end to end: the CLI against real nats-server processes (a single server and a
//! 3-node cluster), through plan, apply, idempotence, updates, refusals and bad input.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use async_nats::jetstream::stream::{DiscardPolicy, RetentionPolicy, StorageType};
use harness::{workspace_root, Cluster, NatsServer};

/// Runs `stream-init ARGS --server URL` and returns its output.
pub(crate) async fn stream_init(url: &str, args: &[&str]) -> Output {
    let bin = env!("CARGO_BIN_EXE_stream-init");
    tokio::process::Command::new(bin)
        .args(args)
        .args(["--server", url])
        .env_remove("NATS_URL")
        .env_remove("JETWASM_ENV")
        .output()
        .await
        .unwrap()
}

/// The command's stdout, lossily as text.
pub(crate) fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The command's stderr, lossily as text.
pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the command succeeded and returns its stdout.
pub(crate) fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// Asserts the command failed with a non-zero exit and returns its stderr.
pub(crate) fn fails(out: Output) -> String {
    assert!(
        !out.status.success(),
        "expected failure, got success:\n{}",
        stdout(&out)
    );
    assert_eq!(out.status.code(), Some(1), "stderr:\n{}", stderr(&out));
    stderr(&out)
}

/// The EVENTS stream's configuration as the server has it.
async fn events_config(
    js: &async_nats::jetstream::Context,
) -> async_nats::jetstream::stream::Config {
    let mut stream = js.get_stream("EVENTS").await.unwrap();
    stream.info().await.unwrap().config.clone()
}

/// `deploy/streams.toml`, the reference spec the demo and the deployments apply.
pub(crate) fn reference_spec() -> String {
    workspace_root()
        .join("deploy/streams.toml")
        .display()
        .to_string()
}

/// Writes `text` to `dir/streams.toml` and returns the path.
pub(crate) fn write_spec(dir: &Path, text: &str) -> String {
    let path = dir.join("streams.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

const SMALL: &str = r#"
[[stream]]
name = "EVENTS"
subjects = ["events.*"]
max_age = "24h"

[[stream.consumer]]
durable = "worker"
filter_subjects = ["events.in"]
max_deliver = 5
backoff = ["1s", "5s"]
"#;

#[tokio::test]
async fn plan_shows_creates_and_touches_nothing() {
    let server = NatsServer::start().await.unwrap();
    let spec = reference_spec();
    let out = ok(stream_init(&server.url, &["plan", "--file", &spec, "--env", "dev"]).await);
    assert!(out.contains("+ stream ORDERS: create"), "{out}");
    assert!(
        out.contains("+ consumer ORDERS/orders-processor: create"),
        "{out}"
    );
    assert!(
        out.contains("+ consumer ORDERS/customer-totals: create"),
        "{out}"
    );
    assert!(out.contains("+ stream DEADLETTER: create"), "{out}");
    assert!(out.contains("+ kv customer-totals: create"), "{out}");
    assert!(
        out.contains("Plan: 5 to create, 0 to update, 0 unchanged."),
        "{out}"
    );

    let js = server.jetstream().await.unwrap();
    assert!(
        js.get_stream("ORDERS").await.is_err(),
        "plan must not create anything"
    );
    let detailed = stream_init(
        &server.url,
        &[
            "plan",
            "--file",
            &spec,
            "--env",
            "dev",
            "--detailed-exitcode",
        ],
    )
    .await;
    assert_eq!(
        detailed.status.code(),
        Some(2),
        "pending changes give exit 2 with --detailed-exitcode"
    );
}

#[tokio::test]
async fn apply_creates_the_reference_setup_and_a_second_apply_changes_nothing() {
    let server = NatsServer::start().await.unwrap();
    let spec = reference_spec();
    let out = ok(stream_init(&server.url, &["apply", "--file", &spec, "--env", "dev"]).await);
    assert!(out.contains("created stream ORDERS"), "{out}");
    assert!(
        out.contains("created consumer ORDERS/orders-processor"),
        "{out}"
    );
    assert!(out.contains("created kv customer-totals"), "{out}");
    assert!(
        out.contains("Apply complete: 5 created, 0 updated, 0 unchanged."),
        "{out}"
    );

    let js = server.jetstream().await.unwrap();
    let mut orders = js.get_stream("ORDERS").await.unwrap();
    let config = orders.info().await.unwrap().config.clone();
    assert_eq!(config.subjects, vec!["orders.*".to_owned()]);
    assert_eq!(config.storage, StorageType::File);
    assert_eq!(config.retention, RetentionPolicy::Limits);
    assert_eq!(config.discard, DiscardPolicy::Old);
    assert_eq!(config.num_replicas, 1, "the dev overlay sets replicas 1");
    assert_eq!(config.max_age, Duration::from_secs(24 * 3600));
    assert_eq!(config.max_messages, 1_000_000);
    assert_eq!(config.max_message_size, 1024 * 1024);
    let consumer = orders
        .consumer_info("orders-processor")
        .await
        .unwrap()
        .config;
    assert_eq!(consumer.filter_subject, "orders.created");
    assert_eq!(consumer.max_deliver, 5);
    assert_eq!(
        consumer.ack_wait,
        Duration::from_secs(1),
        "JetStream waits the first backoff step (the dev overlay's 1s)"
    );
    assert_eq!(consumer.backoff.len(), 4);
    assert_eq!(
        consumer.backoff[3],
        Duration::from_secs(8),
        "the dev overlay's backoff"
    );
    let totals = js
        .get_stream("KV_customer-totals")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    assert_eq!(
        totals.num_replicas, 1,
        "the dev overlay sets the bucket's replicas 1"
    );
    assert_eq!(totals.max_messages_per_subject, 1);

    let again = ok(stream_init(&server.url, &["apply", "--file", &spec, "--env", "dev"]).await);
    assert!(again.starts_with("No changes:"), "{again}");
    let plan = stream_init(
        &server.url,
        &[
            "plan",
            "--file",
            &spec,
            "--env",
            "dev",
            "--detailed-exitcode",
        ],
    )
    .await;
    assert_eq!(plan.status.code(), Some(0), "{}", stdout(&plan));
    assert!(
        stdout(&plan).contains("Plan: 0 to create, 0 to update, 5 unchanged."),
        "{}",
        stdout(&plan)
    );
}

#[tokio::test]
async fn update_lists_field_changes_applies_them_and_keeps_unmanaged_fields() {
    let server = NatsServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), SMALL);
    ok(stream_init(&server.url, &["apply", "--file", &spec]).await);

    // Something outside the spec, set by hand: an update must keep it.
    let js = server.jetstream().await.unwrap();
    let mut config = events_config(&js).await;
    config.description = Some("set by hand".into());
    js.update_stream(&config).await.unwrap();

    let changed = SMALL
        .replace("max_age = \"24h\"", "max_age = \"1h\"\nmax_msgs = 500")
        .replace("max_deliver = 5", "max_deliver = 8");
    let spec = write_spec(dir.path(), &changed);
    let plan = ok(stream_init(&server.url, &["plan", "--file", &spec]).await);
    assert!(plan.contains("~ stream EVENTS: update"), "{plan}");
    assert!(plan.contains("max_age           24h → 1h"), "{plan}");
    assert!(plan.contains("max_msgs          unlimited → 500"), "{plan}");
    assert!(plan.contains("max_deliver       5 → 8"), "{plan}");
    assert!(
        plan.contains("Plan: 0 to create, 2 to update, 0 unchanged."),
        "{plan}"
    );
    assert!(
        plan.contains(
            "! destructive: stream EVENTS: a lower max_age makes the server delete older messages"
        ),
        "{plan}"
    );

    // Lower limits delete messages: refused, nothing touched, unless explicitly allowed.
    let refused = fails(stream_init(&server.url, &["apply", "--file", &spec]).await);
    assert!(
        refused.contains("stream EVENTS: a lower max_msgs")
            && refused.contains("--allow-destructive"),
        "{refused}"
    );
    let untouched = events_config(&js).await;
    assert_eq!(untouched.max_age, Duration::from_secs(24 * 3600));

    let out = ok(stream_init(
        &server.url,
        &["apply", "--file", &spec, "--allow-destructive"],
    )
    .await);
    assert!(
        out.contains("updated stream EVENTS: max_age 24h → 1h, max_msgs unlimited → 500"),
        "{out}"
    );
    assert!(
        out.contains("updated consumer EVENTS/worker: max_deliver 5 → 8"),
        "{out}"
    );
    let mut stream = js.get_stream("EVENTS").await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!(config.max_age, Duration::from_secs(3600));
    assert_eq!(config.max_messages, 500);
    assert_eq!(config.description.as_deref(), Some("set by hand"));
    assert_eq!(
        stream
            .consumer_info("worker")
            .await
            .unwrap()
            .config
            .max_deliver,
        8
    );
    assert!(
        ok(stream_init(&server.url, &["apply", "--file", &spec]).await).starts_with("No changes:")
    );
}

#[tokio::test]
async fn changes_jetstream_cannot_make_are_refused_before_anything_is_touched() {
    let server = NatsServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    ok(stream_init(
        &server.url,
        &["apply", "--file", &write_spec(dir.path(), SMALL)],
    )
    .await);

    // An allowed change (max_age) next to a refused one (storage): neither may happen.
    let changed = SMALL.replace(
        "max_age = \"24h\"",
        "max_age = \"1h\"\nstorage = \"memory\"",
    );
    let spec = write_spec(dir.path(), &changed);
    let err = fails(stream_init(&server.url, &["apply", "--file", &spec]).await);
    assert!(
        err.contains("stream EVENTS: storage file → memory"),
        "{err}"
    );
    assert!(err.contains("nothing was touched"), "{err}");
    let err = fails(stream_init(&server.url, &["plan", "--file", &spec]).await);
    assert!(err.contains("stream EVENTS: storage"), "{err}");

    let js = server.jetstream().await.unwrap();
    let config = js
        .get_stream("EVENTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    assert_eq!(config.storage, StorageType::File);
    assert_eq!(
        config.max_age,
        Duration::from_secs(24 * 3600),
        "the allowed change must not be applied either"
    );

    let changed = SMALL.replace(
        "max_deliver = 5",
        "max_deliver = 5\ndeliver_policy = \"new\"",
    );
    let err = fails(
        stream_init(
            &server.url,
            &["apply", "--file", &write_spec(dir.path(), &changed)],
        )
        .await,
    );
    assert!(
        err.contains("consumer EVENTS/worker: deliver_policy all → new"),
        "{err}"
    );
}

#[tokio::test]
async fn bad_input_gives_a_clear_error_and_a_non_zero_exit() {
    let server = NatsServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (SMALL.replace("max_age", "max_agee"), vec!["unknown field `max_agee`", "line 5"]),
        (SMALL.replace("\"24h\"", "\"24 parsecs\""), vec!["max_age", "line 5"]),
        (
            SMALL.replace("[\"events.in\"]", "[\"payments.in\"]"),
            vec!["stream EVENTS, consumer worker: filter subject \"payments.in\" is outside the stream's subjects"],
        ),
        (SMALL.replace("max_deliver = 5", "max_deliver = 2"), vec!["backoff has 2 steps but max_deliver is 2"]),
    ];
    for (text, expected) in cases {
        let spec = write_spec(dir.path(), &text);
        let err = fails(stream_init(&server.url, &["apply", "--file", &spec]).await);
        assert!(err.contains(&spec), "the error names the file: {err}");
        for needle in expected {
            assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
        }
    }
    let js = server.jetstream().await.unwrap();
    assert!(
        js.get_stream("EVENTS").await.is_err(),
        "bad specs must not create anything"
    );

    let err = fails(
        stream_init(
            &server.url,
            &["plan", "--file", &reference_spec(), "--env", "staging"],
        )
        .await,
    );
    assert!(
        err.contains("no environment `staging` (declared: dev)"),
        "{err}"
    );
    let err = fails(
        stream_init(
            &server.url,
            &["plan", "--file", "/nonexistent/streams.toml"],
        )
        .await,
    );
    assert!(
        err.contains("/nonexistent/streams.toml") && err.contains("cannot read file"),
        "{err}"
    );
}

#[tokio::test]
async fn an_unreachable_server_fails_fast_naming_the_url() {
    let url = format!("nats://127.0.0.1:{}", harness::free_port());
    let started = Instant::now();
    let err =
        fails(stream_init(&url, &["plan", "--file", &reference_spec(), "--env", "dev"]).await);
    assert!(
        err.contains(&format!("cannot connect to NATS at {url}")),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_cluster_takes_the_reference_setup_with_three_replicas() {
    let cluster = Cluster::start().await.unwrap();
    let url = cluster.url();
    let spec = reference_spec();
    let out = ok(stream_init(&url, &["apply", "--file", &spec]).await);
    assert!(out.contains("created stream ORDERS"), "{out}");

    let js = cluster.jetstream().await.unwrap();
    let mut orders = js.get_stream("ORDERS").await.unwrap();
    let info = orders.info().await.unwrap().clone();
    assert_eq!(info.config.num_replicas, 3);
    let placement = info.cluster.expect("clustered stream info");
    assert!(placement.leader.is_some(), "the stream has a leader");
    assert_eq!(
        placement.replicas.len(),
        2,
        "two followers beside the leader: {:?}",
        placement.replicas
    );
    let totals = js.get_key_value("customer-totals").await.unwrap();
    assert_eq!(totals.status().await.unwrap().info.config.num_replicas, 3);
    assert!(ok(stream_init(&url, &["apply", "--file", &spec]).await).starts_with("No changes:"));

    // Messages are stored on a replicated stream.
    let ack = js
        .publish("orders.created", "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack.stream, "ORDERS");
}

#[tokio::test]
async fn a_cluster_scales_a_stream_from_one_replica_to_three() {
    let cluster = Cluster::start().await.unwrap();
    let url = cluster.url();
    let spec = reference_spec();
    ok(stream_init(&url, &["apply", "--file", &spec, "--env", "dev"]).await);
    let plan = ok(stream_init(&url, &["plan", "--file", &spec]).await);
    assert!(
        plan.contains("~ stream ORDERS: update") && plan.contains("replicas          1 → 3"),
        "{plan}"
    );
    let out = ok(stream_init(&url, &["apply", "--file", &spec]).await);
    assert!(
        out.contains("updated stream ORDERS: replicas 1 → 3"),
        "{out}"
    );
    assert!(
        out.contains("updated kv customer-totals: replicas 1 → 3"),
        "{out}"
    );

    let js = cluster.jetstream().await.unwrap();
    let info = js
        .get_stream("ORDERS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.config.num_replicas, 3);
    assert!(ok(stream_init(&url, &["apply", "--file", &spec]).await).starts_with("No changes:"));
}
