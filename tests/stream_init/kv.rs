//! Key-value buckets (`[[kv]]`) end to end: the CLI against a real nats-server, through
//! create, idempotence, updates, refusals, and the bucket in use through async-nats.

use std::time::Duration;

use async_nats::jetstream::kv;
use async_nats::jetstream::stream::{DiscardPolicy, StorageType};
use harness::NatsServer;

use crate::apply::{fails, ok, stdout, stream_init, write_spec};

const CARTS: &str = r#"
[[kv]]
name = "carts"
ttl = "1h"
max_value_size = "1KiB"
"#;

/// The configuration of bucket `bucket`'s stream as the server has it.
async fn bucket_config(
    js: &async_nats::jetstream::Context,
    bucket: &str,
) -> async_nats::jetstream::stream::Config {
    let mut stream = js.get_stream(format!("KV_{bucket}")).await.unwrap();
    stream.info().await.unwrap().config.clone()
}

#[tokio::test]
async fn a_bucket_is_created_works_with_async_nats_and_a_second_plan_is_empty() {
    let server = NatsServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), CARTS);

    let plan = ok(stream_init(&server.url, &["plan", "--file", &spec]).await);
    assert!(plan.contains("+ kv carts: create"), "{plan}");
    assert!(plan.contains("history           1"), "{plan}");
    assert!(plan.contains("ttl               1h"), "{plan}");
    assert!(
        !plan.contains("KV_carts"),
        "users see their own names: {plan}"
    );
    let out = ok(stream_init(&server.url, &["apply", "--file", &spec]).await);
    assert!(out.contains("created kv carts"), "{out}");
    assert!(
        out.contains("Apply complete: 1 created, 0 updated, 0 unchanged."),
        "{out}"
    );

    let js = server.jetstream().await.unwrap();
    let config = bucket_config(&js, "carts").await;
    assert_eq!(config.subjects, vec!["$KV.carts.>".to_owned()]);
    assert_eq!(config.max_messages_per_subject, 1);
    assert_eq!(config.max_age, Duration::from_secs(3600));
    assert_eq!(config.max_message_size, 1024);
    assert_eq!(config.discard, DiscardPolicy::New);
    assert!(config.allow_rollup && config.deny_delete && config.allow_direct);
    assert_eq!(
        config.duplicate_window,
        Duration::from_secs(120),
        "the server's default"
    );

    let carts = js.get_key_value("carts").await.unwrap();
    carts.put("c-1", "3 items".into()).await.unwrap();
    assert_eq!(
        carts.get("c-1").await.unwrap().as_deref(),
        Some(&b"3 items"[..])
    );
    assert!(
        carts.put("c-2", vec![0u8; 2048].into()).await.is_err(),
        "max_value_size is enforced"
    );

    let again = stream_init(
        &server.url,
        &["plan", "--file", &spec, "--detailed-exitcode"],
    )
    .await;
    assert_eq!(again.status.code(), Some(0), "{}", stdout(&again));
    assert!(
        stdout(&again).contains("  kv carts: no changes"),
        "{}",
        stdout(&again)
    );
    assert!(
        ok(stream_init(&server.url, &["apply", "--file", &spec]).await).starts_with("No changes:")
    );
}

#[tokio::test]
async fn a_bucket_made_by_async_nats_plans_as_the_same_declaration() {
    let server = NatsServer::start().await.unwrap();
    let js = server.jetstream().await.unwrap();
    js.create_key_value(kv::Config {
        bucket: "carts".into(),
        history: 5,
        max_age: Duration::from_secs(3600),
        max_value_size: 1024,
        ..Default::default()
    })
    .await
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), &CARTS.replace("ttl", "history = 5\nttl"));
    let plan = ok(stream_init(&server.url, &["plan", "--file", &spec]).await);
    assert!(plan.contains("  kv carts: no changes"), "{plan}");
    assert!(
        plan.contains("Plan: 0 to create, 0 to update, 1 unchanged."),
        "{plan}"
    );
}

