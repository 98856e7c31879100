//! The fleet's registry: hosts started with `--registry` run what `jetwasm deploy` puts in
//! JetStream (KV manifests, Object Store components), follow every deploy, rollback and
//! undeploy, never load a bad or tampered component, and catch up when started late.

use std::process::Command;
use std::time::{Duration, Instant};

use harness::setup::{order, tail, Setup};
use harness::{handler_wasm, http_get, Host};
use jetwasm::registry::{self, Deployment};
use jetwasm::status::{version_of, ComponentStatus, StatusBody};

/// The orders handler's manifest writing its output to `subject`.
fn orders_to(subject: &str) -> String {
    format!(
        "stream = \"ORDERS\"\nconsumer = \"proc\"\npublish = [\"{subject}\"]\nconfig = {{ output_subject = \"{subject}\" }}\n"
    )
}

/// Runs `jetwasm ARGS --server URL`; returns its stdout, failing with its stderr.
fn jetwasm(setup: &Setup, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_jetwasm"))
        .args(args)
        .args(["--server", &setup.server.url])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "jetwasm {args:?}: {stdout}{stderr}");
    stdout.into_owned()
}

/// Deploys `component` as `orders` with a manifest writing to `subject`.
fn deploy(setup: &Setup, component: &str, subject: &str) -> String {
    let manifest = setup.dir.path().join(format!("{subject}.toml"));
    std::fs::write(&manifest, orders_to(subject)).unwrap();
    let wasm = handler_wasm(component);
    let args = [
        "deploy",
        wasm.to_str().unwrap(),
        "--name",
        "orders",
        "--manifest",
        manifest.to_str().unwrap(),
    ];
    jetwasm(setup, &args)
}

async fn registry_host(setup: &Setup) -> Host {
    let config = format!(
        "streams = \"{}\"\n\n[runtime]\nhttp = \"{{http}}\"\n",
        setup.dir.path().join("streams.toml").display()
    );
    Host::start_with(&setup.server.url, &config, &["--registry"])
        .await
        .unwrap()
}

fn orders_status(host: &Host) -> Option<ComponentStatus> {
    let (code, body) = http_get(host.http, "/status").unwrap();
    assert_eq!(code, 200, "{body}");
    let status: StatusBody = serde_json::from_str(&body).unwrap();
    status.components.into_iter().find(|c| c.name == "orders")
}

