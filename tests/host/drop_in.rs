//! The handlers folder: components dropped in beside their manifests run as if configured; a
//! bad drop-in is refused, named and counted, and never stops the host.

use std::path::Path;
use std::time::Duration;

use harness::setup::{order, tail, Setup};
use harness::{handler_wasm, http_get, Host};
use jetwasm::status::{version_of, StatusBody};

/// A manifest for the orders handler on the test consumer.
const ORDERS_MANIFEST: &str = r#"
stream = "ORDERS"
consumer = "proc"
publish = ["orders.processed"]
config = { output_subject = "orders.processed", retry_delay_ms = 100 }
"#;

fn drop_file(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) {
    std::fs::write(dir.join(name), bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_dropped_in_a_folder_run_and_bad_ones_are_refused_without_stopping_the_host() {
    let setup = Setup::new("").await;
    let folder = tempfile::tempdir().unwrap();
    let dir = folder.path();
    // A good handler, and beside it every way a drop-in can be wrong.
    std::fs::copy(handler_wasm("orders"), dir.join("orders.wasm")).unwrap();
    drop_file(dir, "orders.toml", ORDERS_MANIFEST);
    drop_file(dir, "garbage.wasm", b"not a component");
    drop_file(dir, "garbage.toml", ORDERS_MANIFEST);
    std::fs::copy(handler_wasm("orders"), dir.join("typo.wasm")).unwrap();
    drop_file(
        dir,
        "typo.toml",
        ORDERS_MANIFEST.replace("consumer =", "consumr ="),
    );
    std::fs::copy(handler_wasm("orders"), dir.join("elsewhere.wasm")).unwrap();
    drop_file(
        dir,
        "elsewhere.toml",
        ORDERS_MANIFEST.replace("\"proc\"", "\"nobody\""),
    );
    drop_file(dir, "lonely.toml", ORDERS_MANIFEST);
    drop_file(dir, "README.md", "not a drop-in: ignored");

    // No handler in the config: the folder, given on the command line, is all it runs.
    let config = format!(
        "streams = \"{}\"\n\n[runtime]\nhttp = \"{{http}}\"\n",
        setup.dir.path().join("streams.toml").display()
    );
    let folder_flag = dir.to_str().unwrap();
    let host = Host::start_with(&setup.server.url, &config, &["--handlers-dir", folder_flag])
        .await
        .unwrap();

    setup.publish_all((0..20).map(order)).await;
    setup.drained(Duration::from_secs(20), &host).await;
    let acked = "jetwasm_messages_total{handler=\"orders\",outcome=\"ack\"}";
    assert_eq!(host.metric(acked).unwrap(), 20.0, "{}", tail(&host.log()));
    assert_eq!(setup.count("ORDERS", "orders.processed").await, 20);

    let log = host.log();
    let refusals = [
        ("garbage", "not a WebAssembly component"),
        ("typo", "unknown field `consumr`"),
        ("elsewhere", "nobody"),
        ("lonely", "no component lonely.wasm beside it"),
    ];
    for (name, why) in refusals {
        let line = log
            .lines()
            .find(|line| {
                line.contains("drop-in refused") && line.contains(&format!("drop_in=\"{name}\""))
            })
            .unwrap_or_else(|| panic!("{name} is not reported:\n{}", tail(&log)));
        assert!(line.contains(why), "{name}: {line}");
        let failures = format!("jetwasm_deploy_failures_total{{handler=\"{name}\"}}");
        assert_eq!(host.metric(&failures).unwrap(), 1.0, "{name}");
    }
    assert!(log.contains("typo.toml"), "the manifest is named");
    assert!(!log.contains("README"), "other files are not drop-ins");
    assert_eq!(http_get(host.http, "/readyz").unwrap().0, 200);

    // /status shows what runs, from where and in which version, and why the others do not.
    let (code, body) = http_get(host.http, "/status").unwrap();
    assert_eq!(code, 200, "{body}");
    let status: StatusBody = serde_json::from_str(&body).unwrap();
    let entry = |name: &str| {
        (status.components.iter())
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("{name} missing from /status: {body}"))
    };
    let orders = entry("orders");
    assert_eq!(
        (
            orders.kind.as_deref(),
            orders.source.as_str(),
            orders.state.as_str()
        ),
        (Some("handler"), "folder", "running")
    );
    assert_eq!(orders.version, version_of(&dir.join("orders.wasm")));
    assert_eq!(orders.in_flight, Some(0));
    for (name, why) in refusals {
        let refused = entry(name);
        assert_eq!(refused.state, "refused", "{name}");
        assert!(
            refused.error.as_deref().unwrap().contains(why),
            "{name}: {refused:?}"
        );
    }
    assert_eq!(status.components.len(), 5, "{body}");

    // `jetwasm status` prints the same as a table.
    let url = format!("http://{}", host.http);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jetwasm"))
        .args(["status", "--url", &url])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let row = table.lines().find(|l| l.starts_with("orders ")).unwrap();
    assert!(
        row.contains("running") && row.contains(orders.version.as_deref().unwrap()),
        "{table}"
    );
    assert!(
        table.contains("  ") && table.contains("no component lonely.wasm beside it"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_dropped_in_with_kind_publisher_runs_on_its_schedule() {
    let setup = Setup::new("").await;
    let folder = tempfile::tempdir().unwrap();
    let dir = folder.path();
    std::fs::copy(handler_wasm("orders_generator"), dir.join("generator.wasm")).unwrap();
    let manifest = "kind = \"publisher\"\nevery = \"50ms\"\npublish = [\"orders.created\"]\n";
    drop_file(dir, "generator.toml", manifest);
    let config = format!(
        "streams = \"{}\"\n\n[runtime]\nhttp = \"{{http}}\"\nhandlers_dir = \"{}\"\n",
        setup.dir.path().join("streams.toml").display(),
        dir.display()
    );
    let host = Host::start(&setup.server.url, &config).await.unwrap();
    let ticks = "jetwasm_publisher_ticks_total{outcome=\"ok\",publisher=\"generator\"}";
    host.wait_metric(ticks, 3.0, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(setup.count("ORDERS", "orders.created").await >= 3);
}
