//! Stateful handlers (contract 0.2): key-value buckets declared with `[[kv]]` and granted
//! with `kv = [...]`, every operation's answer and typed error, batched and atomic publishes,
//! and a read-modify-write handler that counts right across redeliveries and a kill -9.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use harness::setup::{Setup, QUICK_RETRIES};
use harness::{handler_wasm, Host};
use serde_json::{json, Value};

/// Buckets for the tests: `scratch` (values up to 64 bytes), `prices`, `totals`, and
/// `dropped` (deleted by a test while its host runs).
const BUCKETS: &str = r#"
[[kv]]
name = "scratch"
storage = "memory"
max_value_size = "64B"

[[kv]]
name = "prices"
storage = "memory"

[[kv]]
name = "totals"
storage = "memory"

[[kv]]
name = "dropped"
storage = "memory"
"#;

/// A setup whose streams spec also declares [`BUCKETS`], and the stream `ATOMIC` (subjects
/// `atomic.>`) that allows atomic batches.
async fn setup_with_buckets(consumer: &str) -> Setup {
    let setup = Setup::new(consumer).await;
    let spec = setup.dir.path().join("streams.toml");
    let mut text = std::fs::read_to_string(&spec).unwrap();
    text.push_str(BUCKETS);
    std::fs::write(&spec, text).unwrap();
    setup.apply_streams().await;
    setup
        .js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "ATOMIC".into(),
            subjects: vec!["atomic.>".into()],
            storage: async_nats::jetstream::stream::StorageType::Memory,
            allow_atomic_publish: true,
            ..Default::default()
        })
        .await
        .unwrap();
    setup
}

