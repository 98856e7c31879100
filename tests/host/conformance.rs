//! One conformance suite for the orders handler in every language (`handlers/<lang>/orders`,
//! `handlers/rust/orders`), run with fresh instances and with reused ones: the same orders in
//! must give the same dispositions, dead letters, published events and log lines out, and a
//! crash in the guest's own language must leave the host serving. The Rust handler also runs
//! built against contract 0.1 (`orders_0_1`): every other one is built against 0.2.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use harness::setup::{header, order, sample, tail, Setup, QUICK_RETRIES};

/// Orders the suite sends after the valid ones, each to become one dead letter whose reason
/// starts with the first text and contains the others: a crash's reason carries the guest's
/// own message (what it wrote to stderr), in every language.
const REJECTED: [(&str, &str, &[&str]); 6] = [
    ("{not json", "invalid JSON", &[]),
    (
        r#"{"id":"o-nc","items":[1],"total":1}"#,
        "invalid order",
        &["customer"],
    ),
    (
        r#"{"id":"o-empty","customer":"c","items":[],"total":1}"#,
        "invalid order: no items",
        &[],
    ),
    (r#"["o-array","c",[1],1]"#, "invalid order", &[]),
    (
        r#"{"id":"o-busy","customer":"c","items":[1],"total":1,"inventory_busy":true}"#,
        "handler asked for a retry (nak) on the last allowed delivery",
        &["(delivery 3 of 3)"],
    ),
    (
        r#"{"id":"o-crash","customer":"c","items":[1],"total":1,"crash":true}"#,
        "trap:",
        &["crash requested by order o-crash", "(delivery 3 of 3)"],
    ),
];

/// Calls the suite makes: 10 valid orders, 4 terms, 3 deliveries each of the busy and the
/// crashing order.
const CALLS: f64 = 10.0 + 4.0 + 3.0 + 3.0;
/// In-flight limit, which bounds the warm instances kept in reuse mode.
const IN_FLIGHT: u32 = 4;

async fn conformance(component: &str, instances: &str) {
    let setup = Setup::new(QUICK_RETRIES).await;
    let handler = format!(
        r#"instances = "{instances}"
limits = {{ max_in_flight = {IN_FLIGHT} }}
config = {{ output_subject = "orders.audited", retry_delay_ms = 300 }}"#
    );
    let host = setup.host(component, &handler).await;
    let started = Instant::now();
    setup.publish_all((0..5).map(order)).await;
    setup
        .publish_all(REJECTED.iter().map(|(payload, ..)| payload.to_string()))
        .await;

    // Every rejected order becomes exactly one dead letter with the expected reason.
    let mut records = setup
        .wait_dead_letters(REJECTED.len(), Duration::from_secs(30), &host)
        .await;
    records.sort_by_key(|r| header(r, "Jetwasm-Sequence").parse::<u64>().unwrap());
    for (record, (payload, starts, contains)) in records.iter().zip(REJECTED) {
        assert_eq!(&record.payload[..], payload.as_bytes());
        let reason = header(record, "Jetwasm-Reason");
        assert!(
            reason.starts_with(starts) && contains.iter().all(|c| reason.contains(c)),
            "{component}: {payload} was dead-lettered with {reason:?}"
        );
        if starts == "trap:" {
            println!("{component} ({instances}): {reason}");
        }
    }
    // Two retries after 300ms naks (busy) or 200ms + 400ms of backoff (crash).
    assert!(started.elapsed() >= Duration::from_millis(600));

    // The host is unaffected by the crashes: later orders are processed as usual.
    setup.publish_all((5..10).map(order)).await;
    setup.drained(Duration::from_secs(30), &host).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(setup.dead_letters().await.len(), REJECTED.len());

    // One processed event per valid order, on the configured subject, for the right message.
    let stored = setup.messages("ORDERS").await;
    let seq_of: HashMap<String, u64> = stored
        .iter()
        .filter(|m| m.subject.as_str() == "orders.created")
        .filter_map(|m| {
            let order: serde_json::Value = serde_json::from_slice(&m.payload).ok()?;
            Some((order.get("id")?.as_str()?.to_owned(), m.sequence))
        })
        .collect();
    let events: Vec<_> = stored
        .iter()
        .filter(|m| m.subject.as_str() == "orders.audited")
        .collect();
    assert_eq!(events.len(), 10, "{component}: {}", tail(&host.log()));
    for event in events {
        let body: serde_json::Value = serde_json::from_slice(&event.payload).unwrap();
        let id = body["id"].as_str().unwrap();
        let i: usize = id.strip_prefix("o-").unwrap().parse().unwrap();
        assert_eq!(header(event, "order-id"), id);
        assert_eq!(body["customer"], format!("c-{}", i % 97));
        assert_eq!(body["items"], 1);
        assert_eq!(body["total"].as_f64(), Some(9.5));
        assert_eq!(body["processed_seq"].as_u64(), Some(seq_of[id]), "{body}");
    }
    assert!(host.log().contains("processed order o-9"), "the log import");

    assert_eq!(host.metric(&sample("ack")).unwrap(), 10.0);
    assert_eq!(host.metric(&sample("term")).unwrap(), 4.0);
    assert_eq!(host.metric(&sample("nak")).unwrap(), 3.0);
    assert_eq!(host.metric(&sample("trap")).unwrap(), 3.0);
    let created = host
        .metric("jetwasm_instances_total{handler=\"h\"}")
        .unwrap();
    if instances == "fresh" {
        assert_eq!(created, CALLS, "one instance per call");
    } else {
        // Warm instances never outnumber the calls in flight; each crash discards one.
        let most = f64::from(IN_FLIGHT) + 3.0;
        assert!(
            (1.0..=most).contains(&created),
            "{created} instances for {CALLS} calls"
        );
    }
}

macro_rules! conformance {
    ($($name:ident: $component:literal, $instances:literal;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            conformance($component, $instances).await;
        }
    )*};
}

conformance! {
    rust_fresh: "orders", "fresh";
    rust_reuse: "orders", "reuse";
    // The same Rust source built against contract 0.1: a 0.1 component keeps working.
    rust_0_1_fresh: "orders_0_1", "fresh";
    rust_0_1_reuse: "orders_0_1", "reuse";
    python_fresh: "orders_python", "fresh";
    python_reuse: "orders_python", "reuse";
    js_fresh: "orders_js", "fresh";
    js_reuse: "orders_js", "reuse";
    go_fresh: "orders_go", "fresh";
    go_reuse: "orders_go", "reuse";
    c_fresh: "orders_c", "fresh";
    c_reuse: "orders_c", "reuse";
}

/// `jetwasm check` names the contract version a component was built against.
#[test]
fn check_names_the_contract_version() {
    for (component, version) in [("orders", "0.2.0"), ("orders_0_1", "0.1.0")] {
        let check = std::process::Command::new(env!("CARGO_BIN_EXE_jetwasm"))
            .arg("check")
            .arg(harness::handler_wasm(component))
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&check.stdout);
        assert!(check.status.success(), "{check:?}");
        assert!(
            said.contains(&format!(
                "fits the handler world (jetwasm:runtime@{version})"
            )),
            "{component}: {said}"
        );
    }
}
