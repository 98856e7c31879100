//! `allow_atomic` end to end: a stream declared with atomic batch publishing gets it on the
//! server, plans as unchanged afterwards, and turning it off (and on again) is planned and
//! applied in place: nats-server allows both on an existing stream, and then refuses (or
//! accepts again) atomic batches.

use async_nats::header::{NATS_BATCH_COMMIT, NATS_BATCH_ID, NATS_BATCH_SEQUENCE};
use async_nats::HeaderMap;
use harness::NatsServer;

use crate::apply::{ok, stdout, stream_init, write_spec};

const ATOMIC: &str = r#"
[[stream]]
name = "LEDGER"
subjects = ["ledger.*"]
allow_atomic = true
"#;

/// The LEDGER stream's `allow_atomic` as the server has it.
async fn allow_atomic(js: &async_nats::jetstream::Context) -> bool {
    let mut stream = js.get_stream("LEDGER").await.unwrap();
    stream.info().await.unwrap().config.allow_atomic_publish
}

/// Publishes a one-message atomic batch (sequence 1, committed) and waits for its ack.
async fn publish_atomic(js: &async_nats::jetstream::Context) -> Result<u64, String> {
    let mut headers = HeaderMap::new();
    headers.insert(NATS_BATCH_ID, "batch-1");
    headers.insert(NATS_BATCH_SEQUENCE, "1");
    headers.insert(NATS_BATCH_COMMIT, "1");
    let ack = js
        .publish_with_headers("ledger.entry", headers, "debit".into())
        .await
        .map_err(|e| e.to_string())?;
    ack.await.map(|a| a.sequence).map_err(|e| e.to_string())
}

#[tokio::test]
async fn allow_atomic_is_applied_then_unchanged_and_turned_off_in_place() {
    let server = NatsServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), ATOMIC);

    let plan = ok(stream_init(&server.url, &["plan", "--file", &spec]).await);
    assert!(plan.contains("+ stream LEDGER: create"), "{plan}");
    assert!(plan.contains("      allow_atomic      true\n"), "{plan}");
    let out = ok(stream_init(&server.url, &["apply", "--file", &spec]).await);
    assert!(out.contains("created stream LEDGER"), "{out}");

    let js = server.jetstream().await.unwrap();
    assert!(allow_atomic(&js).await, "the server has allow_atomic");
    assert_eq!(
        publish_atomic(&js).await,
        Ok(1),
        "an atomic batch is accepted"
    );

    let again = stream_init(
        &server.url,
        &["plan", "--file", &spec, "--detailed-exitcode"],
    )
    .await;
    assert_eq!(again.status.code(), Some(0), "{}", stdout(&again));
    assert!(
        stdout(&again).contains("  stream LEDGER: no changes"),
        "{}",
        stdout(&again)
    );

    // Turning it off is an ordinary in-place update.
    let off = write_spec(dir.path(), &ATOMIC.replace("true", "false"));
    let plan = ok(stream_init(&server.url, &["plan", "--file", &off]).await);
    assert!(plan.contains("~ stream LEDGER: update"), "{plan}");
    assert!(plan.contains("allow_atomic      true → false"), "{plan}");
    assert!(!plan.contains("destructive"), "{plan}");
    let out = ok(stream_init(&server.url, &["apply", "--file", &off]).await);
    assert!(
        out.contains("updated stream LEDGER: allow_atomic true → false"),
        "{out}"
    );
    assert!(
        !allow_atomic(&js).await,
        "the server turned allow_atomic off"
    );
    let refused = publish_atomic(&js).await.unwrap_err();
    assert!(
        refused.contains("atomic publish is disabled"),
        "an atomic batch is refused once it is off: {refused}"
    );

    // And back on, in place too (write_spec rewrites the same file).
    let spec = write_spec(dir.path(), ATOMIC);
    let plan = ok(stream_init(&server.url, &["plan", "--file", &spec]).await);
    assert!(plan.contains("allow_atomic      false → true"), "{plan}");
    ok(stream_init(&server.url, &["apply", "--file", &spec]).await);
    assert!(allow_atomic(&js).await);
    assert!(
        publish_atomic(&js).await.is_ok(),
        "atomic batches work again"
    );
}

#[tokio::test]
async fn a_stream_without_allow_atomic_does_not_list_it_on_create() {
    let server = NatsServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), &ATOMIC.replace("allow_atomic = true\n", ""));
    let plan = ok(stream_init(&server.url, &["plan", "--file", &spec]).await);
    assert!(plan.contains("+ stream LEDGER: create"), "{plan}");
    assert!(!plan.contains("allow_atomic"), "{plan}");
    ok(stream_init(&server.url, &["apply", "--file", &spec]).await);
    let js = server.jetstream().await.unwrap();
    assert!(!allow_atomic(&js).await);
    let refused = publish_atomic(&js).await.unwrap_err();
    assert!(refused.contains("atomic publish is disabled"), "{refused}");
}