/// Waits until every host's `orders` satisfies `done`; returns how long it took.
async fn converge(hosts: &[&Host], done: impl Fn(Option<&ComponentStatus>) -> bool) -> Duration {
    let (start, deadline) = (Instant::now(), Instant::now() + Duration::from_secs(30));
    for host in hosts {
        while !done(orders_status(host).as_ref()) {
            assert!(
                Instant::now() < deadline,
                "{:?}\n{}",
                orders_status(host),
                tail(&host.log())
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    start.elapsed()
}

fn runs(version: &str) -> impl Fn(Option<&ComponentStatus>) -> bool + '_ {
    move |s| s.is_some_and(|s| s.state == "running" && s.version.as_deref() == Some(version))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_follow_deploys_rollbacks_and_undeploys_and_a_late_host_catches_up() {
    let setup = Setup::new("ack_wait = \"5s\"").await;
    let (a, b) = (registry_host(&setup).await, registry_host(&setup).await);
    let v1 = version_of(&handler_wasm("orders")).unwrap();
    let v2 = version_of(&handler_wasm("orders_c")).unwrap();

    let out = deploy(&setup, "orders", "orders.v1");
    assert!(
        out.starts_with(&format!("deployed orders: {v1} (revision ")),
        "{out}"
    );
    let took = converge(&[&a, &b], runs(&v1)).await;
    println!("registry: both hosts on v1 {took:?} after the deploy returned");

    // v2 mid-traffic: every order handled once, by v1 or v2, on one host or the other.
    let publishing = setup.publish_steadily(600);
    while setup.count("ORDERS", "orders.v1").await < 100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    deploy(&setup, "orders_c", "orders.v2");
    let took = converge(&[&a, &b], runs(&v2)).await;
    println!("registry: both hosts on v2 {took:?} after the deploy returned");
    let version = |v: &str| {
        format!("jetwasm_component_version{{name=\"orders\",source=\"registry\",version=\"{v}\"}}")
    };
    for host in [&a, &b] {
        assert_eq!(
            host.metric(&version(&v2)).unwrap(),
            1.0,
            "the metric names the version"
        );
        assert_eq!(
            host.metric(&version(&v1)).unwrap(),
            0.0,
            "and only the one that runs"
        );
    }
    publishing.await.unwrap();
    setup.drained(Duration::from_secs(30), &a).await;
    let by_v1 = setup.count("ORDERS", "orders.v1").await;
    let by_v2 = setup.count("ORDERS", "orders.v2").await;
    assert_eq!(by_v1 + by_v2, 600, "v1 {by_v1}, v2 {by_v2}");
    let info = setup.consumer().await;
    assert_eq!(info.num_redelivered, 0, "{}", tail(&a.log()));
    assert_eq!(info.delivered.consumer_sequence, 600);

    // Garbage put in the registry past the CLI's checks: both keep v2 and say why.
    let manifest = orders_to("orders.v3");
    registry::deploy(&setup.js, "orders", b"\0asm garbage", &manifest)
        .await
        .unwrap();
    converge(&[&a, &b], |s| {
        s.is_some_and(|s| s.last_deploy_error.is_some())
    })
    .await;
    for host in [&a, &b] {
        let status = orders_status(host).unwrap();
        assert_eq!(status.version.as_deref(), Some(v2.as_str()), "{status:?}");
        let failures = "jetwasm_deploy_failures_total{handler=\"orders\"}";
        assert_eq!(host.metric(failures).unwrap(), 1.0);
    }

    // A component whose bytes do not match the manifest's digest is refused.
    let (handlers, components) = registry::buckets(&setup.js).await.unwrap();
    let forged = "0".repeat(64);
    let mut bytes = &std::fs::read(handler_wasm("orders")).unwrap()[..];
    components.put(forged.as_str(), &mut bytes).await.unwrap();
    let value = serde_json::to_vec(&Deployment {
        digest: forged.clone(),
        manifest: orders_to("orders.v1"),
    })
    .unwrap();
    handlers.put("orders", value.into()).await.unwrap();
    converge(&[&a, &b], |s| {
        s.and_then(|s| s.last_deploy_error.as_deref())
            .is_some_and(|e| e.contains("SHA-256"))
    })
    .await;
    assert_eq!(
        orders_status(&a).unwrap().version.as_deref(),
        Some(v2.as_str())
    );

    // Rollback to v1's revision: both on v1.
    let listed = jetwasm(&setup, &["handlers"]);
    let row = listed.lines().find(|l| l.starts_with("orders ")).unwrap();
    assert!(row.contains(&forged[..12]), "{listed}");
    let first = 1;
    let out = jetwasm(&setup, &["rollback", "orders", "--to", &first.to_string()]);
    assert!(out.starts_with("rolled back orders"), "{out}");
    converge(&[&a, &b], runs(&v1)).await;
    setup.publish_all((600..650).map(order)).await;
    setup.drained(Duration::from_secs(30), &a).await;
    assert_eq!(setup.count("ORDERS", "orders.v1").await, by_v1 + 50);

    // A host started after all that runs what the registry says now.
    let late = registry_host(&setup).await;
    let status = orders_status(&late).expect("caught up before ready");
    assert!(runs(&v1)(Some(&status)), "{status:?}");
    assert_eq!(status.source, "registry");

    // Undeployed: every host stops it.
    jetwasm(&setup, &["undeploy", "orders"]);
    converge(&[&a, &b, &late], |s| s.is_none()).await;
}

#[test]
fn deploy_checks_the_component_and_its_manifest_before_touching_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("orders.toml");
    std::fs::write(&manifest, "stream = \"ORDERS\"\nconsumr = \"proc\"\n").unwrap();
    let run = |component: &std::path::Path| {
        // No server at this URL: the checks fail first, or the command says it cannot connect.
        let out = Command::new(env!("CARGO_BIN_EXE_jetwasm"))
            .args([
                "deploy",
                component.to_str().unwrap(),
                "--manifest",
                manifest.to_str().unwrap(),
            ])
            .args(["--server", "nats://127.0.0.1:1"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let error = run(&handler_wasm("orders"));
    assert!(
        error.contains("orders.toml") && error.contains("consumr"),
        "{error}"
    );
    std::fs::write(&manifest, "kind = \"publisher\"\nevery = \"1s\"\n").unwrap();
    let error = run(&handler_wasm("orders"));
    assert!(
        error.contains("the manifest makes it a publisher, but it fits the handler world"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cut_off_from_the_server_resyncs_with_the_registry_when_it_is_back() {
    let setup = Setup::new("").await;
    let proxy = harness::Proxy::start(&setup.server.url).await.unwrap();
    let config = format!(
        "streams = \"{}\"\n\n[runtime]\nhttp = \"{{http}}\"\n",
        setup.dir.path().join("streams.toml").display()
    );
    let host = Host::start_with(&proxy.url, &config, &["--registry"])
        .await
        .unwrap();
    deploy(&setup, "orders", "orders.v1");
    let v1 = version_of(&handler_wasm("orders")).unwrap();
    converge(&[&host], runs(&v1)).await;

    // Deployed while the host cannot reach the server.
    proxy.refuse(true);
    proxy.cut();
    deploy(&setup, "orders_c", "orders.v2");
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.refuse(false);
    let v2 = version_of(&handler_wasm("orders_c")).unwrap();
    let took = converge(&[&host], runs(&v2)).await;
    println!("registry: the host resynced {took:?} after the server was reachable again");
    setup.publish_all((0..20).map(order)).await;
    setup.drained(Duration::from_secs(30), &host).await;
    assert_eq!(setup.count("ORDERS", "orders.v2").await, 20);
}
