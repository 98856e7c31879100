//! The handlers folder: components dropped in beside their manifests run as if configured; a
//! bad drop-in is refused, named and counted, and never stops the host.

use std::path::Path;
use std::time::{Duration, Instant};

use harness::setup::{order, tail, Setup};
use harness::{handler_wasm, http_get, Host};
use jetwasm::status::{version_of, ComponentStatus, StatusBody};

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
    let row = (table.lines())
        .find(|l| l.split_whitespace().take(2).eq(["default", "orders"]))
        .unwrap_or_else(|| panic!("no row for orders:\n{table}"));
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

/// Puts `bytes` in `dir/name` as an operator should: written beside it under a hidden name,
/// then moved in (atomic: the watcher never sees half a file).
fn move_in(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) {
    let hidden = dir.join(format!(".{name}.partial"));
    std::fs::write(&hidden, bytes).unwrap();
    std::fs::rename(hidden, dir.join(name)).unwrap();
}

/// Starts a host whose only handlers are in the folder `dir`, watched.
async fn host_on_folder(setup: &Setup, dir: &Path) -> Host {
    let config = format!(
        "streams = \"{}\"\n\n[runtime]\nhttp = \"{{http}}\"\n",
        setup.dir.path().join("streams.toml").display()
    );
    let flags = ["--handlers-dir", dir.to_str().unwrap()];
    Host::start_with(&setup.server.url, &config, &flags)
        .await
        .unwrap()
}

/// The status of `name` on `host`, if it has one.
fn status_of(host: &Host, name: &str) -> Option<ComponentStatus> {
    let (code, body) = http_get(host.http, "/status").unwrap();
    assert_eq!(code, 200, "{body}");
    let status: StatusBody = serde_json::from_str(&body).unwrap();
    status.components.into_iter().find(|c| c.name == name)
}