#[tokio::test]
async fn a_changed_history_is_planned_as_an_update_and_applied() {
    let server = NatsServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    ok(stream_init(
        &server.url,
        &["apply", "--file", &write_spec(dir.path(), CARTS)],
    )
    .await);
    let js = server.jetstream().await.unwrap();
    let mut config = bucket_config(&js, "carts").await;
    config.compression = Some(async_nats::jetstream::stream::Compression::S2);
    js.update_stream(&config).await.unwrap();

    let spec = write_spec(dir.path(), &CARTS.replace("ttl", "history = 5\nttl"));
    let plan = ok(stream_init(&server.url, &["plan", "--file", &spec]).await);
    assert!(plan.contains("~ kv carts: update"), "{plan}");
    assert!(plan.contains("history           1 → 5"), "{plan}");
    assert!(
        !plan.contains("destructive"),
        "more history keeps more: {plan}"
    );
    let out = ok(stream_init(&server.url, &["apply", "--file", &spec]).await);
    assert!(out.contains("updated kv carts: history 1 → 5"), "{out}");

    let config = bucket_config(&js, "carts").await;
    assert_eq!(config.max_messages_per_subject, 5);
    assert_eq!(
        config.compression,
        Some(async_nats::jetstream::stream::Compression::S2),
        "fields the spec does not manage are kept"
    );
    let carts = js.get_key_value("carts").await.unwrap();
    let first = carts.put("c-1", "1 item".into()).await.unwrap();
    carts.put("c-1", "2 items".into()).await.unwrap();
    let kept = carts.entry_for_revision("c-1", first).await.unwrap();
    assert_eq!(
        kept.map(|e| e.value),
        Some("1 item".into()),
        "an older value is kept"
    );
    assert!(
        ok(stream_init(&server.url, &["apply", "--file", &spec]).await).starts_with("No changes:")
    );

    // Back to one value per key deletes older values: only when allowed.
    let spec = write_spec(dir.path(), CARTS);
    let refused = fails(stream_init(&server.url, &["apply", "--file", &spec]).await);
    assert!(
        refused.contains("kv carts: a lower history makes the server delete older values")
            && refused.contains("--allow-destructive"),
        "{refused}"
    );
    assert_eq!(
        bucket_config(&js, "carts").await.max_messages_per_subject,
        5
    );
    let out = ok(stream_init(
        &server.url,
        &["apply", "--file", &spec, "--allow-destructive"],
    )
    .await);
    assert!(out.contains("updated kv carts: history 5 → 1"), "{out}");
}

#[tokio::test]
async fn a_storage_change_is_refused_naming_the_bucket_and_field() {
    let server = NatsServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    ok(stream_init(
        &server.url,
        &["apply", "--file", &write_spec(dir.path(), CARTS)],
    )
    .await);

    // An allowed change (history) next to a refused one (storage): neither may happen.
    let changed = CARTS.replace("ttl", "history = 3\nstorage = \"memory\"\nttl");
    let spec = write_spec(dir.path(), &changed);
    for command in ["plan", "apply"] {
        let err = fails(stream_init(&server.url, &[command, "--file", &spec]).await);
        assert!(err.contains("kv carts: storage file → memory"), "{err}");
        assert!(err.contains("nothing was touched"), "{err}");
    }
    let js = server.jetstream().await.unwrap();
    let config = bucket_config(&js, "carts").await;
    assert_eq!(config.storage, StorageType::File);
    assert_eq!(
        config.max_messages_per_subject, 1,
        "the allowed change must not be applied either"
    );
}

#[tokio::test]
async fn bad_buckets_give_a_clear_error_and_create_nothing() {
    let server = NatsServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{CARTS}\nhistory = 65\n\n[[kv]]\nname = \"carts\"\n\n[[kv]]\nname = \"bad.name\"\n\n\
         [[stream]]\nname = \"KV_sessions\"\nsubjects = [\"sessions.*\"]\n\n\
         [[kv]]\nname = \"sessions\"\n"
    );
    let spec = write_spec(dir.path(), &text);
    let err = fails(stream_init(&server.url, &["apply", "--file", &spec]).await);
    for needle in [
        spec.as_str(),
        "kv carts: history must be between 1 and 64, not 65",
        "kv carts: declared more than once",
        "kv bad.name: name may contain only letters, digits, '-' and '_'",
        "kv sessions: JetStream keeps the bucket in the stream KV_sessions, which is also declared",
    ] {
        assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
    }
    let js = server.jetstream().await.unwrap();
    assert!(js.get_stream("KV_carts").await.is_err());
}
