//! The host end to end: a real nats-server, the real `jetwasm` binary and real components from
//! `handlers/`, through every path of the failure model.

use std::time::{Duration, Instant};

use futures::TryStreamExt;

use harness::setup::{header, order, sample, streams, tail, Setup, QUICK_RETRIES};
use harness::{handler_wasm, http_exchange, http_get, http_request, Host};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_orders_are_all_acked_and_processed_once() {
    let setup = Setup::new(QUICK_RETRIES).await;
    let host = setup.host("orders", "").await;
    setup.publish_all((0..10_000).map(order)).await;
    setup.drained(Duration::from_secs(120), &host).await;

    assert_eq!(setup.count("ORDERS", "orders.processed").await, 10_000);
    assert_eq!(host.metric(&sample("ack")).unwrap(), 10_000.0);
    assert!(setup.dead_letters().await.is_empty());
    let info = setup.consumer().await;
    assert_eq!(info.num_redelivered, 0, "nothing should need a redelivery");

    let (status, body) = http_get(host.http, "/healthz").unwrap();
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let calls = host.metric("jetwasm_handler_seconds_count{handler=\"h\"}");
    assert_eq!(calls.unwrap(), 10000.0, "{}", host.metrics().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_stay_within_a_consumer_that_caps_its_batch_size() {
    let setup = Setup::new("").await;
    // A consumer made elsewhere may refuse pulls over `max_batch`: the default prefetch
    // (1024) is far larger, and must be capped rather than refused and retried forever.
    setup.change_consumer(|config| config.max_batch = 8).await;
    let host = setup.host("orders", "").await;
    setup.publish_all((0..300).map(order)).await;
    setup.drained(Duration::from_secs(30), &host).await;

    assert_eq!(setup.count("ORDERS", "orders.processed").await, 300);
    assert_eq!(setup.consumer().await.config.max_batch, 8, "left as it was");
    let log = host.log();
    assert!(!log.contains("pull failed"), "{}", tail(&log));
    let capped = log
        .lines()
        .filter(|line| line.contains("consumer bound") && line.ends_with("request=8"));
    assert_eq!(capped.count(), 2, "both lanes pull 8 at a time\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_and_carry_the_message_fields() {
    let setup = Setup::new(QUICK_RETRIES).await;
    let config = setup.config(&handler_wasm("orders"), "", "");
    let host = Host::start_with(&setup.server.url, &config, &["--log-format", "json"])
        .await
        .unwrap();
    setup.publish_all((0..3).map(order)).await;
    setup.drained(Duration::from_secs(15), &host).await;

    let log = host.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let message = |v: &serde_json::Value| v["fields"]["message"].as_str().unwrap_or("").to_owned();
    // The guest's `log` calls: at their level, inside a span naming handler, stream and seq.
    let guest: Vec<_> = lines
        .iter()
        .filter(|v| message(v).starts_with("processed order"))
        .collect();
    assert_eq!(guest.len(), 3, "{log}");
    let mut seqs: Vec<u64> = guest
        .iter()
        .map(|v| {
            assert_eq!(v["level"], "INFO");
            assert_eq!(v["span"]["handler"], "h");
            assert_eq!(v["span"]["stream"], "ORDERS");
            v["span"]["seq"].as_u64().expect("a sequence number")
        })
        .collect();
    seqs.sort();
    assert_eq!(seqs, [1, 2, 3]);
    // The host's own events keep their fields too.
    assert!(
        lines
            .iter()
            .any(|v| message(v) == "consumer bound" && v["fields"]["handler"] == "h"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nak_with_delay_is_redelivered_no_earlier_than_the_delay_then_dead_lettered() {
    let setup = Setup::new(QUICK_RETRIES).await;
    let host = setup
        .host("orders", "config = { retry_delay_ms = 1500 }")
        .await;
    let busy = r#"{"id":"o-busy","customer":"c","items":[1],"total":1,"inventory_busy":true}"#;
    setup.publish_all([busy.to_owned()]).await;

    // Watch deliveries: the second comes no earlier than 1.5s after the first.
    let poll = Duration::from_millis(20);
    let mut first = None;
    let second = loop {
        let delivered = setup.consumer().await.delivered.consumer_sequence;
        if delivered >= 1 && first.is_none() {
            first = Some(Instant::now());
        }
        if delivered >= 2 {
            break Instant::now();
        }
        assert!(
            first.is_none_or(|f| f.elapsed() < Duration::from_secs(10)),
            "no redelivery"
        );
        tokio::time::sleep(poll).await;
    };
    let gap = second - first.unwrap();
    assert!(
        gap >= Duration::from_millis(1500) - poll,
        "redelivered after {gap:?}"
    );

    // Still busy at the last allowed delivery: dead-lettered, not silently dropped.
    let records = setup
        .wait_dead_letters(1, Duration::from_secs(10), &host)
        .await;
    assert!(
        header(&records[0], "Jetwasm-Reason").contains("last allowed delivery (delivery 3 of 3)")
    );
    setup.drained(Duration::from_secs(5), &host).await;
    assert_eq!(host.metric(&sample("nak")).unwrap(), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn term_writes_exactly_one_dead_letter_with_the_reason() {
    let setup = Setup::new(QUICK_RETRIES).await;
    let host = setup.host("orders", "").await;
    let mut headers = async_nats::HeaderMap::new();
    headers.append("trace-id", "t-1");
    setup
        .js
        .publish_with_headers("orders.created", headers, "{not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    setup
        .publish_all([r#"{"id":"o-1","items":[1],"total":1}"#.to_owned()])
        .await;
    setup.drained(Duration::from_secs(10), &host).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut records = setup.dead_letters().await;
    assert_eq!(records.len(), 2, "one record per termed message");
    // Calls run concurrently, so records may be stored in either order.
    records.sort_by_key(|r| header(r, "Jetwasm-Sequence").parse::<u64>().unwrap());
    let bad_json = &records[0];
    assert_eq!(bad_json.subject.as_str(), "deadletter.ORDERS.proc");
    assert_eq!(&bad_json.payload[..], b"{not json");
    assert!(
        header(bad_json, "Jetwasm-Reason").starts_with("invalid JSON"),
        "{:?}",
        bad_json.headers
    );
    assert_eq!(header(bad_json, "Jetwasm-Subject"), "orders.created");
    assert_eq!(header(bad_json, "Jetwasm-Stream"), "ORDERS");
    assert_eq!(header(bad_json, "Jetwasm-Sequence"), "1");
    assert_eq!(header(bad_json, "Jetwasm-Delivered"), "1");
    assert_eq!(header(bad_json, "Jetwasm-Handler"), "h");
    assert_eq!(
        header(bad_json, "trace-id"),
        "t-1",
        "original headers travel along"
    );
    assert!(header(&records[1], "Jetwasm-Reason").contains("missing field `customer`"));
    assert_eq!(setup.consumer().await.num_redelivered, 0, "a term is final");
    assert_eq!(host.metric(&sample("term")).unwrap(), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_size_cap_is_dead_lettered_without_running_the_handler() {
    let setup = Setup::new(QUICK_RETRIES).await;
    let host = setup
        .host("orders", "limits = { max_message_size = \"1KiB\" }")
        .await;
    setup.publish_all(["x".repeat(2048), order(1)]).await;
    let records = setup
        .wait_dead_letters(1, Duration::from_secs(10), &host)
        .await;
    assert_eq!(
        header(&records[0], "Jetwasm-Reason"),
        "message is 2048 bytes, over the handler's 1024-byte limit"
    );
    assert_eq!(records[0].payload.len(), 2048, "the payload is kept whole");
    setup.drained(Duration::from_secs(5), &host).await;
    assert_eq!(host.metric(&sample("oversize")).unwrap(), 1.0);
    assert_eq!(host.metric(&sample("ack")).unwrap(), 1.0);
    let calls = "jetwasm_handler_seconds_count{handler=\"h\"}";
    assert_eq!(
        host.metric(calls).unwrap(),
        1.0,
        "the handler ran only for the small message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_is_retried_with_backoff_then_dead_lettered_once() {
    let setup = Setup::new(QUICK_RETRIES).await;
    let host = setup.host("fixture_trap", "").await;
    let published = Instant::now();
    setup.publish_all(["boom".to_owned()]).await;

    let records = setup
        .wait_dead_letters(1, Duration::from_secs(10), &host)
        .await;
    assert!(
        published.elapsed() >= Duration::from_millis(600),
        "two backoff steps (200ms + 400ms) come first"
    );
    let reason = header(&records[0], "Jetwasm-Reason");
    assert!(
        reason.starts_with("trap:") && reason.ends_with("(delivery 3 of 3)"),
        "{reason}"
    );
    assert_eq!(header(&records[0], "Jetwasm-Delivered"), "3");
    setup.drained(Duration::from_secs(5), &host).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(setup.dead_letters().await.len(), 1, "exactly one record");
    assert_eq!(host.metric(&sample("trap")).unwrap(), 3.0);
    assert!(
        host.log().contains("fixture-trap: boom"),
        "the guest's panic message reaches the log"
    );
    // The guest's lines and the host's about one delivery share the message's span.
    let log = host.log();
    for delivered in 1..=3 {
        let span = format!("seq=1 delivered={delivered}}}");
        let about = |what: &str| {
            log.lines().any(|line| {
                line.contains("message{handler=") && line.contains(&span) && line.contains(what)
            })
        };
        assert!(about("fixture-trap: boom"), "{span}: {}", tail(&log));
        assert!(
            about("jetwasm::delivery: handler failed"),
            "{span}: {}",
            tail(&log)
        );
    }

    // The host is unaffected: it still serves.
    assert_eq!(http_get(host.http, "/readyz").unwrap().0, 200);
}

/// A handler from the lean (`no_std`) template has no stderr: its panic handler logs the panic
/// through the contract's log, then traps; the host handles that as any trap, and quotes the
/// logged line in the trap's reason as it quotes a std component's stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lean_handlers_panic_is_logged_then_handled_as_a_trap() {
    let setup = Setup::new(QUICK_RETRIES).await;
    let host = setup.host("noop_lean", "").await;
    setup
        .publish_all(["fine".to_owned(), "panic".to_owned()])
        .await;

    let records = setup
        .wait_dead_letters(1, Duration::from_secs(10), &host)
        .await;
    let reason = header(&records[0], "Jetwasm-Reason");
    assert!(
        reason.starts_with("trap:") && reason.ends_with("(delivery 3 of 3)"),
        "{reason}"
    );
    assert!(
        reason.contains("; last error logged: panicked at rust/noop-lean/src/lib.rs:")
            && reason.contains(": noop-lean: asked to panic"),
        "{reason}"
    );
    setup.drained(Duration::from_secs(5), &host).await;
    assert_eq!(host.metric(&sample("ack")).unwrap(), 1.0, "the other one");
    assert_eq!(host.metric(&sample("trap")).unwrap(), 3.0);
    let log = host.log();
    let panics = (log.lines())
        .filter(|line| line.contains("jetwasm::imports: panicked at rust/noop-lean/src/lib.rs:"))
        .filter(|line| line.ends_with(": noop-lean: asked to panic"))
        .filter(|line| line.contains("message{handler=") && line.contains("seq=2"))
        .count();
    assert_eq!(
        panics,
        3,
        "one line per delivery, in its span: {}",
        tail(&log)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_failing_calls_is_counted_in_full_and_logged_at_most_a_hundred_lines_a_second() {
    let setup = Setup::new("max_deliver = 1").await;
    let host = setup.host("fixture_trap", "").await;
    let started = Instant::now();
    setup
        .publish_all((0..1_000).map(|i| format!("boom {i}")))
        .await;
    setup
        .wait_dead_letters(1_000, Duration::from_secs(60), &host)
        .await;
    let seconds = started.elapsed().as_secs() + 1;
    assert_eq!(host.metric(&sample("trap")).unwrap(), 1_000.0);
    let log = host.log();
    let lines = (log.lines())
        .filter(|line| {
            line.contains("jetwasm::delivery: handler failed")
                || line.contains("jetwasm::delivery: dead-lettered")
        })
        .count() as u64;
    assert!(lines > 0, "the failures are logged: {}", tail(&log));
    // Unlimited, 1,000 failures and 1,000 dead letters would log 2,000 lines.
    assert!(
        lines <= 100 * (seconds + 1),
        "{lines} lines about failed calls in {seconds}s"
    );
    // The drops are reported with the next line let through, or within 2s (the watchdog).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !host
        .log()
        .contains("host log lines about this component's calls dropped")
    {
        assert!(Instant::now() < deadline, "{}", tail(&host.log()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stream_refusing_every_publish_does_not_flood_the_log() {
    let setup = Setup::new("").await;
    let config = (setup.config(&handler_wasm("orders"), "", "")).replace(
        "\"orders.processed\", \"orders.audited\"",
        "\"payments.out\"",
    ) + "config = { output_subject = \"payments.out\" }\n";
    let host = Host::start(&setup.server.url, &config).await.unwrap();
    // PAYMENTS (after the host applied its spec) keeps one message and refuses every other:
    // each order's publish fails, the handler logs a warning and naks, and the order comes
    // straight back (no backoff): a storm of refused publishes.
    let mut payments = setup
        .stream("PAYMENTS")
        .await
        .info()
        .await
        .unwrap()
        .config
        .clone();
    payments.max_messages = 1;
    payments.discard = async_nats::jetstream::stream::DiscardPolicy::New;
    setup.js.update_stream(&payments).await.unwrap();
    let started = Instant::now();
    setup.publish_all((0..300).map(order)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seconds = started.elapsed().as_secs() + 1;
    let refused = host.metric(&sample("nak")).unwrap();
    let log = host.log();
    let lines = (log.lines())
        .filter(|line| line.contains("publishing order"))
        .count() as u64;
    println!("full stream: {refused} refused publishes in {seconds}s, {lines} guest lines logged");
    assert!(lines > 0, "the refusals are logged: {}", tail(&log));
    assert!(
        refused > (100 * (seconds + 1)) as f64,
        "a storm: {refused} refused publishes in {seconds}s"
    );
    // Unlimited, every refused publish would log a line.
    assert!(
        lines <= 100 * (seconds + 1),
        "{lines} guest lines in {seconds}s for {refused} refused publishes"
    );
    assert!(
        log.contains("log lines dropped: over 100 a second from this component"),
        "{}",
        tail(&log)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_loop_is_interrupted_at_its_cpu_limit_while_other_messages_flow() {
    let setup = Setup::new("max_deliver = 2\nbackoff = [\"100ms\"]").await;
    let host = setup
        .host(
            "fixture_loop",
            "limits = { cpu_time = \"3s\", max_in_flight = 4 }",
        )
        .await;
    let looping = Instant::now();
    setup.publish_all(["loop".to_owned()]).await;
    setup.publish_all((0..200).map(|i| format!("ok {i}"))).await;
    // The 200 others are all acked while the loop still spins in one of the four slots.
    host.wait_metric(&sample("ack"), 200.0, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        host.metric(&sample("timeout")).unwrap(),
        0.0,
        "acked while the loop was still running"
    );

    // The loop is interrupted once it has used 3s of CPU time, not before and not long after.
    host.wait_metric(&sample("timeout"), 1.0, Duration::from_secs(15))
        .await
        .unwrap();
    let interrupted_after = looping.elapsed();
    assert!(
        interrupted_after >= Duration::from_secs(3) && interrupted_after < Duration::from_secs(6),
        "interrupted after {interrupted_after:?}"
    );

    let records = setup
        .wait_dead_letters(1, Duration::from_secs(15), &host)
        .await;
    assert_eq!(
        header(&records[0], "Jetwasm-Reason"),
        "timeout: used more than 3s of CPU time (delivery 2 of 2)"
    );
    assert_eq!(host.metric(&sample("timeout")).unwrap(), 2.0);
    setup.drained(Duration::from_secs(5), &host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_is_stopped_at_its_cap_and_the_host_stays_small() {
    let setup = Setup::new("max_deliver = 1").await;
    let host = setup
        .host(
            "fixture_membomb",
            "limits = { memory = \"32MiB\", max_in_flight = 4 }",
        )
        .await;
    setup
        .publish_all(
            (0..4)
                .map(|_| "bomb".to_owned())
                .chain((0..50).map(|i| format!("ok {i}"))),
        )
        .await;
    let records = setup
        .wait_dead_letters(4, Duration::from_secs(20), &host)
        .await;
    for record in &records {
        let reason = header(record, "Jetwasm-Reason");
        assert!(
            reason.starts_with("memory limit exceeded") && reason.contains("33554432"),
            "{reason}"
        );
    }
    setup.drained(Duration::from_secs(10), &host).await;
    assert_eq!(host.metric(&sample("memory")).unwrap(), 4.0);
    assert_eq!(host.metric(&sample("ack")).unwrap(), 50.0);
    // Four bombs at once, each stopped at 32 MiB: the host's own memory stays bounded.
    let rss = host.rss_bytes().unwrap();
    assert!(rss < 400 << 20, "host RSS {} MiB", rss >> 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_handler_is_kept_in_progress_and_not_redelivered() {
    // No backoff: JetStream would redeliver after 1s without an ack or in-progress.
    let setup = Setup::new("ack_wait = \"1s\"\nmax_deliver = 5").await;
    let host = setup
        .host(
            "fixture_slow",
            "limits = { timeout = \"10s\" }\nconfig = { sleep_ms = 3500 }",
        )
        .await;
    setup.publish_all(["slow".to_owned()]).await;
    setup.drained(Duration::from_secs(15), &host).await;
    setup.assert_each_delivered_once(1, &host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetched_messages_waiting_for_a_slot_are_kept_in_progress() {
    // One slot, calls of 700ms and an ack wait of 1s: the fourth message waits ~2s for its
    // turn, long past its ack wait, and must still not be redelivered.
    let setup = Setup::new("ack_wait = \"1s\"\nmax_deliver = 5").await;
    let host = setup
        .host(
            "fixture_slow",
            "limits = { max_in_flight = 1, prefetch = 4 }\nconfig = { sleep_ms = 700 }",
        )
        .await;
    setup.publish_all((0..4).map(|i| format!("slow {i}"))).await;
    setup.drained(Duration::from_secs(15), &host).await;
    setup.assert_each_delivered_once(4, &host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_hands_back_messages_still_waiting_for_a_slot() {
    // A long ack wait: without the hand-back, the three waiting messages would stay
    // unacknowledged for 30s after the host stopped.
    let setup = Setup::new("ack_wait = \"30s\"\nmax_deliver = 5").await;
    let handler = "limits = { max_in_flight = 1, prefetch = 4 }\nconfig = { sleep_ms = 700 }";
    let mut host = setup.host("fixture_slow", handler).await;
    setup.publish_all((0..4).map(|i| format!("slow {i}"))).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    host.stop_gracefully(Duration::from_secs(15)).await.unwrap();
    let info = setup.consumer().await;
    assert_eq!(
        info.ack_floor.stream_sequence, 1,
        "the running call finished"
    );
    // Naked, they are redelivered at once: another consumer gets them well inside the 30s.
    let consumer: async_nats::jetstream::consumer::PullConsumer = setup
        .stream("ORDERS")
        .await
        .get_consumer("proc")
        .await
        .unwrap();
    let mut batch = consumer
        .batch()
        .max_messages(3)
        .expires(Duration::from_secs(3))
        .messages()
        .await
        .unwrap();
    let mut redelivered = Vec::new();
    while let Some(message) = batch.try_next().await.unwrap() {
        redelivered.push(message.info().unwrap().delivered);
    }
    assert_eq!(redelivered, [2, 2, 2], "{}", tail(&host.log()));
    assert!(
        host.log()
            .contains("handed back messages still waiting for a slot handler=\"h\" count=3"),
        "{}",
        tail(&host.log())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_its_wall_clock_ceiling_is_stopped() {
    let setup = Setup::new("max_deliver = 1").await;
    let limits =
        "limits = { timeout = \"1s\", cpu_time = \"500ms\" }\nconfig = { sleep_ms = 5000 }";
    let host = setup.host("fixture_slow", limits).await;
    let started = Instant::now();
    setup.publish_all(["sleepy".to_owned()]).await;
    let records = setup
        .wait_dead_letters(1, Duration::from_secs(10), &host)
        .await;
    assert_eq!(
        header(&records[0], "Jetwasm-Reason"),
        "timeout: still running after 1s (delivery 1 of 1)"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped before the sleep ended"
    );
    assert_eq!(host.metric(&sample("timeout")).unwrap(), 1.0);
    assert_eq!(
        http_get(host.http, "/readyz").unwrap().0,
        200,
        "the host is unaffected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_work_and_loses_nothing() {
    let setup = Setup::new("ack_wait = \"2s\"\nmax_deliver = 10").await;
    let handler = "limits = { max_in_flight = 4 }\nconfig = { sleep_ms = 700 }";
    let mut host = setup.host("fixture_slow", handler).await;
    setup.publish_all((0..20).map(|i| format!("m{i}"))).await;
    // Let the first four start, then ask the host to stop while they run.
    tokio::time::sleep(Duration::from_millis(300)).await;
    host.stop_gracefully(Duration::from_secs(15)).await.unwrap();
    let acked_before_restart = setup.consumer().await.ack_floor.stream_sequence;
    assert!(
        acked_before_restart >= 4,
        "in-flight calls finished and were acked: {acked_before_restart}"
    );
    assert!(
        host.log().contains("in-flight calls finished"),
        "{}",
        tail(&host.log())
    );

    host.restart(&setup.server.url).await.unwrap();
    setup.drained(Duration::from_secs(30), &host).await;
    let info = setup.consumer().await;
    assert_eq!(info.ack_floor.stream_sequence, 20, "every message acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_then_restart_processes_everything_once() {
    let setup = Setup::new("ack_wait = \"2s\"").await;
    setup.publish_all((0..3_000).map(order)).await;
    let mut host = setup.host("orders", "").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while setup.count("ORDERS", "orders.processed").await < 300 {
        assert!(
            Instant::now() < deadline,
            "no progress\n{}",
            tail(&host.log())
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    host.kill().unwrap();
    let processed_at_kill = setup.count("ORDERS", "orders.processed").await;
    assert!(processed_at_kill < 3_000, "killed before the end");

    host.restart(&setup.server.url).await.unwrap();
    setup.drained(Duration::from_secs(60), &host).await;
    // Redelivered messages publish with the same derived ids, so the stream drops repeats.
    assert_eq!(setup.count("ORDERS", "orders.processed").await, 3_000);
    let redone = host.metric(&sample("ack")).unwrap() as u64;
    let window = 64 + 64; // max in-flight, plus acks still queued in the client at the kill
    assert!(
        redone <= 3_000 - processed_at_kill as u64 + window,
        "second run acked {redone}, {processed_at_kill} were processed before the kill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_of_another_world_is_rejected_before_anything_is_consumed() {
    let setup = Setup::new(QUICK_RETRIES).await;
    setup.publish_all([order(1)]).await;
    let config = setup.config(&handler_wasm("fixture_publisher"), "", "");
    let mut host = Host::spawn(&setup.server.url, &config).unwrap();
    let status = host.wait_exit(Duration::from_secs(30)).await.unwrap();
    assert!(!status.success());
    let log = host.log();
    assert!(
        log.contains("handler h") && log.contains("does not fit the handler world"),
        "{log}"
    );
    assert!(
        log.contains("handle"),
        "the error names the missing export: {log}"
    );
    let info = setup.consumer().await;
    assert_eq!(info.delivered.consumer_sequence, 0, "nothing consumed");
    assert_eq!(info.num_pending, 1);

    // A file that is not a component at all.
    let junk = setup.dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm\x01\x00\x00\x00").unwrap();
    let mut host = Host::spawn(&setup.server.url, &setup.config(&junk, "", "")).unwrap();
    assert!(!host
        .wait_exit(Duration::from_secs(30))
        .await
        .unwrap()
        .success());
    let log = host.log();
    assert!(
        log.contains("junk.wasm") && log.contains("core WebAssembly module, not a component"),
        "{log}"
    );
    assert_eq!(setup.consumer().await.delivered.consumer_sequence, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_outside_the_allow_list_is_denied_and_nothing_is_published() {
    let setup = Setup::new(QUICK_RETRIES).await;
    let host = setup.host("fixture_forbidden", "").await;
    setup.publish_all([order(1)]).await;
    let records = setup
        .wait_dead_letters(1, Duration::from_secs(10), &host)
        .await;
    assert_eq!(
        header(&records[0], "Jetwasm-Reason"),
        "publish denied: payments.charged"
    );
    assert_eq!(
        setup.count("PAYMENTS", ">").await,
        0,
        "nothing reached PAYMENTS"
    );
    setup.drained(Duration::from_secs(5), &host).await;

    // Reserved subjects are denied even when asked for explicitly.
    let host = setup
        .host(
            "fixture_forbidden",
            "config = { subject = \"$JS.API.STREAM.DELETE.ORDERS\" }",
        )
        .await;
    setup.publish_all([order(2)]).await;
    let records = setup
        .wait_dead_letters(2, Duration::from_secs(10), &host)
        .await;
    assert!(header(&records[1], "Jetwasm-Reason").starts_with("publish denied"));
    assert!(
        setup.js.get_stream("ORDERS").await.is_ok(),
        "ORDERS still exists"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_recovers_when_the_server_restarts_without_being_restarted_itself() {
    // File storage so the stream and consumer survive the server restart.
    let server_consumer = "ack_wait = \"2s\"";
    let mut setup = Setup::new(server_consumer).await;
    let text = streams(server_consumer).replace("storage = \"memory\"", "storage = \"file\"");
    let js = setup.js.clone();
    let names: Vec<String> = js.stream_names().try_collect().await.unwrap();
    for name in names {
        js.delete_stream(name).await.unwrap();
    }
    std::fs::write(setup.dir.path().join("streams.toml"), text).unwrap();
    let host = setup.host("orders", "").await;
    setup.publish_all((0..100).map(order)).await;
    setup.drained(Duration::from_secs(20), &host).await;

    setup.server.restart().await.unwrap();
    let js = setup.server.jetstream().await.unwrap();
    setup.js = js;
    setup.publish_all((100..200).map(order)).await;
    setup.drained(Duration::from_secs(60), &host).await;
    assert_eq!(setup.count("ORDERS", "orders.processed").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_publisher_publishes_once_per_tick_with_derived_ids() {
    let setup = Setup::new(QUICK_RETRIES).await;
    let config = setup.publisher_config(
        &handler_wasm("orders_generator"),
        "every = \"200ms\"\nconfig = { invalid_every = 5 }",
    );
    let mut host = Host::start(&setup.server.url, &config).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    host.stop_gracefully(Duration::from_secs(10)).await.unwrap();

    let messages = setup.messages("ORDERS").await;
    assert!(
        messages.len() >= 5,
        "about ten ticks in 2s, got {}",
        messages.len()
    );
    let mut ids = std::collections::BTreeSet::new();
    for (i, message) in messages.iter().enumerate() {
        let seq = i + 1;
        // The host derives the message id from the firing's due time: unique across restarts.
        let id = message
            .headers
            .get("Nats-Msg-Id")
            .unwrap()
            .as_str()
            .to_owned();
        assert!(id.starts_with("p:tick:") && id.ends_with(":1"), "{id}");
        assert!(ids.insert(id), "message ids are unique");
        let order: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        let order_id = order["id"].as_str().unwrap();
        assert!(order_id.ends_with(&format!("-{seq}")), "{order}");
        // Every fifth order is deliberately invalid (no customer), for the dead-letter path.
        assert_eq!(order.get("customer").is_none(), seq % 5 == 0, "{order}");
    }

    // A restart publishes new orders: none is dropped as a duplicate of the first run's.
    let stored = messages.len();
    host.restart(&setup.server.url).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    host.stop_gracefully(Duration::from_secs(10)).await.unwrap();
    let after_restart = setup.messages("ORDERS").await.len();
    assert!(after_restart >= stored + 3, "{stored} then {after_restart}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_tick_never_overlaps_the_next_and_missed_ticks_are_counted() {
    let setup = Setup::new(QUICK_RETRIES).await;
    let config = setup.publisher_config(
        &handler_wasm("fixture_slow_publisher"),
        "every = \"100ms\"\nconfig = { sleep_ms = 300 }",
    );
    let mut host = Host::start(&setup.server.url, &config).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let missed = host
        .metric("jetwasm_publisher_missed_ticks_total{publisher=\"p\"}")
        .unwrap();
    host.stop_gracefully(Duration::from_secs(10)).await.unwrap();

    let payloads: Vec<String> = setup
        .messages("TICKS")
        .await
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    assert!(payloads.len() >= 6, "{payloads:?}");
    assert_eq!(
        payloads.len() % 2,
        0,
        "every started tick finished, even at shutdown: {payloads:?}"
    );
    let mut last_seq = 0;
    for pair in payloads.chunks(2) {
        let seq: u64 = pair[0]
            .strip_prefix("start:")
            .expect("a tick starts")
            .parse()
            .unwrap();
        assert_eq!(
            pair[1],
            format!("end:{seq}"),
            "the tick ends before the next starts: {payloads:?}"
        );
        assert!(seq > last_seq, "{payloads:?}");
        last_seq = seq;
    }
    assert!(
        missed >= 2.0,
        "a 300ms tick every 100ms misses firings: {missed}"
    );
    let ticks_run = (payloads.len() / 2) as u64;
    assert!(
        last_seq > ticks_run,
        "tick numbers count the missed firings: {payloads:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_of_the_wrong_world_is_rejected() {
    let setup = Setup::new(QUICK_RETRIES).await;
    let config = setup.publisher_config(&handler_wasm("noop"), "every = \"1s\"");
    let mut host = Host::spawn(&setup.server.url, &config).unwrap();
    assert!(!host
        .wait_exit(Duration::from_secs(30))
        .await
        .unwrap()
        .success());
    let log = host.log();
    assert!(
        log.contains("publisher p") && log.contains("does not fit the publisher world"),
        "{log}"
    );
    assert!(log.contains("on-tick"), "names the missing export: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_starts_a_local_jetstream_runs_the_components_and_stops_it_with_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let (mut up, port) = start_up(dir.path()).await;
    let log = || std::fs::read_to_string(dir.path().join("up.log")).unwrap_or_default();

    // Its own server, with the streams applied and the handler at work.
    let url = format!("nats://127.0.0.1:{port}");
    let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    js.publish("orders.created", order(1).into())
        .await
        .unwrap()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = js
            .get_stream("ORDERS")
            .await
            .unwrap()
            .consumer_info("proc")
            .await
            .unwrap();
        if info.ack_floor.stream_sequence == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "not processed:\n{}", log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        dir.path().join("data/jetstream").is_dir(),
        "data under --data"
    );

    let pid = up.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = up.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running:\n{}", log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{}", log());
    assert!(log().contains("stopped the local nats-server"), "{}", log());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the local server stopped with the host"
    );
}

/// Starts `jetwasm up` in `dir` (its own nats-server on a free port, the orders handler),
/// logging to `dir/up.log`; returns once it is ready, with the server's port.
async fn start_up(dir: &std::path::Path) -> (std::process::Child, u16) {
    std::fs::write(dir.join("streams.toml"), streams(QUICK_RETRIES)).unwrap();
    let http = std::net::SocketAddr::from(([127, 0, 0, 1], harness::free_port()));
    let port = harness::free_port();
    let config = format!(
        r#"
streams = "streams.toml"

[runtime]
http = "{http}"

[[handler]]
name = "h"
component = "{}"
stream = "ORDERS"
consumer = "proc"
publish = ["orders.processed"]
"#,
        handler_wasm("orders").display()
    );
    std::fs::write(dir.join("jetwasm.toml"), config).unwrap();
    let mut up = std::process::Command::new(env!("CARGO_BIN_EXE_jetwasm"))
        .args(["up", "--config"])
        .arg(dir.join("jetwasm.toml"))
        .arg("--data")
        .arg(dir.join("data"))
        .args(["--port", &port.to_string()])
        .env("NATS_SERVER_BIN", harness::nats_server_bin().unwrap())
        .env_remove("NATS_URL")
        .stderr(std::fs::File::create(dir.join("up.log")).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(dir.join("up.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !matches!(http_get(http, "/readyz"), Ok((200, _))) {
        assert!(up.try_wait().unwrap().is_none(), "exited:\n{}", log());
        assert!(Instant::now() < deadline, "not ready:\n{}", log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (up, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_leaves_no_nats_server_behind_even_when_killed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut up, port) = start_up(dir.path()).await;
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    up.kill().unwrap(); // SIGKILL: no chance to stop the server itself
    up.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "nats-server outlived the killed host"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_errors_are_typed_and_reach_the_component() {
    let setup = Setup::new(QUICK_RETRIES).await;
    for (subject, expected) in [
        ("nostream.x", "NoStream(\"nostream.x\")"),
        ("payments.x", "Denied(\"payments.x\")"),
    ] {
        let extra = format!("every = \"100ms\"\nconfig = {{ subject = \"{subject}\" }}");
        let config = setup.publisher_config(&handler_wasm("orders_generator"), &extra);
        let host = Host::start(&setup.server.url, &config).await.unwrap();
        setup.js.delete_stream("NOSTREAM").await.unwrap();
        let errors = "jetwasm_publisher_ticks_total{outcome=\"error\",publisher=\"p\"}";
        host.wait_metric(errors, 3.0, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(
            host.log().contains(expected),
            "{expected} in:\n{}",
            tail(&host.log())
        );
        assert_eq!(host.metric(&errors.replace("error", "ok")).unwrap(), 0.0);
    }
    assert_eq!(setup.count("PAYMENTS", ">").await, 0);
}

const POST_ORDERS: &str = "http = { method = \"POST\", path = \"/orders\" }";

fn post(host: &Host, body: &str, headers: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let (status, body) =
        http_request(host.http, "POST", "/orders", headers, body.as_bytes()).unwrap();
    let json = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body:?}"));
    (status, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_route_serves_every_path_under_its_prefix() {
    let setup = Setup::new("").await;
    let route = "http = { method = \"POST\", path = \"/api/{*rest}\" }";
    let config = setup.publisher_config(&handler_wasm("fixture_http_validate"), route);
    let host = Host::start(&setup.server.url, &config).await.unwrap();
    let body = order(1);
    let post = |path: &str| http_request(host.http, "POST", path, &[], body.as_bytes()).unwrap();
    for path in ["/api/orders", "/api/v2/orders/new", "/api/"] {
        assert_eq!(post(path).0, 202, "{path}");
    }
    assert_eq!(post("/api").0, 404, "the prefix itself is not under it");
    assert_eq!(post("/apis/x").0, 404);
    assert_eq!(
        http_request(host.http, "GET", "/api/orders", &[], b"")
            .unwrap()
            .0,
        405,
        "served for POST only"
    );
    assert_eq!(
        http_get(host.http, "/metrics").unwrap().0,
        200,
        "the host's own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outgoing_http_request_is_refused_with_its_error_code_logged_and_foretold_by_check() {
    let wasm = handler_wasm("fixture_http_edges");
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_jetwasm"))
        .arg("check")
        .arg(&wasm)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{check:?}");
    assert!(
        said.contains("fits the http-publisher world")
            && said.contains("note: it imports wasi:http/outgoing-handler")
            && said.contains("HTTP-request-denied"),
        "check says outgoing HTTP will be refused: {said}"
    );

    let setup = Setup::new("").await;
    let config = setup.publisher_config(&wasm, POST_ORDERS);
    let host = Host::start(&setup.server.url, &config).await.unwrap();
    let (status, body) = http_request(host.http, "POST", "/orders", &[], b"{}").unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "refused: ErrorCode::HttpRequestDenied"),
        "the guest gets the error code at once"
    );
    let log = host.log();
    assert!(
        log.contains("outgoing HTTP request refused (HTTP-request-denied)")
            && log.contains("uri=http://example.com/"),
        "{log}"
    );
}

/// A guest that fails after it answered and wrote part of the body: an HTTP/1.1 client gets a
/// broken response (the connection closes before the chunked body's last chunk), not a short
/// one that looks whole, and the host logs why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_body_that_fails_mid_stream_breaks_the_response_and_is_logged() {
    use std::io::{Read as _, Write as _};
    let setup = Setup::new("").await;
    let route = "http = { method = \"POST\", path = \"/{*rest}\" }";
    let config = setup.publisher_config(&handler_wasm("fixture_http_edges"), route);
    let host = Host::start(&setup.server.url, &config).await.unwrap();
    let mut stream = std::net::TcpStream::connect(host.http).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let request =
        "POST /midstream HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    // What the client has when the connection closes: nothing, or the head and part of a
    // chunked body (hyper may not have flushed the first part before the failure), never a
    // whole response.
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.is_empty()
            || (response.starts_with("HTTP/1.1 200")
                && (response.to_ascii_lowercase()).contains("transfer-encoding: chunked")),
        "{response}"
    );
    assert!(
        !response.ends_with("0\r\n\r\n"),
        "the body must not end as if whole: {response:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !host.log().contains("response body failed mid-stream") {
        assert!(Instant::now() < deadline, "{}", host.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        host.log()
            .contains("failing after the first part of the body"),
        "the guest's own words: {}",
        host.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_http_orders_become_a_thousand_messages_with_matching_sequences() {
    let setup = Setup::new(QUICK_RETRIES).await;
    let config = setup.publisher_config(&handler_wasm("orders_intake"), POST_ORDERS);
    let host = Host::start(&setup.server.url, &config).await.unwrap();
    let mut sequences = Vec::new();
    for i in 0..1_000 {
        let (status, ack) = post(&host, &order(i), &[]);
        assert_eq!(status, 202, "{ack}");
        assert_eq!(ack["stream"], "ORDERS");
        assert_eq!(ack["duplicate"], false);
        sequences.push(ack["seq"].as_u64().unwrap());
    }
    let stored = setup.messages("ORDERS").await;
    assert_eq!(stored.len(), 1_000);
    let stored_sequences: Vec<u64> = stored.iter().map(|m| m.sequence).collect();
    assert_eq!(
        sequences, stored_sequences,
        "each 202 names the sequence it was stored at"
    );
    for (i, message) in stored.iter().enumerate() {
        assert_eq!(&message.payload[..], order(i).as_bytes());
        assert_eq!(
            message.headers.get("order-id").unwrap().as_str(),
            format!("o-{i}")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_intake_answers_each_case_with_a_clear_status() {
    let setup = Setup::new(QUICK_RETRIES).await;
    let limits = format!("{POST_ORDERS}\nlimits = {{ max_message_size = \"4KiB\" }}");
    let config = setup.publisher_config(&handler_wasm("orders_intake"), &limits);
    let host = Host::start(&setup.server.url, &config).await.unwrap();

    // The same idempotency key twice: one message, the same sequence, flagged duplicate.
    let key = [("Idempotency-Key", "order-42")];
    let (first, a) = post(&host, &order(42), &key);
    let (second, b) = post(&host, &order(42), &key);
    assert_eq!((first, second), (202, 202));
    assert_eq!(a["seq"], b["seq"]);
    assert_eq!(
        (a["duplicate"].as_bool(), b["duplicate"].as_bool()),
        (Some(false), Some(true))
    );

    // Bad input is the component's to judge: 400 with the reason, nothing published.
    let (status, error) = post(&host, "{not json", &[]);
    assert_eq!(status, 400);
    assert!(error["error"].as_str().unwrap().contains("JSON"), "{error}");
    let (status, error) = post(&host, r#"{"id":"o-1","items":[1],"total":1}"#, &[]);
    assert_eq!(status, 400);
    assert!(
        error["error"].as_str().unwrap().contains("customer"),
        "{error}"
    );
    // Over the host's body cap: refused before the component runs.
    let (status, error) = post(&host, &"x".repeat(5_000), &[]);
    assert_eq!(status, 413, "{error}");
    // Another route is not served.
    let (status, _) = http_request(host.http, "GET", "/orders", &[], b"").unwrap();
    assert_eq!(status, 405);
    assert_eq!(setup.messages("ORDERS").await.len(), 1);
    let requests = |status: &str| {
        let sample = format!("jetwasm_http_requests_total{{publisher=\"p\",status=\"{status}\"}}");
        host.metric(&sample).unwrap()
    };
    assert_eq!(
        (requests("202"), requests("400"), requests("413")),
        (2.0, 2.0, 1.0)
    );

    // A subject outside the allow-list: 403; no stream captures the subject: 503. Each names
    // the subject, and nothing is published.
    for (subject, expected) in [("payments.x", 403), ("nostream.x", 503)] {
        let extra = format!("{POST_ORDERS}\nconfig = {{ subject = \"{subject}\" }}");
        let config = setup.publisher_config(&handler_wasm("orders_intake"), &extra);
        let host = Host::start(&setup.server.url, &config).await.unwrap();
        setup.js.delete_stream("NOSTREAM").await.unwrap();
        let (status, error) = post(&host, &order(1), &[]);
        assert_eq!(status, expected, "{error}");
        assert!(
            error["error"].as_str().unwrap().contains(subject),
            "{error}"
        );
    }
    assert_eq!(setup.count("PAYMENTS", ">").await, 0);
    assert_eq!(setup.messages("ORDERS").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_gets_no_environment_files_or_network() {
    let setup = Setup::new(QUICK_RETRIES).await;
    // A listener the guest will try to reach: it must never see a connection.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let target = listener.local_addr().unwrap().to_string();
    let host = setup.host("fixture_sandbox_probe", "").await;
    setup.publish_all([target]).await;
    let records = setup
        .wait_dead_letters(1, Duration::from_secs(10), &host)
        .await;
    let report = header(&records[0], "Jetwasm-Reason");
    assert!(report.starts_with("env=0 "), "no environment: {report}");
    assert!(report.contains("file=denied"), "no files: {report}");
    assert!(report.contains("dir=denied"), "no directories: {report}");
    assert!(report.contains("net=denied"), "no network: {report}");
    assert!(
        listener.accept().is_err(),
        "nothing connected to the host's listener"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_dead_letter_outage_on_the_last_delivery_loses_nothing() {
    // One delivery only: a nak would never bring the message back, so the host holds it and
    // keeps trying the record, past the ~8s it allows when a redelivery would follow.
    let setup = Setup::new("max_deliver = 1").await;
    let host = setup.host("orders", "").await;
    setup.js.delete_stream("DEADLETTER").await.unwrap();
    setup.publish_all(["{not json".to_owned()]).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(setup.consumer().await.num_ack_pending == 1, "still held");
    setup.apply_streams().await;
    let records = setup
        .wait_dead_letters(1, Duration::from_secs(15), &host)
        .await;
    assert!(header(&records[0], "Jetwasm-Reason").starts_with("invalid JSON"));
    setup.drained(Duration::from_secs(5), &host).await;
    assert!(
        host.log()
            .contains("dead letter still not written on the message's last delivery"),
        "{}",
        tail(&host.log())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brief_dead_letter_outage_loses_nothing() {
    let setup = Setup::new(QUICK_RETRIES).await;
    let host = setup.host("orders", "").await;
    setup.js.delete_stream("DEADLETTER").await.unwrap();
    setup.publish_all(["{not json".to_owned()]).await;
    // The host retries the record while the stream is missing, then writes it once it is back.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    setup.apply_streams().await;
    let records = setup
        .wait_dead_letters(1, Duration::from_secs(15), &host)
        .await;
    assert!(header(&records[0], "Jetwasm-Reason").starts_with("invalid JSON"));
    setup.drained(Duration::from_secs(5), &host).await;
    assert!(
        host.log().contains("dead letter not written; retrying"),
        "{}",
        tail(&host.log())
    );
    assert_eq!(
        setup.consumer().await.num_redelivered,
        0,
        "termed on its first delivery"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_retried_past_the_ack_wait_never_runs_the_handler_again() {
    // A 1s ack wait, far shorter than the record's retry pauses (250ms doubling to 4s): the
    // message must stay in progress through every pause, or JetStream redelivers it mid-retry.
    let setup = Setup::new("max_deliver = 5\nack_wait = \"1s\"").await;
    let host = setup.host("orders", "").await;
    setup.js.delete_stream("DEADLETTER").await.unwrap();
    setup
        .publish_all((0..20).map(|i| format!("{{not json {i}")))
        .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    setup.apply_streams().await;
    setup
        .wait_dead_letters(20, Duration::from_secs(30), &host)
        .await;
    setup.drained(Duration::from_secs(10), &host).await;
    assert_eq!(
        host.metric(&sample("term")).unwrap(),
        20.0,
        "each message handled once\n{}",
        tail(&host.log())
    );
    assert_eq!(setup.consumer().await.num_redelivered, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_at_the_servers_max_payload_is_dead_lettered_with_its_payload_truncated() {
    let setup = Setup::new(QUICK_RETRIES).await;
    let host = setup.host("orders", "").await;
    let max_payload = setup
        .server
        .client()
        .await
        .unwrap()
        .server_info()
        .max_payload;
    // Not JSON, so the orders handler terms it; with the record's headers it cannot fit.
    let size = max_payload - 64;
    setup.publish_all(["x".repeat(size)]).await;
    let records = setup
        .wait_dead_letters(1, Duration::from_secs(15), &host)
        .await;
    let record = &records[0];
    assert_eq!(header(record, "Jetwasm-Truncated"), size.to_string());
    assert!(header(record, "Jetwasm-Reason").starts_with("invalid JSON"));
    assert_eq!(
        header(record, "Jetwasm-Sequence"),
        "1",
        "the original stays findable"
    );
    assert!(record.payload.len() < size && record.payload.iter().all(|b| *b == b'x'));
    assert!(
        record.payload.len() > size - 1024,
        "only what does not fit is cut"
    );
    setup.drained(Duration::from_secs(10), &host).await;
    assert_eq!(host.metric(&sample("term")).unwrap(), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_order_during_an_outage_gets_a_quick_503_and_is_never_stored_later() {
    // File storage, so anything the host's client buffered during the outage and sent on
    // reconnect would show up in the stream afterwards.
    let mut setup = Setup::new(QUICK_RETRIES).await;
    let text = streams(QUICK_RETRIES).replace("storage = \"memory\"", "storage = \"file\"");
    let names: Vec<String> = setup.js.stream_names().try_collect().await.unwrap();
    for name in names {
        setup.js.delete_stream(name).await.unwrap();
    }
    std::fs::write(setup.dir.path().join("streams.toml"), &text).unwrap();
    setup.apply_streams().await;
    let config = setup.publisher_config(&handler_wasm("orders_intake"), POST_ORDERS);
    let host = Host::start(&setup.server.url, &config).await.unwrap();
    assert_eq!(post(&host, &order(0), &[]).0, 202);

    setup.server.kill().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 1..=5 {
        let started = Instant::now();
        let (status, head, body) =
            http_exchange(host.http, "POST", "/orders", &[], order(i).as_bytes()).unwrap();
        assert_eq!(status, 503, "{body}");
        assert!(head.contains("retry-after: 1"), "{head}");
        assert!(body.contains("not connected"), "{body}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    setup.server.start_again().await.unwrap();
    setup.js = setup.server.jetstream().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while post(&host, &order(6), &[]).0 != 202 {
        assert!(Instant::now() < deadline, "{}", tail(&host.log()));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ids: Vec<String> = setup
        .messages("ORDERS")
        .await
        .iter()
        .map(|m| m.headers.get("order-id").unwrap().to_string())
        .collect();
    assert_eq!(ids, ["o-0", "o-6"], "nothing from the outage was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_unlimited_deliveries_a_poison_message_is_dead_lettered_at_max_failures() {
    // No max_deliver on the consumer: JetStream would redeliver a trapping message forever.
    let setup = Setup::new("backoff = [\"100ms\"]").await;
    let config = setup.config(&handler_wasm("fixture_trap"), "", "max_failures = 4");
    let host = Host::start(&setup.server.url, &config).await.unwrap();
    assert!(
        host.log().contains("max_deliver is unlimited"),
        "warned at bind\n{}",
        host.log()
    );
    setup.publish_all(["boom".to_owned()]).await;
    let records = setup
        .wait_dead_letters(1, Duration::from_secs(10), &host)
        .await;
    let reason = header(&records[0], "Jetwasm-Reason");
    assert!(
        reason.ends_with("(delivery 4; the host gives up after 4 failed deliveries)"),
        "{reason}"
    );
    setup.drained(Duration::from_secs(5), &host).await;
    assert_eq!(host.metric(&sample("trap")).unwrap(), 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_load_beside_a_backlog_on_a_small_pool_fails_no_call_and_answers_no_500() {
    let setup = Setup::new(QUICK_RETRIES).await;
    // Four handler calls and two HTTP requests at once: the pool reserves exactly that (plus
    // its spare), and 32 clients at once must wait their turn or get a 503, never a trap.
    let mut config = setup.config(
        &handler_wasm("orders"),
        "limits = { max_in_flight = 4 }",
        "",
    );
    config.push_str(&format!(
        "\n[[publisher]]\nname = \"intake\"\ncomponent = \"{}\"\n{POST_ORDERS}\npublish = [\"orders.created\"]\nlimits = {{ max_in_flight = 2 }}\n",
        handler_wasm("orders_intake").display()
    ));
    let host = Host::start(&setup.server.url, &config).await.unwrap();
    setup.publish_all((0..2_000).map(order)).await;

    let http = host.http;
    let clients: Vec<_> = (0..32)
        .map(|client| {
            std::thread::spawn(move || {
                (0..30)
                    .map(|i| {
                        let body = order(10_000 + client * 100 + i);
                        let (status, _) =
                            http_request(http, "POST", "/orders", &[], body.as_bytes()).unwrap();
                        status
                    })
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    let statuses: Vec<u16> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    let accepted = statuses.iter().filter(|s| **s == 202).count();
    let busy = statuses.iter().filter(|s| **s == 503).count();
    assert_eq!(
        accepted + busy,
        statuses.len(),
        "only 202 or 503: {statuses:?}"
    );
    let busy_metric = "jetwasm_http_requests_total{publisher=\"intake\",status=\"503\"}";
    assert_eq!(host.metric(busy_metric).unwrap(), busy as f64);

    setup.drained(Duration::from_secs(60), &host).await;
    assert_eq!(
        setup.count("ORDERS", "orders.processed").await,
        2_000 + accepted
    );
    for outcome in ["trap", "host", "timeout"] {
        assert_eq!(host.metric(&sample(outcome)).unwrap(), 0.0, "{outcome}");
    }
    assert!(setup.dead_letters().await.is_empty());
    println!("{accepted} requests accepted, {busy} answered 503");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_javascript_handlers_reused_under_a_burst_never_trap_for_want_of_room() {
    // Interpreters' components hold many core instances each: 64 warm ones at once must fit
    // the pool the host sized, or valid orders trap and are retried for nothing.
    for component in ["orders_python", "orders_js"] {
        let setup = Setup::new(QUICK_RETRIES).await;
        let host = setup.host(component, "instances = \"reuse\"").await;
        setup.publish_all((0..1_500).map(order)).await;
        setup.drained(Duration::from_secs(120), &host).await;
        assert_eq!(
            setup.count("ORDERS", "orders.processed").await,
            1_500,
            "{component}"
        );
        for outcome in ["trap", "host"] {
            assert_eq!(
                host.metric(&sample(outcome)).unwrap(),
                0.0,
                "{component}: {outcome}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_with_unreadable_headers_are_dead_lettered_and_their_neighbours_processed() {
    use base64::Engine as _;
    let setup = Setup::new(QUICK_RETRIES).await;
    // Three messages the server stores but no UTF-8 reader takes, among valid orders, so all
    // arrive in one pull batch.
    let poison: [&[u8]; 3] = [
        b"NATS/1.0\r\nX-Bad: \xff\xfe\r\n\r\n",
        "NATS/1.0\r\nNa\u{ef}ve: 1\r\n\r\n".as_bytes(),
        b"NATS/1.0\r\nno colon here\r\n\r\n",
    ];
    let mut frames = Vec::new();
    for i in 0..10 {
        frames.extend(harness::pub_frame(b"orders.created", order(i).as_bytes()));
    }
    for (i, headers) in poison.iter().enumerate() {
        frames.extend(harness::hpub_frame(
            b"orders.created",
            headers,
            format!("poison-{i}").as_bytes(),
        ));
    }
    for i in 10..20 {
        frames.extend(harness::pub_frame(b"orders.created", order(i).as_bytes()));
    }
    harness::publish_raw(&setup.server.url, &frames).unwrap();

    let host = setup.host("orders", "").await;
    let records = setup
        .wait_dead_letters(3, Duration::from_secs(15), &host)
        .await;
    setup.drained(Duration::from_secs(10), &host).await;
    assert_eq!(setup.count("ORDERS", "orders.processed").await, 20);
    let expected = [
        "a header is not valid UTF-8",
        "a header name is not a valid token",
        "a header line has no colon",
    ];
    for record in &records {
        // Lanes run concurrently: find each record's message by its payload, kept intact.
        let payload = std::str::from_utf8(&record.payload).unwrap();
        let i: usize = payload.strip_prefix("poison-").unwrap().parse().unwrap();
        let reason = header(record, "Jetwasm-Reason");
        assert!(reason.contains(expected[i]), "{reason}");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(header(record, "Jetwasm-Original-Headers"))
            .unwrap();
        assert_eq!(raw, poison[i], "raw headers intact");
    }
    assert_eq!(host.metric(&sample("unreadable")).unwrap(), 3.0);
    assert_eq!(
        setup.consumer().await.num_redelivered,
        0,
        "no delivery lost its connection"
    );
    assert!(
        !host.log().contains("disconnected"),
        "{}",
        tail(&host.log())
    );
}

#[tokio::test]
async fn the_client_reads_a_subject_that_is_not_utf8_and_keeps_its_connection() {
    use futures::StreamExt as _;
    let server = harness::NatsServer::start().await.unwrap();
    let client = server.client().await.unwrap();
    let mut messages = client.subscribe("balance.>").await.unwrap();
    // `flush` does not wait for the server, so the raw publisher below (another connection)
    // could beat the SUB: a marker on this connection proves the server has it.
    client.publish("balance.ready", "".into()).await.unwrap();
    let within = Duration::from_secs(5);
    let marker = tokio::time::timeout(within, messages.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(marker.subject.as_str(), "balance.ready");
    let mut frames = harness::pub_frame(b"balance.\xff", b"first");
    frames.extend(harness::pub_frame(b"balance.ok", b"second"));
    harness::publish_raw(&server.url, &frames).unwrap();

    let first = tokio::time::timeout(within, messages.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.subject.as_str(), "balance.\u{fffd}");
    assert_eq!(&first.payload[..], b"first");
    let lossy = first.headers.as_ref().unwrap();
    assert_eq!(
        lossy
            .get(async_nats::header::NATS_CLIENT_LOSSY)
            .unwrap()
            .as_str(),
        "the subject is not valid UTF-8"
    );
    let second = tokio::time::timeout(within, messages.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (second.subject.as_str(), &second.payload[..]),
        ("balance.ok", &b"second"[..])
    );
    assert_eq!(
        client
            .statistics()
            .connects
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_connection_is_replaced_within_seconds_and_nothing_is_lost_or_doubled() {
    let setup = Setup::new("ack_wait = \"2s\"\nmax_deliver = 20").await;
    let proxy = harness::Proxy::start(&setup.server.url).await.unwrap();
    let config = setup.config(&handler_wasm("orders"), "", "");
    let host = Host::start(&proxy.url, &config).await.unwrap();
    setup.publish_all((0..200).map(order)).await;
    setup.drained(Duration::from_secs(30), &host).await;

    // The host's connection goes silent; nothing is closed. Orders keep arriving.
    proxy.freeze();
    let frozen = Instant::now();
    setup.publish_all((200..400).map(order)).await;
    let mut not_ready = None;
    while setup.count("ORDERS", "orders.processed").await < 400 {
        assert!(
            frozen.elapsed() < Duration::from_secs(90),
            "not recovered after 90s\n{}",
            tail(&host.log())
        );
        if let Ok((503, why)) = http_get(host.http, "/readyz") {
            not_ready.get_or_insert(why);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let recovered = frozen.elapsed();
    println!("processing resumed and caught up {recovered:?} after the freeze");
    setup.drained(Duration::from_secs(20), &host).await;
    assert_eq!(
        setup.count("ORDERS", "orders.processed").await,
        400,
        "each order processed once (derived ids absorb the redeliveries)"
    );
    let why = not_ready.expect("/readyz said 503 while no pull was alive");
    assert!(why.contains("no live pull for handler h"), "{why}");
    assert!(recovered < Duration::from_secs(40), "{recovered:?}");
    assert!(
        host.log().contains("forcing a reconnect"),
        "{}",
        tail(&host.log())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_publishers_ticks_during_an_outage_count_as_failed_not_skipped() {
    let mut setup = Setup::new(QUICK_RETRIES).await;
    let config = setup.publisher_config(&handler_wasm("orders_generator"), "every = \"200ms\"");
    let host = Host::start(&setup.server.url, &config).await.unwrap();
    let ok = "jetwasm_publisher_ticks_total{outcome=\"ok\",publisher=\"p\"}";
    host.wait_metric(ok, 2.0, Duration::from_secs(10))
        .await
        .unwrap();

    setup.server.kill().unwrap();
    // A publish while disconnected fails at once, so each tick ends as a failure an alert
    // can see, instead of hanging until the next firings are skipped.
    let errors = "jetwasm_publisher_ticks_total{outcome=\"error\",publisher=\"p\"}";
    host.wait_metric(errors, 5.0, Duration::from_secs(10))
        .await
        .unwrap();
    let missed = host
        .metric("jetwasm_publisher_missed_ticks_total{publisher=\"p\"}")
        .unwrap();
    assert!(missed <= 1.0, "ticks were skipped: {missed}");
    assert!(
        host.log().contains("not connected to NATS"),
        "{}",
        tail(&host.log())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_delivery_no_host_settles_is_dead_lettered_from_the_stream_by_another_host() {
    // One delivery allowed, and the host holding it is killed mid-call: nobody handles the
    // last delivery. Another host hears JetStream's max-deliveries advisory and writes the
    // dead letter from the stream's copy.
    let setup = Setup::new("max_deliver = 1\nack_wait = \"3s\"").await;
    let slow = "config = { sleep_ms = 20000 }\nlimits = { timeout = \"30s\" }";
    let mut first = setup.host("fixture_slow", slow).await;
    setup.publish_all(["hold me".to_owned()]).await;
    let in_flight = "jetwasm_in_flight{handler=\"h\"}";
    first
        .wait_metric(in_flight, 1.0, Duration::from_secs(10))
        .await
        .unwrap();
    first.kill().unwrap();
    // The second host's short call timeout makes its sweeper wait only 2s + 5s for a host that
    // might still be working on the message.
    let second = setup
        .host("fixture_slow", "limits = { timeout = \"2s\" }")
        .await;

    let records = setup
        .wait_dead_letters(1, Duration::from_secs(30), &second)
        .await;
    let record = &records[0];
    assert_eq!(&record.payload[..], b"hold me");
    assert_eq!(header(record, "Jetwasm-Sequence"), "1");
    assert_eq!(header(record, "Jetwasm-Subject"), "orders.created");
    let reason = header(record, "Jetwasm-Reason");
    assert!(reason.contains("max-deliveries advisory"), "{reason}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(setup.dead_letters().await.len(), 1, "exactly one record");
    assert_eq!(
        second.metric("jetwasm_in_flight{handler=\"h\"}").unwrap(),
        0.0,
        "never delivered again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_changed_by_hand_shows_as_drift_until_the_spec_is_applied_again() {
    let setup = Setup::new(QUICK_RETRIES).await;
    let host = setup.host("orders", "").await;
    let drift = "jetwasm_consumer_drift{handler=\"h\"}";
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        host.metric(drift).unwrap(),
        0.0,
        "matches the spec it applied"
    );

    setup.change_consumer(|config| config.max_deliver = 7).await;
    host.wait_metric(drift, 1.0, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        host.log().contains("max_deliver 7 (the spec says 3)"),
        "{}",
        tail(&host.log())
    );

    setup.apply_streams().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while host.metric(drift).unwrap() != 0.0 {
        assert!(Instant::now() < deadline, "{}", tail(&host.log()));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(host
        .log()
        .contains("consumer matches the streams spec again"));
}

/// Per-key order, as a handler with `ordering = { key = "header:Order-Id" }` and 16 calls at
/// once sees it: 50 keys × 200 events, each handled after a random delay, one in twenty
/// nak'd once. Every key's events are handled one at a time in stream order (the handler
/// records each by publishing it), none lost, none twice. (Without `ordering`, this fails:
/// keys' events are seen out of order.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_keys_events_are_handled_in_stream_order_despite_delays_and_naks() {
    use futures::StreamExt as _;
    const KEYS: usize = 50;
    const EVENTS: usize = 200;
    let setup = Setup::new(QUICK_RETRIES).await;
    let handler = "ordering = { key = \"header:Order-Id\" }\nlimits = { max_in_flight = 16 }\nconfig = { output = \"orders.audited\" }";
    let host = setup.host("fixture_ordered", handler).await;
    let mut random = 7u64;
    let mut next = move |n: u64| {
        random = random
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (random >> 33) % n
    };
    let mut pending = Vec::new();
    for seq in 0..EVENTS {
        for key in 0..KEYS {
            let nak = if next(20) == 0 { " nak" } else { "" };
            let payload = format!("k{key} {seq} {}{nak}", next(4));
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Order-Id", format!("k{key}").as_str());
            let ack = setup
                .js
                .publish_with_headers("orders.created", headers, payload.into())
                .await
                .unwrap();
            pending.push(ack);
            if pending.len() == 500 {
                for ack in pending.drain(..) {
                    ack.await.unwrap();
                }
            }
        }
    }
    for ack in pending {
        ack.await.unwrap();
    }
    let total = KEYS * EVENTS;
    let deadline = Instant::now() + Duration::from_secs(120);
    while setup.count("ORDERS", "orders.audited").await < total {
        assert!(Instant::now() < deadline, "{}", tail(&host.log()));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    setup.drained(Duration::from_secs(30), &host).await;

    // What the handler saw, in the order it saw it.
    let stream = setup.stream("ORDERS").await;
    let reader = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: "orders.audited".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut seen: Vec<Vec<usize>> = vec![Vec::new(); KEYS];
    let mut messages = reader.messages().await.unwrap().take(total);
    while let Some(message) = messages.next().await {
        let text = String::from_utf8(message.unwrap().payload.to_vec()).unwrap();
        let (key, seq) = text.split_once(' ').unwrap();
        let key: usize = key.trim_start_matches('k').parse().unwrap();
        seen[key].push(seq.parse().unwrap());
    }
    let in_order: Vec<usize> = (0..EVENTS).collect();
    for (key, events) in seen.iter().enumerate() {
        assert_eq!(events, &in_order, "key k{key}");
    }
    assert_eq!(
        setup.count("ORDERS", "orders.audited").await,
        total,
        "none twice"
    );
    assert!(
        host.metric(&sample("nak")).unwrap() > 0.0,
        "some were nak'd"
    );
}

/// A handler's shadow candidate sees every message (`sample = 1.0`) after the live version
/// decided, and its verdict is only counted and logged: whether it agrees (the same component),
/// traps, loops until its timeout, naks or terms everything, JetStream sees the live version's
/// work alone (every order acked and processed once, nothing nak'd or dead-lettered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_candidate_is_compared_but_never_changes_what_jetstream_sees() {
    const ORDERS: usize = 10;
    let shadow =
        |result: &str| format!("jetwasm_shadow_total{{handler=\"h\",result=\"{result}\"}}");
    for (candidate, agrees) in [
        ("orders", true),
        ("fixture_trap", false),
        ("fixture_loop", false),
        ("fixture_nak", false),
        ("fixture_ordered", false), // terms every order: not its payload format
    ] {
        let setup = Setup::new("").await;
        let keys = format!(
            "shadow = {{ component = {:?}, sample = 1.0 }}\nlimits = {{ timeout = \"500ms\" }}",
            handler_wasm(candidate).display().to_string()
        );
        let host = setup.host("orders", &keys).await;
        for i in 0..ORDERS {
            setup.publish_all([order(i)]).await;
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        setup.drained(Duration::from_secs(30), &host).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        let counted = |host: &Host| {
            ["agree", "differ", "skipped"]
                .map(|result| host.metric(&shadow(result)).unwrap())
                .iter()
                .sum::<f64>()
        };
        while counted(&host) < ORDERS as f64 {
            assert!(
                Instant::now() < deadline,
                "{candidate}: {}",
                tail(&host.log())
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // What JetStream sees: the live version's work, whatever the candidate did.
        assert_eq!(
            host.metric(&sample("ack")).unwrap(),
            ORDERS as f64,
            "{candidate}"
        );
        assert_eq!(host.metric(&sample("nak")).unwrap(), 0.0, "{candidate}");
        assert_eq!(
            setup.count("ORDERS", "orders.processed").await,
            ORDERS,
            "{candidate}"
        );
        assert!(setup.dead_letters().await.is_empty(), "{candidate}");
        let (agree, differ) = (
            host.metric(&shadow("agree")).unwrap(),
            host.metric(&shadow("differ")).unwrap(),
        );
        if agrees {
            assert!(
                agree >= 1.0 && differ == 0.0,
                "{candidate}: {agree} agree, {differ} differ: {}",
                tail(&host.log())
            );
        } else {
            assert!(
                agree == 0.0 && differ >= 1.0,
                "{candidate}: {agree} agree, {differ} differ"
            );
            let log = host.log();
            assert!(
                log.contains("shadow candidate differs from the live version")
                    && log.contains("live=ack; publish orders.processed"),
                "{candidate}: the first differences are logged in full: {}",
                tail(&log)
            );
        }
    }
}

/// Memory comes back: a handler with reused instances keeps them warm after a burst, and
/// drops them once they go unused for `[runtime] warm_idle`; the next message gets a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_instances_unused_for_warm_idle_are_dropped() {
    let setup = Setup::new("").await;
    let config = setup.config(
        &handler_wasm("orders"),
        "instances = \"reuse\"",
        "warm_idle = \"3s\"",
    );
    let host = Host::start(&setup.server.url, &config).await.unwrap();
    setup.publish_all((0..200).map(order)).await;
    setup.drained(Duration::from_secs(30), &host).await;
    let warm = "jetwasm_warm_instances{handler=\"h\"}";
    host.wait_metric(warm, 1.0, Duration::from_secs(5))
        .await
        .expect("instances kept warm after the burst");
    let memory = "jetwasm_component_memory_bytes{component=\"h\"}";
    let held = host.metric(memory).unwrap();
    assert!(held > 0.0, "the warm instances' memory is counted: {held}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while host.metric(warm).unwrap() > 0.0 {
        assert!(Instant::now() < deadline, "warm instances never dropped");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        host.metric(memory).unwrap(),
        0.0,
        "and uncounted once dropped"
    );
    let created = host
        .metric("jetwasm_instances_total{handler=\"h\"}")
        .unwrap();
    setup.publish_all([order(200)]).await;
    setup.drained(Duration::from_secs(30), &host).await;
    assert_eq!(host.metric(&sample("ack")).unwrap(), 201.0);
    assert_eq!(
        host.metric("jetwasm_instances_total{handler=\"h\"}")
            .unwrap(),
        created + 1.0,
        "the next message gets a new instance"
    );
}

/// Memory comes back with fresh instances too: once a handler has had no call for `[runtime]
/// warm_idle`, its component is loaded again (from the compile cache) and wasmtime releases
/// the pool slots the old copy kept warm (all their linear memory: only a few KiB per table
/// slot stay), and the heap the load's stores used goes back to the system, so the host's
/// resident memory falls back to within twice where it started. Later messages run on the
/// new copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_handler_releases_the_pool_slots_it_kept_warm() {
    memory_comes_back_after_a_load("fresh").await;
}

/// The same with reused instances: those kept warm are dropped after `warm_idle`, and what
/// their stores held goes back to the system too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_handler_gives_back_the_memory_its_warm_instances_held() {
    memory_comes_back_after_a_load("reuse").await;
}

/// Runs a load of the Python orders handler `h` (its interpreter's instances are the largest)
/// with `instances`, then checks the memory it took comes back once it is idle.
async fn memory_comes_back_after_a_load(instances: &str) {
    let setup = Setup::new("").await;
    let handler = format!("instances = \"{instances}\"");
    let config = setup.config(
        &handler_wasm("orders_python"),
        &handler,
        "warm_idle = \"2s\"",
    );
    // Measured from a warm compile cache, as a restarted host starts: a host that compiled
    // the component itself starts higher (its allocator keeps part of what the compiler
    // used), which would hide what the load takes.
    drop(Host::start(&setup.server.url, &config).await.unwrap());
    let host = Host::start(&setup.server.url, &config).await.unwrap();
    let idle_rss = host.rss_bytes().unwrap();
    setup.publish_all((0..2000).map(order)).await;
    setup.drained(Duration::from_secs(60), &host).await;
    let resident = "jetwasm_pool_idle_resident_bytes";
    let held = host.metric(resident).unwrap();
    let loaded_rss = host.rss_bytes().unwrap();
    if instances == "fresh" {
        assert!(held > 0.0, "the burst's slots are kept warm: {held}");
    }
    assert!(
        loaded_rss > idle_rss * 2,
        "the load takes memory: {} MiB idle, {} MiB after",
        idle_rss >> 20,
        loaded_rss >> 20
    );
    host.wait_metric(
        "jetwasm_idle_reloads_total{handler=\"h\"}",
        1.0,
        Duration::from_secs(20),
    )
    .await
    .expect("the idle handler's component is reloaded");
    // Tables keep `TABLE_KEEP_RESIDENT` per slot; a linear memory alone kept more. Read
    // until it falls: a call may still end on the old copy just after the swap.
    let bound = f64::from(1 << 20);
    let released = fallen_to(bound, Duration::from_secs(10), || {
        host.metric(resident).unwrap()
    })
    .await;
    assert!(
        released < bound,
        "its warm slots' memory is released: {held} -> {released} bytes"
    );
    let settled = fallen_to(idle_rss * 2, Duration::from_secs(20), || {
        host.rss_bytes().unwrap()
    })
    .await;
    assert!(
        settled <= idle_rss * 2,
        "resident memory comes back: {} MiB idle, {} MiB after the load, {} MiB once idle",
        idle_rss >> 20,
        loaded_rss >> 20,
        settled >> 20
    );
    setup.publish_all((2000..2100).map(order)).await;
    setup.drained(Duration::from_secs(30), &host).await;
    assert_eq!(host.metric(&sample("ack")).unwrap(), 2100.0);
}

/// A host that compiled its component itself starts about where one that found it in the
/// compile cache does: wasmtime keeps an engine's compiler buffers for the engine's life, so
/// components are compiled on an engine of their own and run from the entry written (with
/// the Python component, 137 MiB against 25 MiB before; 52–71 MiB now).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiling_a_component_leaves_no_compiler_memory_behind() {
    let setup = Setup::new("").await;
    let cache = tempfile::tempdir().unwrap();
    let runtime = format!("compile_cache = \"{}\"", cache.path().display());
    let config = setup.config(&handler_wasm("orders_python"), "", &runtime);
    let cold = Host::start(&setup.server.url, &config).await.unwrap();
    let compiled = cold.rss_bytes().unwrap();
    drop(cold);
    let warm = Host::start(&setup.server.url, &config).await.unwrap();
    let cached = warm.rss_bytes().unwrap();
    assert!(
        compiled < cached * 4,
        "after compiling {} MiB, from the cache {} MiB",
        compiled >> 20,
        cached >> 20
    );
    setup.publish_all((0..3).map(order)).await;
    setup.drained(Duration::from_secs(30), &warm).await;
    assert_eq!(warm.metric(&sample("ack")).unwrap(), 3.0);
}

/// What `read` gives once it is at most `goal`, or its last reading after `wait`.
async fn fallen_to<T: PartialOrd>(goal: T, wait: Duration, read: impl Fn() -> T) -> T {
    let deadline = Instant::now() + wait;
    loop {
        let value = read();
        if value <= goal || Instant::now() >= deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `traceparent = "given"` with `message_ids = "given"`: a publish the component gives no
/// headers is sent without any (as cheap for the server as a bare native publish), one at a
/// time and in a `publish-batch` alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_given_ids_and_traceparent_a_publish_without_headers_is_sent_bare() {
    let setup = Setup::new("").await;
    for batch in ["", ", batch = 3"] {
        let extra = format!(
            "every = \"300ms\"\nmessage_ids = \"given\"\ntraceparent = \"given\"\nconfig = {{ count = 3, subject = \"orders.created\"{batch} }}"
        );
        let config = setup.publisher_config(&handler_wasm("fixture_publish_burst"), &extra);
        let host = Host::start(&setup.server.url, &config).await.unwrap();
        let ok = "jetwasm_publisher_ticks_total{outcome=\"ok\",publisher=\"p\"}";
        host.wait_metric(ok, 1.0, Duration::from_secs(10))
            .await
            .unwrap();
        drop(host);
        let published = setup.messages("ORDERS").await;
        assert!(published.len() >= 3, "{}", published.len());
        for message in published {
            assert!(
                message.headers.is_empty(),
                "no headers{batch}: {:?}",
                message.headers
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_given_message_ids_a_publish_without_one_carries_none() {
    let setup = Setup::new(QUICK_RETRIES).await;
    let handler = "message_ids = \"given\"\nconfig = { output_subject = \"orders.processed\" }";
    let host = setup.host("orders", handler).await;
    setup.publish_all((0..3).map(order)).await;
    setup.drained(Duration::from_secs(20), &host).await;
    let processed: Vec<_> = (setup.messages("ORDERS").await.into_iter())
        .filter(|m| m.subject.as_str() == "orders.processed")
        .collect();
    assert_eq!(processed.len(), 3, "{}", tail(&host.log()));
    for message in processed {
        let headers = message.headers;
        assert!(
            headers.get("Nats-Msg-Id").is_none(),
            "no derived id: {headers:?}"
        );
        assert!(
            headers.get("traceparent").is_some(),
            "the trace still goes on"
        );
    }
}