/// Sends `ops` to the `fixture_state` handler and returns its answers.
async fn run_ops(setup: &Setup, host: &Host, ops: Value) -> Vec<Value> {
    let before = setup.count("ORDERS", "orders.audited").await;
    setup.publish_all([ops.to_string()]).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while setup.count("ORDERS", "orders.audited").await == before {
        assert!(
            Instant::now() < deadline,
            "no answers: {}",
            harness::setup::tail(&host.log())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answers = setup.messages("ORDERS").await;
    let last = answers
        .iter()
        .rev()
        .find(|m| m.subject.as_str() == "orders.audited")
        .unwrap();
    serde_json::from_slice(&last.payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_operations_answer_as_the_contract_says_within_the_grants() {
    let setup = setup_with_buckets(QUICK_RETRIES).await;
    let handler = r#"kv = ["scratch", { bucket = "prices", read_only = true }, "dropped"]
publish = ["orders.processed", "orders.audited", "atomic.>"]
config = { output = "orders.audited" }"#;
    let config = setup.config(&handler_wasm("fixture_state"), handler, "");
    let config = config.replacen(
        "publish = [\"orders.processed\", \"orders.audited\"]\n",
        "",
        1,
    );
    let host = Host::start(&setup.server.url, &config).await.unwrap();
    setup.js.delete_key_value("dropped").await.unwrap();
    let op = |op: &str, bucket: &str, key: &str, value: &str| json!({"op": op, "bucket": bucket, "key": key, "value": value});
    let update = |value: &str, revision: u64| json!({"op": "update", "bucket": "scratch", "key": "k", "value": value, "revision": revision});
    let answers = run_ops(
        &setup,
        &host,
        json!([
            op("put", "scratch", "k", "v1"),
            op("get", "scratch", "k", ""),
            op("create", "scratch", "k", "x"),
            update("v2", 1),
            update("v3", 1),
            op("delete", "scratch", "k", ""),
            op("get", "scratch", "k", ""),
            op("create", "scratch", "k", "v4"),
            op("get", "scratch", "absent", ""),
            op("put", "scratch", "bad key", "v"),
            op("put", "scratch", "big", &"x".repeat(65)),
            op("put", "prices", "p", "1"),
            op("get", "prices", "p", ""),
            op("get", "other", "k", ""),
            op("get", "dropped", "k", ""),
        ]),
    )
    .await;
    let err = |answer: &Value| answer["err"].as_str().unwrap_or_default().to_owned();
    assert_eq!(answers[0], json!({"ok": 1}), "put: the first revision");
    assert_eq!(answers[1], json!({"ok": {"value": "v1", "revision": 1}}));
    assert_eq!(
        err(&answers[2]),
        "wrong-revision",
        "create of a present key"
    );
    assert_eq!(answers[3], json!({"ok": 2}), "update at the revision read");
    assert_eq!(
        err(&answers[4]),
        "wrong-revision",
        "update at a stale revision"
    );
    assert_eq!(answers[5], json!({"ok": null}), "delete");
    assert_eq!(
        answers[6],
        json!({"ok": null}),
        "a deleted key reads as none"
    );
    assert_eq!(answers[7], json!({"ok": 4}), "create after delete");
    assert_eq!(answers[8], json!({"ok": null}), "an absent key");
    assert!(
        err(&answers[9]).starts_with("invalid:key \"bad key\""),
        "{}",
        answers[9]
    );
    assert_eq!(
        err(&answers[10]),
        "too-large:64",
        "the bucket's max_value_size"
    );
    assert!(
        err(&answers[11]).starts_with("denied:") && err(&answers[11]).contains("read-only"),
        "{}",
        answers[11]
    );
    assert_eq!(answers[12], json!({"ok": null}), "a read-only bucket reads");
    assert!(
        err(&answers[13]).starts_with("denied:") && err(&answers[13]).contains("\"other\""),
        "{}",
        answers[13]
    );
    assert_eq!(
        err(&answers[14]),
        "not-found:dropped",
        "a bucket deleted since the start"
    );

    // Batched publishes: one answer per message, in order; a denied one stops no other.
    let batch = run_ops(
        &setup,
        &host,
        json!([{"op": "publish-batch", "subjects": ["orders.processed", "payments.x", "orders.processed"]}]),
    )
    .await;
    let batch = batch[0].as_array().unwrap();
    assert_eq!(batch.len(), 3);
    assert_eq!(batch[0]["ok"]["stream"], "ORDERS");
    assert!(
        err(&batch[1]).starts_with("PublishError::Denied(\"payments.x"),
        "{}",
        batch[1]
    );
    assert_eq!(batch[2]["ok"]["stream"], "ORDERS");
    let processed: Vec<String> = (setup.messages("ORDERS").await.iter())
        .filter(|m| m.subject.as_str() == "orders.processed")
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    assert_eq!(
        processed,
        ["0", "2"],
        "sent in order, the denied one not at all"
    );

    // Atomic batches: all stored, or (a denied message, a stream without allow_atomic)
    // nothing.
    let atomic = run_ops(
        &setup,
        &host,
        json!([
            {"op": "publish-atomic", "subjects": ["atomic.a", "atomic.b", "atomic.c"]},
            {"op": "publish-atomic", "subjects": ["atomic.d", "payments.x"]},
            {"op": "publish-atomic", "subjects": ["orders.processed", "orders.processed"]},
        ]),
    )
    .await;
    assert_eq!(atomic[0], json!({"ok": {"stream": "ATOMIC", "seq": 3}}));
    assert!(
        err(&atomic[1]).starts_with("PublishError::Denied(\"payments.x (message 1)"),
        "{}",
        atomic[1]
    );
    assert!(
        err(&atomic[2]).contains("allow_atomic = true"),
        "a stream that refuses batches: {}",
        atomic[2]
    );
    let stored: Vec<String> = (setup.messages("ATOMIC").await.iter())
        .map(|m| m.subject.to_string())
        .collect();
    assert_eq!(stored, ["atomic.a", "atomic.b", "atomic.c"]);
    assert_eq!(
        setup.count("ORDERS", "orders.processed").await,
        2,
        "the refused batch stored nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_of_a_bucket_nobody_declared_stops_the_start_with_the_fix() {
    let setup = setup_with_buckets("").await;
    let config = setup.config(
        &handler_wasm("fixture_state"),
        r#"kv = ["scratch", "carts"]"#,
        "",
    );
    let error = Host::start(&setup.server.url, &config)
        .await
        .err()
        .expect("the start is refused");
    let error = format!("{error:#}");
    assert!(
        error.contains("handler h: uses the kv bucket \"carts\", but there is no such bucket")
            && error.contains("[[kv]] name = \"carts\""),
        "{error}"
    );
    assert!(
        !error.contains("\"scratch\""),
        "a declared bucket is fine: {error}"
    );
}

/// Orders for `customers` customers, `per_customer` each, with a `Customer` header; returns
/// each customer's expected (orders, total in cents).
async fn publish_orders(
    setup: &Setup,
    customers: usize,
    per_customer: usize,
) -> BTreeMap<String, (u64, i64)> {
    let mut expected = BTreeMap::new();
    let mut pending = Vec::new();
    for i in 0..per_customer {
        for c in 0..customers {
            let customer = format!("c-{c}");
            let cents = (i * 7 + c * 3) % 1000 + 1;
            let payload = json!({
                "id": format!("o-{c}-{i}"), "customer": customer, "items": [1],
                "total": cents as f64 / 100.0,
            });
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Customer", customer.as_str());
            let entry = expected.entry(customer).or_insert((0, 0));
            entry.0 += 1;
            entry.1 += cents as i64;
            let ack = setup
                .js
                .publish_with_headers("orders.created", headers, payload.to_string().into())
                .await
                .unwrap();
            pending.push(ack);
        }
    }
    for ack in pending {
        ack.await.unwrap();
    }
    expected
}

/// What the bucket `totals` holds: each customer's (orders, total in cents).
async fn stored_totals(setup: &Setup) -> BTreeMap<String, (u64, i64)> {
    use futures::StreamExt as _;
    let bucket = setup.js.get_key_value("totals").await.unwrap();
    let mut keys = bucket.keys().await.unwrap();
    let mut totals = BTreeMap::new();
    while let Some(key) = keys.next().await {
        let key = key.unwrap();
        let value: Value =
            serde_json::from_slice(&bucket.get(&key).await.unwrap().unwrap()).unwrap();
        let orders = value["orders"].as_u64().unwrap();
        totals.insert(key, (orders, value["total_cents"].as_i64().unwrap()));
    }
    totals
}

/// The customer-totals example (in `component`) counts every order exactly once although
/// one was counted before its delivery (a write whose ack was lost) and the host is killed
/// with -9 mid-stream.
async fn totals_survive_redelivery_and_kill(component: &str, customers: usize, per: usize) {
    let setup = setup_with_buckets("ack_wait = \"2s\"\nmax_deliver = 20").await;
    // Order 1 (stream sequence 1, customer c-0) was counted, and the host died before its
    // ack: the value says so, and its delivery must not count it again.
    let bucket = setup.js.get_key_value("totals").await.unwrap();
    let first_cents = 1; // publish_orders' first order: (0 * 7 + 0 * 3) % 1000 + 1
    let counted = json!({"orders": 1, "total_cents": first_cents, "last_seq": 1});
    bucket.put("c-0", counted.to_string().into()).await.unwrap();

    let expected = publish_orders(&setup, customers, per).await;
    let handler = r#"kv = ["totals"]
ordering = { key = "header:Customer" }
limits = { max_in_flight = 8 }
config = { bucket = "totals" }"#;
    let mut host = setup.host(component, handler).await;
    let total = (customers * per) as f64;
    let sample = "jetwasm_messages_total{handler=\"h\",outcome=\"ack\"}";
    let deadline = Instant::now() + Duration::from_secs(60);
    while host.metric(sample).unwrap_or(0.0) < total / 3.0 {
        assert!(
            Instant::now() < deadline,
            "{}",
            harness::setup::tail(&host.log())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    host.kill().unwrap();
    host.restart(&setup.server.url).await.unwrap();
    setup.drained(Duration::from_secs(90), &host).await;

    assert_eq!(stored_totals(&setup).await, expected, "{component}");
    assert!(setup.dead_letters().await.is_empty(), "{component}");
    // The restarted host found the killed one's messages unacknowledged, and let no later
    // message of a customer overtake them.
    assert!(
        host.log().contains("later ones wait for their redelivery"),
        "{}",
        harness::setup::tail(&host.log())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_customer_totals_count_each_order_once_across_redelivery_and_kill_9() {
    totals_survive_redelivery_and_kill("customer_totals", 20, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_customer_totals_count_each_order_once_across_redelivery_and_kill_9() {
    totals_survive_redelivery_and_kill("customer_totals_python", 10, 30).await;
}
