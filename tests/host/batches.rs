//! Batch handlers (the `batch-handler` world): messages gathered up to `batch.max` or
//! `batch.max_wait`, one call for each batch, and every message's own fate: acked, retried,
//! dead-lettered; a trap fails its whole batch.

use std::time::Duration;

use harness::setup::{header, sample, tail, Setup, QUICK_RETRIES};

/// The batches the fixture reported, each a list of (stream sequence, delivery).
async fn reports(setup: &Setup) -> Vec<Vec<(u64, u64)>> {
    (setup.messages("ORDERS").await.iter())
        .filter(|m| m.subject.as_str() == "orders.audited")
        .map(|m| {
            (String::from_utf8_lossy(&m.payload).split(' '))
                .map(|pair| {
                    let (seq, delivered) = pair.split_once(':').unwrap();
                    (seq.parse().unwrap(), delivered.parse().unwrap())
                })
                .collect()
        })
        .collect()
}

const BATCHED: &str = r#"batch = { max = 10, max_wait = "100ms" }
limits = { max_in_flight = 10 }"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_handled_in_batches_each_with_its_own_fate() {
    let setup = Setup::new(QUICK_RETRIES).await;
    let within = Duration::from_secs(30);
    // An ack and a crash, waiting before the host starts, so its first pull gets both and they share a
    // batch, which the crash fails.
    setup.publish_all(["ack", "crash"].map(String::from)).await;
    let host = setup.host("fixture_batch", BATCHED).await;
    setup.wait_dead_letters(1, within, &host).await;
    setup.drained(within, &host).await;
    // 25 plain acks. Each phase is drained before the next, so batches do not mix them.
    setup.publish_all((0..25).map(|_| "ack".to_string())).await;
    setup.drained(within, &host).await;
    // A nak (then an ack) and a term.
    let before = setup.dead_letters().await.len();
    setup.publish_all(["nak", "term"].map(String::from)).await;
    setup.wait_dead_letters(before + 1, within, &host).await;
    setup.drained(within, &host).await;
    // A batch answering one disposition short.
    setup.publish_all(["short".to_string()]).await;
    let letters = setup.wait_dead_letters(before + 2, within, &host).await;
    setup.drained(within, &host).await;

    let reports = reports(&setup).await;
    // The stream sequence of each input (the reports share the stream), by payload.
    let inputs: Vec<(u64, String)> = (setup.messages("ORDERS").await.iter())
        .filter(|m| m.subject.as_str() == "orders.created")
        .map(|m| (m.sequence, String::from_utf8_lossy(&m.payload).into_owned()))
        .collect();
    let seq_of = |payload: &str| inputs.iter().find(|(_, p)| p == payload).unwrap().0;
    let acks: Vec<u64> = (inputs.iter().skip(2))
        .filter(|(_, p)| p == "ack")
        .map(|(seq, _)| *seq)
        .collect();
    assert_eq!(acks.len(), 25);
    let (first_ack, crash) = (inputs[0].0, seq_of("crash"));
    let (nak, term, short) = (seq_of("nak"), seq_of("term"), seq_of("short"));
    let delivered = |seq: u64| -> Vec<u64> {
        let mut d: Vec<u64> = (reports.iter().flatten())
            .filter(|(s, _)| *s == seq)
            .map(|(_, d)| *d)
            .collect();
        d.sort();
        d
    };
    // No batch over its max, and the 25 acks took fewer calls than messages.
    assert!(
        reports.iter().all(|b| (1..=10).contains(&b.len())),
        "{reports:?}"
    );
    let calls = (reports.iter())
        .filter(|b| b.iter().any(|(seq, _)| acks.contains(seq)))
        .count();
    assert!(calls < 25, "{calls} calls for 25 messages: {reports:?}");
    // The crash failed its whole batch: the good message beside it was delivered again.
    let first = reports
        .iter()
        .find(|b| b.contains(&(first_ack, 1)))
        .unwrap();
    assert!(
        first.contains(&(crash, 1)),
        "ack and crash shared a batch: {first:?}"
    );
    assert!(
        delivered(first_ack).len() >= 2,
        "{:?}",
        delivered(first_ack)
    );
    assert_eq!(delivered(crash), [1, 2, 3], "crash: every allowed delivery");
    for &seq in &acks {
        assert_eq!(delivered(seq), [1], "message {seq}: handled once");
    }
    assert_eq!(delivered(nak), [1, 2], "nak: redelivered once, then acked");
    assert_eq!(delivered(short), [1, 2, 3], "short: every allowed delivery");
    let reason = |seq: u64| {
        let letter = (letters.iter())
            .find(|l| header(l, "Jetwasm-Sequence") == seq.to_string())
            .unwrap_or_else(|| panic!("no dead letter for {seq}"));
        header(letter, "Jetwasm-Reason").to_owned()
    };
    let crashed = reason(crash);
    assert!(
        crashed.starts_with("trap:")
            && crashed.contains(&format!("crash requested by message {crash}")),
        "{crashed}"
    );
    assert_eq!(reason(term), format!("term requested by {term}"));
    let shorted = reason(short);
    assert!(
        shorted.contains("handle-batch returned 0 dispositions for 1 messages"),
        "{shorted}"
    );
    // 25 acks and the nak'd message, and the first unless every batch it was in also held
    // the crash (then it is dead-lettered beside it).
    let one_dead = (letters.iter()).any(|l| header(l, "Jetwasm-Sequence") == first_ack.to_string());
    let expected = if one_dead { 26.0 } else { 27.0 };
    let acked = host.metric(&sample("ack")).unwrap();
    assert_eq!(acked, expected, "{}", tail(&host.log()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_handler_config_is_checked_against_its_world_and_limits() {
    let setup = Setup::new("").await;
    // batch.max over max_in_flight: refused, naming the fix.
    let config = setup.config(
        &harness::handler_wasm("fixture_batch"),
        "batch = { max = 50 }\nlimits = { max_in_flight = 8 }",
        "",
    );
    let error = harness::Host::start(&setup.server.url, &config)
        .await
        .err()
        .expect("the start is refused");
    assert!(
        format!("{error:#}").contains("set limits.max_in_flight to at least 50"),
        "{error:#}"
    );
    // A handler-world component with a batch table, and a batch handler without one.
    for (component, handler, says) in [
        ("noop", BATCHED, "does not fit the batch-handler world"),
        ("fixture_batch", "", "does not fit the handler world"),
    ] {
        let config = setup.config(&harness::handler_wasm(component), handler, "");
        let error = harness::Host::start(&setup.server.url, &config)
            .await
            .err()
            .expect("the start is refused");
        assert!(
            format!("{error:#}").contains(says),
            "{component}: {error:#}"
        );
    }
}
