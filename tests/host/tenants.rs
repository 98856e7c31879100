//! Tenants side by side on one host: the server enforces each tenant's subjects (its own
//! connection, in its own account), the host its quotas and CPU share. The server runs
//! `deploy/tenants/nats-server.conf` as shipped (accounts ACME and GLOBEX, least-privilege
//! `<tenant>-jetwasm` users); each tenant applies its streams spec with its own credentials.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;
use harness::setup::{header, order};
use harness::{handler_wasm, workspace_root, Host, NatsServer};
use serde_json::Value;

/// The example's server, and each tenant's admin connection (the tenant's own operators).
struct Accounts {
    server: NatsServer,
    acme: jetstream::Context,
    globex: jetstream::Context,
}

impl Accounts {
    async fn start() -> Accounts {
        let conf = workspace_root().join("deploy/tenants/nats-server.conf");
        let server = NatsServer::start_with_config(&conf).await.unwrap();
        let admin = |user: &'static str, password: &'static str| {
            let server = &server;
            async move { jetstream::new(server.client_as(user, password).await.unwrap()) }
        };
        let acme = admin("acme-admin", "acme-admin-secret").await;
        let globex = admin("globex-admin", "globex-admin-secret").await;
        Accounts {
            server,
            acme,
            globex,
        }
    }
}

/// The example's streams spec (ORDERS with consumer `orders-processor`, DEADLETTER).
fn example_streams() -> String {
    workspace_root()
        .join("deploy/tenants/streams.toml")
        .display()
        .to_string()
}

/// A host config with tenants acme and globex as the example declares them (their
/// least-privilege users, the example's streams), `acme` and `globex` added to their tables,
/// then `handlers`.
fn config(acme: &str, globex: &str, handlers: &str) -> String {
    let streams = example_streams();
    format!(
        r#"
[runtime]
http = "{{http}}"

[[tenant]]
name = "acme"
user = "acme-jetwasm"
password = "acme-secret"
streams = "{streams}"
{acme}

[[tenant]]
name = "globex"
user = "globex-jetwasm"
password = "globex-secret"
streams = "{streams}"
{globex}

{handlers}
"#
    )
}

/// A `[[handler]]` of `tenant` on its ORDERS/`consumer`, running `component`, with `extra`
/// keys.
fn handler(name: &str, tenant: &str, component: &str, consumer: &str, extra: &str) -> String {
    format!(
        r#"
[[handler]]
name = "{name}"
tenant = "{tenant}"
component = "{}"
stream = "ORDERS"
consumer = "{consumer}"
{extra}
"#,
        handler_wasm(component).display()
    )
}