/// Waits until `name`'s status on `host` satisfies `done`.
async fn wait_status(host: &Host, name: &str, done: impl Fn(Option<&ComponentStatus>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done(status_of(host, name).as_ref()) {
        assert!(
            Instant::now() < deadline,
            "{name}: {:?}\n{}",
            status_of(host, name),
            tail(&host.log())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The orders handler's manifest writing its output to `subject`.
fn orders_to(subject: &str) -> String {
    format!(
        "stream = \"ORDERS\"\nconsumer = \"proc\"\npublish = [\"{subject}\"]\nconfig = {{ output_subject = \"{subject}\" }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_dropped_in_while_running_is_replaced_mid_stream_then_removed() {
    let setup = Setup::new("ack_wait = \"5s\"").await;
    let folder = tempfile::tempdir().unwrap();
    let dir = folder.path();
    let host = host_on_folder(&setup, dir).await;

    // Added while the host runs.
    let (v1, v2) = (handler_wasm("orders"), handler_wasm("orders_c"));
    move_in(dir, "orders.toml", orders_to("orders.v1"));
    move_in(dir, "orders.wasm", std::fs::read(&v1).unwrap());
    let v1_version = version_of(&v1).unwrap();
    wait_status(&host, "orders", |s| {
        s.is_some_and(|s| s.state == "running" && s.version.as_deref() == Some(&v1_version))
    })
    .await;

    // Replaced mid-stream by a version that writes elsewhere (another language, new bytes).
    let publishing = setup.publish_steadily(600);
    while setup.count("ORDERS", "orders.v1").await < 100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    move_in(dir, "orders.wasm", std::fs::read(&v2).unwrap());
    move_in(dir, "orders.toml", orders_to("orders.v2"));
    let v2_version = version_of(&v2).unwrap();
    wait_status(&host, "orders", |s| {
        s.is_some_and(|s| s.version.as_deref() == Some(&v2_version))
    })
    .await;
    publishing.await.unwrap();
    setup.drained(Duration::from_secs(30), &host).await;
    let (by_v1, by_v2) = (
        setup.count("ORDERS", "orders.v1").await,
        setup.count("ORDERS", "orders.v2").await,
    );
    assert_eq!(by_v1 + by_v2, 600, "v1 {by_v1}, v2 {by_v2}");
    assert!(by_v1 >= 100 && by_v2 > 0, "v1 {by_v1}, v2 {by_v2}");
    // Nothing redelivered because of the swap, nothing handled twice.
    let info = setup.consumer().await;
    assert_eq!(info.num_redelivered, 0, "{}", tail(&host.log()));
    assert_eq!(info.delivered.consumer_sequence, 600, "each delivered once");
    let acked = "jetwasm_messages_total{handler=\"orders\",outcome=\"ack\"}";
    assert_eq!(host.metric(acked).unwrap(), 600.0);
    let swap = format!("orders: {v1_version} → {v2_version}");
    assert!(host.log().contains(&swap), "{}", tail(&host.log()));

    // After the swap only v2 runs.
    setup.publish_all((600..650).map(order)).await;
    setup.drained(Duration::from_secs(30), &host).await;
    assert_eq!(setup.count("ORDERS", "orders.v1").await, by_v1);
    assert_eq!(setup.count("ORDERS", "orders.v2").await, by_v2 + 50);

    // A bad file over the running version: v2 keeps running, the error is shown and counted.
    move_in(dir, "orders.wasm", b"\0asm garbage");
    wait_status(&host, "orders", |s| {
        s.is_some_and(|s| s.last_deploy_error.is_some())
    })
    .await;
    let orders = status_of(&host, "orders").unwrap();
    assert_eq!(
        (orders.state.as_str(), orders.version.as_deref()),
        ("running", Some(v2_version.as_str())),
        "{orders:?}"
    );
    let error = orders.last_deploy_error.unwrap();
    assert!(error.contains("orders.wasm"), "{error}");
    let failures = "jetwasm_deploy_failures_total{handler=\"orders\"}";
    assert_eq!(host.metric(failures).unwrap(), 1.0);
    setup.publish_all((650..660).map(order)).await;
    setup.drained(Duration::from_secs(30), &host).await;
    assert_eq!(setup.count("ORDERS", "orders.v2").await, by_v2 + 60);

    // Removed: the consumer is unbound, and what comes next waits for another host.
    std::fs::remove_file(dir.join("orders.wasm")).unwrap();
    std::fs::remove_file(dir.join("orders.toml")).unwrap();
    wait_status(&host, "orders", |s| s.is_none()).await;
    let pulls = "jetwasm_consumer_pulls{handler=\"orders\"}";
    let deadline = Instant::now() + Duration::from_secs(10);
    while host.metric(pulls).unwrap() > 0.0 {
        assert!(Instant::now() < deadline, "{}", tail(&host.log()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    setup.publish_all((660..670).map(order)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(setup.consumer().await.num_pending, 10, "nobody pulls");
    assert!(
        host.log().contains("drop-in removed"),
        "{}",
        tail(&host.log())
    );
    assert_eq!(http_get(host.http, "/readyz").unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_copy_into_the_folder_is_never_loaded_half_way() {
    let setup = Setup::new("").await;
    let folder = tempfile::tempdir().unwrap();
    let dir = folder.path();
    let host = host_on_folder(&setup, dir).await;
    move_in(dir, "orders.toml", ORDERS_MANIFEST);
    // Written in place, a piece every 100ms, as a slow `cp` would.
    let bytes = std::fs::read(handler_wasm("orders")).unwrap();
    let mut file = std::fs::File::create(dir.join("orders.wasm")).unwrap();
    for piece in bytes.chunks(bytes.len() / 8 + 1) {
        std::io::Write::write_all(&mut file, piece).unwrap();
        file.sync_all().unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(file);
    wait_status(&host, "orders", |s| s.is_some_and(|s| s.state == "running")).await;
    let failures = "jetwasm_deploy_failures_total{handler=\"orders\"}";
    assert_eq!(host.metric(failures).unwrap(), 0.0, "{}", tail(&host.log()));
    assert!(
        !host.log().contains("drop-in refused"),
        "{}",
        tail(&host.log())
    );
    setup.publish_all((0..10).map(order)).await;
    setup.drained(Duration::from_secs(20), &host).await;
    assert_eq!(setup.count("ORDERS", "orders.processed").await, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_publisher_dropped_in_while_running_serves_its_route_until_removed() {
    let setup = Setup::new("").await;
    let folder = tempfile::tempdir().unwrap();
    let dir = folder.path();
    let host = host_on_folder(&setup, dir).await;
    let post = |body: &str| {
        harness::http_request(host.http, "POST", "/orders", &[], body.as_bytes())
            .unwrap()
            .0
    };
    assert_eq!(post(&order(0)), 404, "no route yet");
    let manifest = "kind = \"publisher\"\nhttp = { method = \"POST\", path = \"/orders\" }\npublish = [\"orders.created\"]\n";
    move_in(dir, "intake.toml", manifest);
    move_in(
        dir,
        "intake.wasm",
        std::fs::read(handler_wasm("orders_intake")).unwrap(),
    );
    wait_status(&host, "intake", |s| s.is_some_and(|s| s.state == "running")).await;
    assert_eq!(post(&order(1)), 202);
    assert_eq!(
        harness::http_request(host.http, "GET", "/orders", &[], b"")
            .unwrap()
            .0,
        405,
        "the path is served for POST only"
    );
    assert_eq!(setup.count("ORDERS", "orders.created").await, 1);

    std::fs::remove_file(dir.join("intake.toml")).unwrap();
    wait_status(&host, "intake", |s| s.is_some_and(|s| s.state == "refused")).await;
    assert_eq!(post(&order(2)), 404, "a lone .wasm is not served");
    assert_eq!(setup.count("ORDERS", "orders.created").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_take_turns_at_a_full_instance_pool_and_a_quiet_one_is_not_starved() {
    let setup = Setup::new("").await;
    let folder = tempfile::tempdir().unwrap();
    let dir = folder.path();
    // Two instances for the whole host, far fewer than the two handlers' max_in_flight.
    let config = format!(
        "streams = \"{}\"\n\n[runtime]\nhttp = \"{{http}}\"\nmax_instances = 2\n",
        setup.dir.path().join("streams.toml").display()
    );
    let flags = ["--handlers-dir", dir.to_str().unwrap()];
    let host = Host::start_with(&setup.server.url, &config, &flags)
        .await
        .unwrap();
    // A slow handler on its own consumer (orders.slow), 8 calls at once, 400 ms each...
    let slow = "stream = \"ORDERS\"\nlimits = { max_in_flight = 8 }\nconfig = { sleep_ms = 400 }\n\n[consumer]\ndurable = \"slowpoke\"\nfilter_subjects = [\"orders.slow\"]\n";
    move_in(dir, "slow.toml", slow);
    move_in(
        dir,
        "slow.wasm",
        std::fs::read(handler_wasm("fixture_slow")).unwrap(),
    );
    // ... and the orders handler beside it, with the default 64.
    move_in(dir, "orders.toml", ORDERS_MANIFEST);
    move_in(
        dir,
        "orders.wasm",
        std::fs::read(handler_wasm("orders")).unwrap(),
    );
    for name in ["slow", "orders"] {
        wait_status(&host, name, |s| s.is_some_and(|s| s.state == "running")).await;
    }
    for i in 0..20 {
        let ack = setup.js.publish("orders.slow", format!("{i}").into()).await;
        ack.unwrap().await.unwrap();
    }
    let slow_acked = "jetwasm_messages_total{handler=\"slow\",outcome=\"ack\"}";
    host.wait_metric("jetwasm_pool_calls_waiting", 1.0, Duration::from_secs(10))
        .await
        .unwrap();
    // The pool is full and the slow handler's calls wait for it: the orders still get turns.
    let started = Instant::now();
    setup.publish_all((0..5).map(order)).await;
    let mut most_in_use = 0.0_f64;
    while setup.count("ORDERS", "orders.processed").await < 5 {
        most_in_use = most_in_use.max(host.metric("jetwasm_pool_instances_in_use").unwrap());
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{}",
            tail(&host.log())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let slow_done = host.metric(slow_acked).unwrap_or(0.0);
    assert!(
        slow_done < 20.0,
        "the orders went through while the slow backlog still waited ({slow_done} of 20 done)"
    );
    assert!(
        most_in_use <= 2.0,
        "never more than the pool: {most_in_use}"
    );
    host.wait_metric(slow_acked, 20.0, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(host.metric("jetwasm_pool_calls_waiting").unwrap(), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_brings_its_own_consumer_created_updated_and_never_deleted() {
    let setup = Setup::new("").await;
    let folder = tempfile::tempdir().unwrap();
    let dir = folder.path();
    let host = host_on_folder(&setup, dir).await;
    let manifest = |max_deliver: u32| {
        format!(
            "stream = \"ORDERS\"\npublish = [\"orders.processed\"]\n\n[consumer]\ndurable = \"audit\"\nfilter_subjects = [\"orders.created\"]\nmax_deliver = {max_deliver}\n"
        )
    };
    move_in(dir, "audit.toml", manifest(3));
    move_in(
        dir,
        "audit.wasm",
        std::fs::read(handler_wasm("orders")).unwrap(),
    );
    wait_status(&host, "audit", |s| s.is_some_and(|s| s.state == "running")).await;
    let audit = || async {
        let stream = setup.stream("ORDERS").await;
        stream.consumer_info("audit").await.unwrap().config
    };
    assert_eq!(audit().await.max_deliver, 3, "created from the manifest");
    setup.publish_all((0..10).map(order)).await;
    let acked = "jetwasm_messages_total{handler=\"audit\",outcome=\"ack\"}";
    host.wait_metric(acked, 10.0, Duration::from_secs(20))
        .await
        .unwrap();

    // A new manifest updates it through stream-init's plan and apply.
    move_in(dir, "audit.toml", manifest(5));
    let deadline = Instant::now() + Duration::from_secs(20);
    while audit().await.max_deliver != 5 {
        assert!(Instant::now() < deadline, "{}", tail(&host.log()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        host.log()
            .contains("stream-init: updated consumer ORDERS/audit: max_deliver 3 → 5"),
        "{}",
        tail(&host.log())
    );

    // A change JetStream cannot make in place is refused; the running version keeps running.
    move_in(
        dir,
        "audit.toml",
        manifest(5).replace("[consumer]", "[consumer]\ndeliver_policy = \"new\""),
    );
    wait_status(&host, "audit", |s| {
        s.is_some_and(|s| s.last_deploy_error.is_some())
    })
    .await;
    let error = status_of(&host, "audit")
        .unwrap()
        .last_deploy_error
        .unwrap();
    assert!(error.contains("deliver_policy"), "{error}");

    // Removed, the handler unbinds; its consumer stays (the operator's to delete).
    std::fs::remove_file(dir.join("audit.wasm")).unwrap();
    wait_status(&host, "audit", |s| s.is_some_and(|s| s.state == "refused")).await;
    assert_eq!(audit().await.max_deliver, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_handler_drains_its_running_calls_then_is_gone() {
    let setup = Setup::new("ack_wait = \"30s\"").await;
    let folder = tempfile::tempdir().unwrap();
    let dir = folder.path();
    let host = host_on_folder(&setup, dir).await;
    let manifest = "stream = \"ORDERS\"\nconsumer = \"proc\"\nlimits = { max_in_flight = 2 }\nconfig = { sleep_ms = 1500 }\n";
    move_in(dir, "slow.toml", manifest);
    move_in(
        dir,
        "slow.wasm",
        std::fs::read(handler_wasm("fixture_slow")).unwrap(),
    );
    wait_status(&host, "slow", |s| s.is_some_and(|s| s.state == "running")).await;
    setup.publish_all(["a".to_owned(), "b".to_owned()]).await;
    wait_status(&host, "slow", |s| s.is_some_and(|s| s.in_flight == Some(2))).await;

    std::fs::remove_file(dir.join("slow.wasm")).unwrap();
    std::fs::remove_file(dir.join("slow.toml")).unwrap();
    wait_status(&host, "slow", |s| {
        s.is_some_and(|s| s.state == "draining" && s.in_flight == Some(2))
    })
    .await;
    wait_status(&host, "slow", |s| s.is_none()).await;
    // Both calls finished on the removed version and were acked: nothing left behind.
    let info = setup.consumer().await;
    assert_eq!(
        (info.ack_floor.stream_sequence, info.num_ack_pending),
        (2, 0),
        "{}",
        tail(&host.log())
    );
}

/// Waits until `output` (a file a child process writes) contains `text`; returns it all.
async fn wait_output(output: &Path, text: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let out = std::fs::read_to_string(output).unwrap_or_default();
        if out.contains(text) {
            return out;
        }
        assert!(Instant::now() < deadline, "no {text:?} in:\n{out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `jetwasm dev` on a project: built with its own `build.sh` (here a stand-in that copies a
/// real component named in `source.txt`, so the test needs no toolchain), dropped into a
/// running host's folder, rebuilt at each save; a failed build shows its error and leaves the
/// running version alone; a good one is swapped in and reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_rebuilds_a_project_at_each_save_and_swaps_it_into_the_running_host() {
    let setup = Setup::new("").await;
    let work = tempfile::tempdir().unwrap();
    let (folder, project) = (work.path().join("handlers.d"), work.path().join("audit"));
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::create_dir_all(&project).unwrap();
    let build = "#!/bin/sh\nset -e\nsource=$(cat source.txt)\nif [ \"$source\" = broken ]; then\n  echo 'app.c:3:1: error: expected ; before }' >&2\n  exit 1\nfi\ncp \"$source\" \"$1\"\n";
    std::fs::write(project.join("build.sh"), build).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    let executable = std::fs::Permissions::from_mode(0o755);
    std::fs::set_permissions(project.join("build.sh"), executable).unwrap();
    std::fs::write(project.join("audit.toml"), ORDERS_MANIFEST).unwrap();
    let source = |text: String| std::fs::write(project.join("source.txt"), text).unwrap();
    let wasm = |name: &str| handler_wasm(name).display().to_string();
    source(wasm("orders"));

    let config = format!(
        "streams = \"{}\"\n\n[runtime]\nhttp = \"{{http}}\"\n",
        setup.dir.path().join("streams.toml").display()
    );
    let folder_flag = folder.to_str().unwrap();
    let host = Host::start_with(&setup.server.url, &config, &["--handlers-dir", folder_flag])
        .await
        .unwrap();
    let output = work.path().join("dev.out");
    let mut dev = std::process::Command::new(env!("CARGO_BIN_EXE_jetwasm"))
        .arg("dev")
        .arg(&project)
        .args(["--handlers-dir", folder_flag])
        .args(["--url", &format!("http://{}", host.http)])
        .stdout(std::fs::File::create(&output).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let first = version_of(&handler_wasm("orders")).unwrap();
    let out = wait_output(&output, "running (", Duration::from_secs(60)).await;
    assert!(
        out.contains(&format!("dev: audit {first} running")),
        "{out}"
    );
    setup.publish_all((0..5).map(order)).await;
    setup.drained(Duration::from_secs(20), &host).await;
    assert_eq!(setup.count("ORDERS", "orders.processed").await, 5);

    // A save that breaks the build: its error, and the host keeps the running version.
    source("broken".into());
    let out = wait_output(&output, "build failed", Duration::from_secs(30)).await;
    assert!(
        out.contains("app.c:3:1: error: expected ; before }"),
        "{out}"
    );
    assert!(
        out.contains("the running version (if any) keeps running"),
        "{out}"
    );

    // A save that builds: swapped in, and the host runs it.
    source(wasm("orders_python"));
    let second = version_of(&handler_wasm("orders_python")).unwrap();
    let swapped = format!("dev: audit {first} → {second} running");
    let out = wait_output(&output, &swapped, Duration::from_secs(90)).await;
    let status = http_get(host.http, "/status").unwrap().1;
    let status: StatusBody = serde_json::from_str(&status).unwrap();
    let audit = status.components.iter().find(|c| c.name == "audit");
    assert_eq!(
        audit.and_then(|c| c.version.as_deref()),
        Some(second.as_str()),
        "{out}"
    );
    let _ = dev.kill();
    let _ = dev.wait();
}
