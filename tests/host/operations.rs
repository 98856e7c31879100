//! Day-2 operations as an operator runs them against a live server: `jetwasm dead-letters
//! list / show / redrive` (the records a real host wrote, read back, and their messages put
//! back in place) and `jetwasm replay` (a handler run over history, its consumer untouched).

use std::time::Duration;

use harness::setup::{header, order, Setup, QUICK_RETRIES};

/// Runs `jetwasm dead-letters ARGS --server URL`; returns success and stdout + stderr.
fn dead_letters(url: &str, args: &[&str]) -> (bool, String) {
    let all = [&["dead-letters"][..], args, &["--server", url]].concat();
    crate::jetwasm(all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_shown_and_redriven_once() {
    let setup = Setup::new(QUICK_RETRIES).await;
    let mut host = setup.host("fixture_trap", "").await;
    setup.publish_all((0..3).map(order)).await;
    let records = setup
        .wait_dead_letters(3, Duration::from_secs(30), &host)
        .await;
    host.stop_gracefully(Duration::from_secs(15)).await.unwrap();
    // A stray message no host wrote, on a dead-letter subject.
    setup
        .js
        .publish("deadletter.ORDERS.proc", "junk".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let url = &setup.server.url;

    let (ok, table) = dead_letters(url, &["list"]);
    assert!(ok, "{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].contains("SEQ") && lines[0].contains("REASON"),
        "{table}"
    );
    assert_eq!(
        lines.len(),
        6,
        "a header, four records and a total:\n{table}"
    );
    // Handled concurrently: the records come in any order.
    for original in ["ORDERS:1 ", "ORDERS:2 ", "ORDERS:3 "] {
        let row = lines.iter().find(|l| l.contains(original));
        assert!(
            row.is_some_and(|r| r.contains("orders.created")
                && r.contains(" h ")
                && r.contains("trap")),
            "{original}: {table}"
        );
    }
    assert!(table.contains("(not a jetwasm record)"), "{table}");
    let (ok, filtered) = dead_letters(url, &["list", "--reason", "UNREACHABLE", "--since", "1h"]);
    assert!(ok && filtered.contains("3 record(s)"), "{filtered}");
    let (ok, none) = dead_letters(url, &["list", "--consumer", "other"]);
    assert!(ok && none.contains("0 record(s)"), "{none}");

    let first = records[0].sequence.to_string();
    let (ok, shown) = dead_letters(url, &["show", &first]);
    assert!(ok, "{shown}");
    let payload = String::from_utf8_lossy(&records[0].payload);
    assert!(
        shown.contains("Jetwasm-Reason: trap") && shown.ends_with(&format!("{payload}\n")),
        "{shown}"
    );

    let (ok, dry) = dead_letters(url, &["redrive", "--dry-run"]);
    assert!(!ok, "the junk record makes it fail: {dry}");
    assert!(dry.contains("would redrive 3, left alone 1"), "{dry}");
    assert_eq!(
        setup.count("ORDERS", "orders.created").await,
        3,
        "a dry run changes nothing"
    );

    let (ok, out) = dead_letters(url, &["redrive"]);
    assert!(!ok, "{out}");
    assert!(out.contains("redriven 3, left alone 1"), "{out}");
    assert!(
        out.contains("not a jetwasm dead-letter record (no Jetwasm-Subject header); left alone"),
        "{out}"
    );
    let orders = setup.messages("ORDERS").await;
    let redriven: Vec<_> = orders.iter().skip(3).collect();
    assert_eq!(redriven.len(), 3, "each message once more");
    for (message, record) in redriven.iter().zip(&records) {
        assert_eq!(message.subject.as_str(), "orders.created");
        assert_eq!(message.payload, record.payload);
        let seq = record.sequence;
        assert_eq!(
            header(message, "Nats-Msg-Id"),
            format!("redrive:DEADLETTER:{seq}")
        );
    }
    let (ok, left) = dead_letters(url, &["list"]);
    assert!(
        ok && left.contains("1 record(s)") && left.contains("(not a jetwasm record)"),
        "{left}"
    );

    // A second run republishes nothing.
    let (_, again) = dead_letters(url, &["redrive"]);
    assert!(again.contains("redriven 0, left alone 1"), "{again}");
    assert_eq!(setup.count("ORDERS", "orders.created").await, 6);
}

/// Runs `jetwasm replay --config CONFIG --handler h ARGS --server URL`.
fn replay(url: &str, config: &std::path::Path, args: &[&str]) -> (bool, String) {
    let config = config.to_str().expect("a UTF-8 path");
    let all = [
        &["replay", "--handler", "h", "--config", config][..],
        args,
        &["--server", url],
    ];
    crate::jetwasm(all.concat())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_runs_a_handler_over_history_without_moving_its_consumer() {
    let setup = Setup::new("").await;
    let host = setup.host("orders", "").await;
    setup.publish_all((0..10).map(order)).await;
    setup.drained(Duration::from_secs(30), &host).await;
    let before = setup.consumer().await;
    let config = setup.dir.path().join("replay.toml");
    let text = setup.config(&harness::handler_wasm("orders"), "", "");
    std::fs::write(&config, text.replace("{http}", "127.0.0.1:1")).unwrap();
    let url = &setup.server.url;

    // Captured by default: ten orders handled again, their publishes counted, none sent.
    let (ok, out) = replay(url, &config, &["--from-seq", "1"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("replayed 10 messages") && out.contains("through h"),
        "{out}"
    );
    assert!(
        out.contains("ack        10") && out.contains("publishes  10 captured, not sent"),
        "{out}"
    );
    assert_eq!(setup.count("ORDERS", "orders.processed").await, 10);

    // A stretch of it, and a dry run.
    let created: Vec<u64> = (setup.messages("ORDERS").await.iter())
        .filter(|m| m.subject.as_str() == "orders.created")
        .map(|m| m.sequence)
        .collect();
    let fifth = created[4].to_string();
    let (ok, out) = replay(url, &config, &["--from-seq", "1", "--to-seq", &fifth]);
    assert!(ok && out.contains("replayed 5 messages"), "{out}");
    let (ok, out) = replay(url, &config, &["--since", "1h", "--dry-run"]);
    assert!(ok && out.contains("would replay 10 messages"), "{out}");

    // Sent: the same derived ids as the live run's, so the stream keeps one of each.
    let (ok, out) = replay(url, &config, &["--from-seq", "1", "--publish", "on"]);
    assert!(ok && out.contains("publishes  sent"), "{out}");
    assert_eq!(
        setup.count("ORDERS", "orders.processed").await,
        10,
        "deduplicated"
    );

    // The durable consumer never moved.
    let after = setup.consumer().await;
    assert_eq!(
        (
            after.delivered.stream_sequence,
            after.ack_floor.stream_sequence,
            after.num_pending
        ),
        (
            before.delivered.stream_sequence,
            before.ack_floor.stream_sequence,
            0
        )
    );
    let (ok, out) = replay(url, &config, &[]);
    assert!(
        !ok && out.contains("--from-seq"),
        "a start is required: {out}"
    );
}

/// The trace id in a `traceparent` value.
fn trace_id(traceparent: &str) -> &str {
    traceparent.split('-').nth(1).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_follows_an_order_from_the_http_intake_to_orders_processed() {
    let setup = Setup::new("").await;
    let intake = format!(
        "\n[[publisher]]\nname = \"intake\"\ncomponent = {:?}\npublish = [\"orders.created\"]\nhttp = {{ method = \"POST\", path = \"/orders\" }}\n",
        harness::handler_wasm("orders_intake").display().to_string()
    );
    let config = setup.config(&harness::handler_wasm("orders"), "", "") + &intake;
    let host = harness::Host::start(&setup.server.url, &config)
        .await
        .unwrap();
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for (i, headers) in [vec![("traceparent", parent)], vec![]]
        .into_iter()
        .enumerate()
    {
        let (status, body) =
            harness::http_request(host.http, "POST", "/orders", &headers, order(i).as_bytes())
                .unwrap();
        assert_eq!(status, 202, "{body}");
    }
    setup.drained(Duration::from_secs(30), &host).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while setup.count("ORDERS", "orders.processed").await < 2 {
        assert!(std::time::Instant::now() < deadline, "not processed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let messages = setup.messages("ORDERS").await;
    let of = |subject: &str, id: &str| {
        let found = messages.iter().find(|m| {
            m.subject.as_str() == subject && String::from_utf8_lossy(&m.payload).contains(id)
        });
        header(
            found.unwrap_or_else(|| panic!("no {subject} for {id}")),
            "traceparent",
        )
        .to_owned()
    };
    // The intake's publish continues the request's trace; the handler's continues the order's.
    let (created, processed) = (of("orders.created", "o-0"), of("orders.processed", "o-0"));
    assert_eq!(trace_id(&created), trace_id(parent), "{created}");
    assert_eq!(trace_id(&processed), trace_id(parent), "{processed}");
    assert_ne!(created, processed, "each publish is a span of its own");
    // Without one, the intake starts a trace, and the handler's output carries it on.
    let (created, processed) = (of("orders.created", "o-1"), of("orders.processed", "o-1"));
    assert_eq!(trace_id(&created).len(), 32, "{created}");
    assert_ne!(trace_id(&created), trace_id(parent));
    assert_eq!(trace_id(&processed), trace_id(&created));
}