/// Publishes `payloads` to `orders.created` in the account of `js`, each waiting for its ack.
async fn publish(js: &jetstream::Context, payloads: impl IntoIterator<Item = String>) {
    for payload in payloads {
        js.publish("orders.created", payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

/// Messages of `stream` in the account of `js` (up to 100,000).
async fn messages(js: &jetstream::Context, stream: &str) -> Vec<jetstream::message::StreamMessage> {
    let stream = js.get_stream(stream).await.unwrap();
    let last = stream.cached_info().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last.min(100_000) {
        if let Ok(message) = stream.get_raw_message(seq).await {
            out.push(message);
        }
    }
    out
}

/// Counts of `orders.processed` in the account of `js`.
async fn processed(js: &jetstream::Context) -> usize {
    let stream = js.get_stream("ORDERS").await.unwrap();
    let info = stream
        .info_with_subjects("orders.processed")
        .await
        .unwrap()
        .next()
        .await;
    info.map_or(0, |entry| entry.unwrap().1)
}

async fn wait_processed(js: &jetstream::Context, n: usize, within: Duration, host: &Host) {
    let deadline = Instant::now() + within;
    loop {
        let done = processed(js).await;
        if done >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {n} processed after {within:?}:\n{}",
            harness::setup::tail(&host.log())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `/status` as JSON.
fn status(host: &Host) -> Value {
    let (code, body) = harness::http_get(host.http, "/status").unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The tenant `name` in `/status`.
fn tenant_status(host: &Host, name: &str) -> Value {
    let status = status(host);
    let tenants = status["tenants"].as_array().unwrap().clone();
    (tenants.into_iter())
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no tenant {name} in {status}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_refuses_what_a_tenants_account_does_not_grant_whatever_the_host_allows() {
    let accounts = Accounts::start().await;
    // The host's allow-list (wrongly) lets the handler publish orders.refunded; ACME's user
    // may publish only orders.processed and its dead letters.
    let leaky = handler(
        "leaky",
        "acme",
        "fixture_forbidden",
        "orders-processor",
        "publish = [\"orders.processed\", \"orders.refunded\"]\nconfig = { subject = \"orders.refunded\" }",
    );
    let host = Host::start(&accounts.server.url, &config("", "", &leaky))
        .await
        .unwrap();
    // Observers in every account, the host's own (OPS) included, see everything published.
    let mut observers = Vec::new();
    for client in [
        accounts.acme.client(),
        accounts.globex.client(),
        accounts.server.client().await.unwrap(),
    ] {
        let subscriber = client.subscribe(">").await.unwrap();
        client.flush().await.unwrap();
        observers.push(subscriber);
    }
    publish(&accounts.acme, (0..5).map(order)).await;

    // Each call got a typed `denied`, so the handler termed: five dead letters, in ACME.
    let deadline = Instant::now() + Duration::from_secs(30);
    let records = loop {
        let records = messages(&accounts.acme, "DEADLETTER").await;
        if records.len() >= 5 || Instant::now() > deadline {
            break records;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(records.len(), 5, "{}", harness::setup::tail(&host.log()));
    for record in &records {
        let reason = header(record, "Jetwasm-Reason");
        assert!(
            reason.contains("publish denied: orders.refunded")
                && reason.contains("refused by the NATS server"),
            "{reason}"
        );
    }
    // Nothing reached orders.refunded in any account.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for observer in &mut observers {
        while let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(50), observer.next()).await
        {
            assert_ne!(
                message.subject.as_str(),
                "orders.refunded",
                "a forbidden publish got through"
            );
        }
    }
    let acme_orders = accounts.acme.get_stream("ORDERS").await.unwrap();
    let refunded = acme_orders
        .info_with_subjects("orders.refunded")
        .await
        .unwrap()
        .next()
        .await;
    assert!(refunded.is_none(), "orders.refunded stored in ACME");
    assert!(
        host.log()
            .contains("Permissions Violation for Publish to \"orders.refunded\""),
        "the refusal is logged, naming the tenant:\n{}",
        harness::setup::tail(&host.log())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_bound_to_another_tenants_stream_fails_to_start_and_touches_nothing() {
    let accounts = Accounts::start().await;
    // GLOBEX has a PAYMENTS stream with messages waiting on its consumer.
    let payments = accounts
        .globex
        .create_stream(stream::Config {
            name: "PAYMENTS".into(),
            subjects: vec!["payments.*".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    payments
        .create_consumer(pull::Config {
            durable_name: Some("payments-processor".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    for i in 0..10 {
        let ack = accounts
            .globex
            .publish("payments.received", format!("p{i}").into());
        ack.await.unwrap().await.unwrap();
    }
    // ACME's handler names GLOBEX's stream and consumer (a wrong manifest, or a hostile one).
    let wrong = handler("grabby", "acme", "noop", "payments-processor", "")
        .replace("stream = \"ORDERS\"", "stream = \"PAYMENTS\"");
    let mut host = Host::spawn(&accounts.server.url, &config("", "", &wrong)).unwrap();
    let status = host.wait_exit(Duration::from_secs(60)).await.unwrap();
    assert!(!status.success());
    let log = host.log();
    assert!(
        log.contains(
            "handler grabby: the NATS server refused tenant acme $JS.API.STREAM.INFO.PAYMENTS"
        ),
        "the error names the handler, the stream and the tenant:\n{}",
        harness::setup::tail(&log)
    );
    let mut payments = accounts.globex.get_stream("PAYMENTS").await.unwrap();
    let consumer = payments
        .get_consumer::<pull::Config>("payments-processor")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(
        (consumer.delivered.stream_sequence, consumer.num_pending),
        (0, 10),
        "GLOBEX's messages untouched"
    );
    assert_eq!(payments.info().await.unwrap().state.messages, 10);
}

/// Streams for the quota tests, applied with ACME's admin credentials: ORDERS with two
/// consumers on orders.created, and DEADLETTER.
const TWO_CONSUMERS: &str = r#"
[[stream]]
name = "ORDERS"
subjects = ["orders.*"]
storage = "memory"

[[stream.consumer]]
durable = "first"
filter_subjects = ["orders.created"]
max_deliver = 3
backoff = ["200ms", "400ms"]

[[stream.consumer]]
durable = "second"
filter_subjects = ["orders.created"]

[[stream]]
name = "DEADLETTER"
subjects = ["deadletter.>"]
storage = "memory"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_in_flight_quota_holds_across_its_handlers() {
    let accounts = Accounts::start().await;
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("acme.toml");
    std::fs::write(&spec, TWO_CONSUMERS).unwrap();
    // Two slow handlers may run 3 calls each; the tenant only 4 together.
    let slow = |name: &str, consumer: &str| {
        let extra = "limits = { max_in_flight = 3 }\nconfig = { sleep_ms = 300 }";
        handler(name, "acme", "fixture_slow", consumer, extra)
    };
    let handlers = slow("slow-a", "first") + &slow("slow-b", "second");
    let text = config("max_in_flight = 4", "", &handlers)
        .replacen("user = \"acme-jetwasm\"", "user = \"acme-admin\"", 1)
        .replacen(
            "password = \"acme-secret\"",
            "password = \"acme-admin-secret\"",
            1,
        )
        .replacen(
            &format!("streams = \"{}\"", example_streams()),
            &format!("streams = {:?}", spec.display().to_string()),
            1,
        );
    let host = Host::start(&accounts.server.url, &text).await.unwrap();
    publish(&accounts.acme, (0..12).map(order)).await;
    let (mut most, deadline) = (0, Instant::now() + Duration::from_secs(30));
    let acked = "jetwasm_messages_total{tenant=\"acme\",outcome=\"ack\"}";
    while host.metric(acked).unwrap() < 24.0 {
        let acme = tenant_status(&host, "acme");
        most = most.max(acme["in_flight"].as_i64().unwrap());
        assert!(
            Instant::now() < deadline,
            "not done:\n{}",
            harness::setup::tail(&host.log())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        most <= 4,
        "{most} calls ran at once; the tenant's quota is 4"
    );
    assert!(
        most >= 3,
        "the quota was never reached ({most}): the test shows nothing"
    );
    let acme = tenant_status(&host, "acme");
    assert_eq!(acme["max_in_flight"], 4);
    assert_eq!(acme["components"], serde_json::json!(["slow-a", "slow-b"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_at_its_memory_quota_fails_its_own_calls_and_no_other_tenants() {
    let accounts = Accounts::start().await;
    // Each bomb instance may grow to 24 MiB; ACME's instances together only to 40 MiB, so
    // a second bomb running beside a grown one meets the tenant's quota.
    let bombs = handler(
        "bombs",
        "acme",
        "fixture_membomb",
        "orders-processor",
        "limits = { memory = \"24MiB\", max_in_flight = 4 }",
    );
    let orders = handler(
        "orders",
        "globex",
        "orders",
        "orders-processor",
        "publish = [\"orders.processed\"]",
    );
    let text = config("max_memory = \"40MiB\"", "", &(bombs + &orders));
    let host = Host::start(&accounts.server.url, &text).await.unwrap();
    let memory = "jetwasm_tenant_memory_bytes{tenant=\"acme\"}";
    let sampler = {
        let http = host.http;
        tokio::spawn(async move {
            let mut most = 0.0f64;
            for _ in 0..400 {
                let (_, text) = harness::http_get(http, "/metrics").unwrap();
                most = most.max(harness::sample_sum(&text, memory));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            most
        })
    };
    publish(&accounts.acme, (0..8).map(|i| format!("bomb {i}"))).await;
    publish(&accounts.globex, (0..200).map(order)).await;
    wait_processed(&accounts.globex, 200, Duration::from_secs(30), &host).await;
    let most = sampler.await.unwrap();
    assert!(
        most <= 40.0 * 1024.0 * 1024.0,
        "ACME held {most} bytes, over its 40 MiB"
    );
    let quota = "jetwasm_messages_total{tenant=\"acme\",outcome=\"quota\"}";
    host.wait_metric(quota, 1.0, Duration::from_secs(30))
        .await
        .unwrap();
    let globex_failures: f64 = ["trap", "memory", "quota", "host", "timeout"]
        .iter()
        .map(|o| {
            let sample = format!("jetwasm_messages_total{{tenant=\"globex\",outcome=\"{o}\"}}");
            host.metric(&sample).unwrap()
        })
        .sum();
    assert_eq!(
        globex_failures, 0.0,
        "GLOBEX's calls never fail for ACME's quota"
    );
    let acme = tenant_status(&host, "acme");
    assert_eq!(acme["max_memory"], 40 * 1024 * 1024);
}

/// `p`-th percentile of `values` (sorted here).
fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * p).round() as usize]
}

/// Milliseconds from each order's `orders.created` to its `orders.processed`, from the
/// stream's timestamps, for orders whose id starts with `prefix`.
async fn latencies(js: &jetstream::Context, prefix: &str) -> Vec<f64> {
    let mut created = BTreeMap::new();
    let mut out = Vec::new();
    for message in messages(js, "ORDERS").await {
        let body: Value = serde_json::from_slice(&message.payload).unwrap_or_default();
        let id = body["id"].as_str().unwrap_or_default().to_owned();
        if !id.starts_with(prefix) {
            continue;
        }
        let at = message.time.unix_timestamp_nanos() as f64 / 1e6;
        match message.subject.as_str() {
            "orders.created" => {
                created.insert(id, at);
            }
            _ => {
                if let Some(start) = created.get(&id) {
                    out.push(at - start);
                }
            }
        }
    }
    out
}

/// Publishes `n` orders with ids `prefix-i` at about 20 per second.
async fn steady(js: &jetstream::Context, prefix: &str, n: usize) {
    for i in 0..n {
        let payload = order(i).replacen("\"id\":\"", &format!("\"id\":\"{prefix}-"), 1);
        publish(js, [payload]).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_flooding_the_cpu_does_not_starve_another() {
    let accounts = Accounts::start().await;
    let heavy = handler(
        "heavy",
        "acme",
        "fixture_loop",
        "orders-processor",
        "limits = { max_in_flight = 32 }",
    );
    let light = handler(
        "light",
        "globex",
        "orders",
        "orders-processor",
        "publish = [\"orders.processed\"]",
    );
    let text = config("cpu_share = 1", "cpu_share = 1", &(heavy + &light));
    let host = Host::start(&accounts.server.url, &text).await.unwrap();

    steady(&accounts.globex, "alone", 40).await;
    wait_processed(&accounts.globex, 40, Duration::from_secs(30), &host).await;
    // ACME floods: 300 messages of 40 ms of CPU each, 12 s of work for two cores.
    publish(&accounts.acme, (0..300).map(|_| "spin 40".to_owned())).await;
    steady(&accounts.globex, "beside", 40).await;
    wait_processed(&accounts.globex, 80, Duration::from_secs(60), &host).await;
    let acme_acked = host
        .metric("jetwasm_messages_total{tenant=\"acme\",outcome=\"ack\"}")
        .unwrap();
    assert!(
        acme_acked < 300.0,
        "ACME's flood was over before GLOBEX finished ({acme_acked} of 300): the test shows nothing"
    );
    let (mut alone, mut beside) = (
        latencies(&accounts.globex, "alone").await,
        latencies(&accounts.globex, "beside").await,
    );
    assert_eq!((alone.len(), beside.len()), (40, 40));
    println!(
        "GLOBEX latency alone p50 {:.1} ms p99 {:.1} ms; beside ACME's flood p50 {:.1} ms p99 {:.1} ms ({acme_acked} of ACME's 300 done meanwhile)",
        percentile(&mut alone, 0.5),
        percentile(&mut alone, 0.99),
        percentile(&mut beside, 0.5),
        percentile(&mut beside, 0.99),
    );
    host.wait_metric(
        "jetwasm_messages_total{tenant=\"acme\",outcome=\"ack\"}",
        300.0,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
}

/// The manifest of the orders handler on a tenant's ORDERS/orders-processor.
const ORDERS_MANIFEST: &str =
    "stream = \"ORDERS\"\nconsumer = \"orders-processor\"\npublish = [\"orders.processed\"]\n";

/// The component `name` of `tenant` in `/status`, if it is there.
fn component(host: &Host, tenant: &str, name: &str) -> Option<Value> {
    let status = status(host);
    let components = status["components"].as_array().unwrap().clone();
    (components.into_iter()).find(|c| c["tenant"] == tenant && c["name"] == name)
}

/// Waits until `tenant`'s `name` shows `state` in `/status`.
async fn wait_state(host: &Host, tenant: &str, name: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match component(host, tenant, name) {
            Some(c) if c["state"] == state => return c,
            other => assert!(
                Instant::now() < deadline,
                "{tenant}.{name}: {other:?}, not {state}\n{}",
                harness::setup::tail(&host.log())
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_drop_ins_live_in_its_own_folder_and_run_as_the_tenant() {
    let accounts = Accounts::start().await;
    let folder = tempfile::tempdir().unwrap();
    let dir = folder.path();
    let text = config("max_handlers = 1", "", "").replace(
        "http = \"{http}\"",
        &format!(
            "http = \"{{http}}\"\nhandlers_dir = {:?}",
            dir.display().to_string()
        ),
    );
    let host = Host::start(&accounts.server.url, &text).await.unwrap();
    std::fs::create_dir(dir.join("acme")).unwrap();
    std::fs::copy(handler_wasm("orders"), dir.join("acme/orders.wasm")).unwrap();
    std::fs::write(dir.join("acme/orders.toml"), ORDERS_MANIFEST).unwrap();
    let orders = wait_state(&host, "acme", "orders", "running").await;
    assert_eq!(orders["source"], "folder");

    // It consumes, publishes and acks in ACME's account, and nothing happens in GLOBEX's.
    publish(&accounts.acme, (0..5).map(order)).await;
    publish(&accounts.globex, (0..3).map(order)).await;
    wait_processed(&accounts.acme, 5, Duration::from_secs(30), &host).await;
    assert_eq!(processed(&accounts.globex).await, 0);

    // A second one is over ACME's max_handlers; a folder naming no tenant is refused.
    std::fs::copy(handler_wasm("noop"), dir.join("acme/second.wasm")).unwrap();
    std::fs::write(dir.join("acme/second.toml"), ORDERS_MANIFEST).unwrap();
    std::fs::create_dir(dir.join("initech")).unwrap();
    std::fs::copy(handler_wasm("noop"), dir.join("initech/x.wasm")).unwrap();
    std::fs::write(dir.join("initech/x.toml"), ORDERS_MANIFEST).unwrap();
    let second = wait_state(&host, "acme", "second", "refused").await;
    let error = second["error"].as_str().unwrap();
    assert!(
        error.contains("tenant acme runs 1 handlers and publishers here, its max_handlers"),
        "{error}"
    );
    let initech = wait_state(&host, "default", "initech/", "refused").await;
    let error = initech["error"].as_str().unwrap();
    assert!(
        error.contains("no tenant initech is declared (declared: acme, globex)"),
        "{error}"
    );
    let failures = "jetwasm_deploy_failures_total{tenant=\"acme\",handler=\"second\"}";
    assert_eq!(host.metric(failures).unwrap(), 1.0);
    assert_eq!(
        component(&host, "acme", "orders").unwrap()["state"],
        "running"
    );
}

/// Runs `jetwasm deploy` of the orders component with `flags`; returns its success and output.
fn deploy(dir: &std::path::Path, url: &str, flags: &[&str]) -> (bool, String) {
    let manifest = dir.join("orders.toml");
    std::fs::write(&manifest, ORDERS_MANIFEST).unwrap();
    let (component, manifest) = (handler_wasm("orders"), manifest.display().to_string());
    let component = component.display().to_string();
    let args = [
        &[
            "deploy",
            &component,
            "--manifest",
            &manifest,
            "--server",
            url,
        ][..],
        flags,
    ];
    crate::jetwasm(args.concat())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_deploy_credentials_reach_only_its_own_registry_keys() {
    let accounts = Accounts::start().await;
    let url = accounts.server.url.clone();
    let host = Host::start_with(&url, &config("", "", ""), &["--registry"])
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let acme = ["--user", "acme-deploy", "--password", "acme-deploy-secret"];
    let globex = [
        "--user",
        "globex-deploy",
        "--password",
        "globex-deploy-secret",
    ];

    let (ok, out) = deploy(
        dir.path(),
        &url,
        &[&acme[..], &["--tenant", "acme"]].concat(),
    );
    assert!(ok, "{out}");
    assert!(out.contains("deployed acme.orders"), "{out}");
    let orders = wait_state(&host, "acme", "orders", "running").await;
    assert_eq!(orders["source"], "registry");
    publish(&accounts.acme, (0..5).map(order)).await;
    wait_processed(&accounts.acme, 5, Duration::from_secs(30), &host).await;

    let (ok, out) = deploy(
        dir.path(),
        &url,
        &[&globex[..], &["--tenant", "globex"]].concat(),
    );
    assert!(ok, "{out}");
    wait_state(&host, "globex", "orders", "running").await;

    // ACME's deploy user can neither deploy nor overwrite nor remove GLOBEX's handler.
    let (ok, out) = deploy(
        dir.path(),
        &url,
        &[&acme[..], &["--tenant", "globex"]].concat(),
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("the NATS server refused $KV.jetwasm-handlers.globex.orders"),
        "{out}"
    );
    let (ok, undeploy) =
        crate::jetwasm([&["undeploy", "globex.orders", "--server", &url][..], &acme].concat());
    assert!(!ok, "{undeploy}");
    let revision = component(&host, "globex", "orders").unwrap()["revision"].clone();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let globex_orders = component(&host, "globex", "orders").unwrap();
    assert_eq!(
        (
            globex_orders["state"].clone(),
            globex_orders["revision"].clone()
        ),
        ("running".into(), revision),
        "GLOBEX's handler untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_kv_bucket_is_its_own_and_the_server_refuses_any_other() {
    let accounts = Accounts::start().await;
    let state = |tenant: &str| {
        handler(
            &format!("{tenant}-state"),
            tenant,
            "fixture_state",
            "orders-processor",
            "publish = [\"orders.processed\"]\nkv = [\"carts\"]\nconfig = { output = \"orders.processed\" }",
        )
    };
    let text = config("", "", &format!("{}{}", state("acme"), state("globex")));
    let host = Host::start(&accounts.server.url, &text).await.unwrap();
    let ops = |value: &str| {
        serde_json::json!([
            {"op": "get", "bucket": "carts", "key": "cart-1"},
            {"op": "put", "bucket": "carts", "key": "cart-1", "value": value},
        ])
        .to_string()
    };
    publish(&accounts.acme, [ops("acme's")]).await;
    wait_processed(&accounts.acme, 1, Duration::from_secs(20), &host).await;
    publish(&accounts.globex, [ops("globex's")]).await;
    wait_processed(&accounts.globex, 1, Duration::from_secs(20), &host).await;
    let answers = |js| async move {
        let found = messages(js, "ORDERS").await;
        let last = (found.iter().rev())
            .find(|m| m.subject.as_str() == "orders.processed")
            .unwrap();
        serde_json::from_slice::<Value>(&last.payload).unwrap()
    };
    // Each read its own empty bucket: globex never saw acme's cart.
    let (acme, globex) = (
        answers(&accounts.acme).await,
        answers(&accounts.globex).await,
    );
    assert_eq!(acme[0], serde_json::json!({"ok": null}), "{acme}");
    assert_eq!(globex[0], serde_json::json!({"ok": null}), "{globex}");
    for (js, value) in [(&accounts.acme, "acme's"), (&accounts.globex, "globex's")] {
        let carts = js.get_key_value("carts").await.unwrap();
        assert_eq!(
            &carts.get("cart-1").await.unwrap().unwrap()[..],
            value.as_bytes()
        );
    }
    drop(host);

    // A bucket the tenant's account does not grant (the host config grants it): the server
    // refuses it at the start, and the host names the refusal.
    let prices = handler(
        "acme-prices",
        "acme",
        "fixture_state",
        "orders-processor",
        "kv = [\"prices\"]",
    );
    let error = Host::start(&accounts.server.url, &config("", "", &prices))
        .await
        .err()
        .expect("the start is refused");
    let error = format!("{error:#}");
    assert!(
        error.contains("the NATS server refused tenant acme")
            && error.contains("$JS.API.STREAM.INFO.KV_prices"),
        "{error}"
    );
}
