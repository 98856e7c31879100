//! Day-2 operations as an operator runs them against a live server: `jetwasm dead-letters
//! list / show / redrive` (the records a real host wrote, read back, and their messages put
//! back in place), `jetwasm replay` (a handler run over history, its consumer untouched), and
//! traces: `traceparent` propagation and OTLP export to a stand-in collector.

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

/// A stand-in OpenTelemetry collector: the spans of every OTLP/HTTP (protobuf) trace export
/// the host posts to it, with their resource's `service.name`.
struct Collector {
    endpoint: String,
    spans: std::sync::Arc<std::sync::Mutex<Vec<(String, otlp::Span)>>>,
}

mod otlp {
    pub use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    pub use opentelemetry_proto::tonic::common::v1::any_value::Value;
    pub use opentelemetry_proto::tonic::common::v1::KeyValue;
    pub use opentelemetry_proto::tonic::trace::v1::Span;

    /// The string value of attribute `key`, if any.
    pub fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
        let found = attributes.iter().find(|kv| kv.key == key)?;
        found.value.as_ref()?.value.as_ref()
    }
}

impl Collector {
    async fn start() -> Collector {
        use prost::Message as _;
        let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let received = spans.clone();
        let export = move |body: axum::body::Bytes| async move {
            let request = otlp::ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
            let mut all = received.lock().unwrap();
            for resource_spans in request.resource_spans {
                let attributes = resource_spans.resource.map(|r| r.attributes);
                let service = match otlp::attribute(&attributes.unwrap_or_default(), "service.name")
                {
                    Some(otlp::Value::StringValue(name)) => name.clone(),
                    _ => String::new(),
                };
                for scope in resource_spans.scope_spans {
                    all.extend(scope.spans.into_iter().map(|s| (service.clone(), s)));
                }
            }
            // An empty ExportTraceServiceResponse: everything accepted.
            (
                [("content-type", "application/x-protobuf")],
                Vec::<u8>::new(),
            )
        };
        let app = axum::Router::new().route("/v1/traces", axum::routing::post(export));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Collector { endpoint, spans }
    }

    /// The first span named `name` received within `within`, with its service name.
    async fn wait_span(&self, name: &str, within: Duration) -> (String, otlp::Span) {
        let deadline = std::time::Instant::now() + within;
        loop {
            let found = (self.spans.lock().unwrap().iter())
                .find(|(_, span)| span.name == name)
                .cloned();
            if let Some(found) = found {
                return found;
            }
            let names: Vec<String> = (self.spans.lock().unwrap().iter())
                .map(|(_, s)| s.name.clone())
                .collect();
            assert!(
                std::time::Instant::now() < deadline,
                "no span {name} exported; got {names:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp_as_one_trace_from_the_http_intake_to_the_handler() {
    let collector = Collector::start().await;
    let setup = Setup::new("").await;
    let intake = format!(
        "\n[[publisher]]\nname = \"intake\"\ncomponent = {:?}\npublish = [\"orders.created\"]\nhttp = {{ method = \"POST\", path = \"/orders\" }}\n",
        harness::handler_wasm("orders_intake").display().to_string()
    );
    let config = setup.config(&harness::handler_wasm("orders"), "", "") + &intake;
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let host = harness::Host::start_with_env(&setup.server.url, &config, &[], &env)
        .await
        .unwrap();
    assert!(
        host.log().contains("exporting spans over OTLP"),
        "{}",
        host.log()
    );
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (status, body) = harness::http_request(
        host.http,
        "POST",
        "/orders",
        &[("traceparent", parent)],
        order(0).as_bytes(),
    )
    .unwrap();
    assert_eq!(status, 202, "{body}");
    setup.drained(Duration::from_secs(30), &host).await;

    let (service, request) = collector
        .wait_span("POST intake", Duration::from_secs(30))
        .await;
    assert_eq!(service, "jetwasm");
    assert_eq!(hex(&request.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(hex(&request.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(request.kind, 2, "server");
    let status_code = otlp::attribute(&request.attributes, "http.response.status_code");
    assert_eq!(status_code, Some(&otlp::Value::IntValue(202)));

    let (_, process) = collector
        .wait_span("process h", Duration::from_secs(30))
        .await;
    assert_eq!(process.trace_id, request.trace_id, "one trace");
    assert_eq!(
        process.parent_span_id, request.span_id,
        "the order's span hangs under the request that published it"
    );
    assert_eq!(process.kind, 5, "consumer");
    for (key, value) in [
        ("messaging.system", "nats"),
        ("messaging.operation.type", "process"),
        ("messaging.destination.name", "orders.created"),
        ("messaging.consumer.group.name", "proc"),
        ("jetwasm.handler", "h"),
        ("jetwasm.stream", "ORDERS"),
        ("jetwasm.outcome", "ack"),
    ] {
        assert_eq!(
            otlp::attribute(&process.attributes, key),
            Some(&otlp::Value::StringValue(value.into())),
            "{key}: {:?}",
            process.attributes
        );
    }
    for (key, value) in [("jetwasm.stream.sequence", 1), ("jetwasm.delivered", 1)] {
        let found = otlp::attribute(&process.attributes, key);
        assert_eq!(found, Some(&otlp::Value::IntValue(value)), "{key}");
    }
    assert_eq!(process.status.as_ref().map(|s| s.code), Some(1), "ok");

    // A crash is the span's error, with the guest's own message.
    let crash = r#"{"id":"o-crash","customer":"c","items":[1],"total":1,"crash":true}"#;
    setup.publish_all([crash.to_owned()]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let failed = loop {
        let found = (collector.spans.lock().unwrap().iter())
            .map(|(_, span)| span)
            .find(|span| span.status.as_ref().is_some_and(|s| s.code == 2))
            .cloned();
        if let Some(found) = found {
            break found;
        }
        assert!(std::time::Instant::now() < deadline, "no failed span");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(failed.name, "process h");
    let message = failed.status.map(|s| s.message).unwrap_or_default();
    assert!(
        message.contains("crash requested by order o-crash"),
        "{message}"
    );
    assert_eq!(
        otlp::attribute(&failed.attributes, "jetwasm.outcome"),
        Some(&otlp::Value::StringValue("trap".into()))
    );

    // The handler's output names the handler's span as its parent.
    let messages = setup.messages("ORDERS").await;
    let processed = (messages.iter())
        .find(|m| m.subject.as_str() == "orders.processed")
        .expect("orders.processed");
    let traceparent = header(processed, "traceparent");
    assert_eq!(
        traceparent,
        format!("00-{}-{}-01", hex(&process.trace_id), hex(&process.span_id))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_otlp_export_the_host_cannot_make_stops_the_start_with_the_fix() {
    let setup = Setup::new("").await;
    let config = setup.config(&harness::handler_wasm("orders"), "", "");
    for (env, expected) in [
        (
            [
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ],
            "OTEL_EXPORTER_OTLP_PROTOCOL=grpc: jetwasm exports OTLP over http/protobuf only",
        ),
        (
            [
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    "https://collector.example:4318",
                ),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ],
            "point at its plain HTTP port",
        ),
    ] {
        let error = harness::Host::start_with_env(&setup.server.url, &config, &[], &env)
            .await
            .err()
            .expect("the host must not start");
        let error = format!("{error:#}");
        assert!(error.contains(expected), "{error}");
    }
}
