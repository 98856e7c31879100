//! The shipped deployments: the production host config on a real 3-node cluster, a host that
//! never scales a stream down, and a demo that builds only what it runs.

use std::process::Command;
use std::time::{Duration, Instant};

use async_nats::header::HeaderMap;
use async_nats::jetstream;
use harness::setup::order;
use harness::{deploy_config, workspace_root, Cluster, Host};
use jetwasm::bindings::PublishError;
use jetwasm::publish::{publish_acked, Connection, Denials};

const STREAMS: [&str; 2] = ["ORDERS", "DEADLETTER"];

/// The replica count `stream` is configured with. Asks again for up to 30 s while the
/// stream does not answer: after a node is lost, the stream (or the meta group) may still be
/// electing a leader, and a stream info request times out meanwhile.
async fn replicas(js: &jetstream::Context, stream: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = async {
            let mut handle = js.get_stream(stream).await?;
            anyhow::Ok(handle.info().await?.config.num_replicas)
        };
        match info.await {
            Ok(replicas) => return replicas,
            Err(e) if Instant::now() < deadline => {
                println!("stream {stream} did not answer ({e:#}); asking again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("stream {stream} did not answer within 30s: {e:#}"),
        }
    }
}

/// Applies `deploy/streams.toml` as the compose file's one-shot service does, through
/// stream-init's library (its CLI and flags are stream-init's own tests): with the `env`
/// overlay, destructive changes allowed or not.
async fn stream_init_apply(
    js: &jetstream::Context,
    env: Option<&str>,
    allow_destructive: bool,
) -> anyhow::Result<()> {
    let spec = stream_init::Spec::load(&workspace_root().join("deploy/streams.toml"), env)?;
    let plan = stream_init::plan(js, &spec).await?;
    plan.check_destructive(allow_destructive)?;
    stream_init::apply(js, &plan).await?;
    Ok(())
}

/// Publishes `n` orders with ids `prefix-i` the way the host's `publish` import does,
/// retrying each until the stream stores it (a failover takes a few seconds to elect a new
/// stream leader). Returns the errors met meanwhile; `no-stream` is never one of them, since
/// ORDERS exists all along.
async fn publish_through_failover(
    js: &jetstream::Context,
    prefix: &str,
    n: usize,
) -> Vec<PublishError> {
    let mut errors = Vec::new();
    let connection = Connection {
        js: js.clone(),
        denials: Denials::default(),
    };
    for i in 0..n {
        let payload = order(i).replacen("\"id\":\"", &format!("\"id\":\"{prefix}-"), 1);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let subject = "orders.created".to_owned();
            let result = publish_acked(
                &connection,
                subject,
                HeaderMap::new(),
                payload.clone().into(),
            )
            .await;
            match result {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    assert!(!matches!(e, PublishError::NoStream(_)), "{e:?}");
                    errors.push(e);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("order {i} not stored within 30s: {e:?}"),
            }
        }
    }
    errors
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_production_config_keeps_three_replicas_and_survives_losing_a_node() {
    let mut cluster = Cluster::start().await.unwrap();
    let url = cluster.url();
    let js = cluster.jetstream().await.unwrap();
    stream_init_apply(&js, None, false).await.unwrap();
    let host = Host::start(&url, &deploy_config("jetwasm.toml"))
        .await
        .unwrap();

    for stream in STREAMS {
        assert_eq!(
            replicas(&js, stream).await,
            3,
            "{stream} after the host started"
        );
    }
    let log = host.log();
    assert!(log.contains("streams up to date"), "{log}");

    // Kill the node that leads ORDERS: the worst single loss for publishing and consuming.
    let leader = {
        let mut orders = js.get_stream("ORDERS").await.unwrap();
        let info = orders.info().await.unwrap().clone();
        info.cluster
            .and_then(|c| c.leader)
            .expect("ORDERS has a leader")
    };
    let node = cluster
        .nodes
        .iter_mut()
        .find(|n| n.name().as_deref() == Some(leader.as_str()))
        .expect("the leader is one of the nodes");
    node.kill().unwrap();

    let acked = "jetwasm_messages_total{handler=\"orders\",outcome=\"ack\"}";
    let ticks = "jetwasm_publisher_ticks_total{outcome=\"ok\",publisher=\"orders-generator\"}";
    let (acked_before, ticks_before) = (host.metric(acked).unwrap(), host.metric(ticks).unwrap());
    let js = cluster.jetstream().await.unwrap();
    let errors = publish_through_failover(&js, "after-loss", 30).await;
    println!("publish errors during the failover: {errors:?}");
    host.wait_metric(acked, acked_before + 30.0, Duration::from_secs(60))
        .await
        .unwrap();
    host.wait_metric(ticks, ticks_before + 4.0, Duration::from_secs(30))
        .await
        .unwrap();
    for stream in STREAMS {
        assert_eq!(replicas(&js, stream).await, 3, "{stream} after the loss");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neither_the_host_nor_stream_init_scale_a_cluster_down_unless_told() {
    let cluster = Cluster::start().await.unwrap();
    let url = cluster.url();
    let js = cluster.jetstream().await.unwrap();
    stream_init_apply(&js, None, false).await.unwrap();

    // The dev config against the cluster: its overlay would scale both streams to 1 replica.
    let mut host = Host::spawn(&url, &deploy_config("jetwasm.dev.toml")).unwrap();
    let status = host.wait_exit(Duration::from_secs(60)).await.unwrap();
    assert!(!status.success());
    let log = host.log();
    assert!(
        log.contains("stream ORDERS: replicas 3 → 1")
            && log.contains("stream DEADLETTER: replicas 3 → 1"),
        "the refusal names each stream and field:\n{log}"
    );
    assert!(
        log.contains("allow_destructive"),
        "and how to allow it:\n{log}"
    );

    let refused = stream_init_apply(&js, Some("dev"), false)
        .await
        .unwrap_err();
    let refused = format!("{refused:#}");
    assert!(
        refused.contains("stream ORDERS: replicas 3 → 1")
            && refused.contains("--allow-destructive"),
        "{refused}"
    );
    for stream in STREAMS {
        assert_eq!(replicas(&js, stream).await, 3, "{stream} untouched");
    }

    stream_init_apply(&js, Some("dev"), true).await.unwrap();
    assert_eq!(replicas(&js, "ORDERS").await, 1, "allowed explicitly");
}

/// `make demo` must not wait for the Python, JavaScript, Go and C toolchains it does not use.
#[test]
fn the_demo_builds_only_the_rust_components_it_runs() {
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new("make")
        .args(["-n", "demo"])
        .current_dir(workspace_root())
        .env("TOOLS", empty.path().join("tools"))
        .env("HANDLERS_TARGET", empty.path().join("handlers"))
        .env("CARGO_TARGET_DIR", empty.path().join("target"))
        .output()
        .unwrap();
    let commands = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        commands.contains("-p orders -p orders-generator -p orders-intake"),
        "{commands}"
    );
    for lang in ["python", "js", "go", "c"] {
        assert!(
            !commands.contains(&format!("handlers/{lang}/"))
                && !commands.contains(&format!("orders_{lang}")),
            "make demo builds the {lang} handler:\n{commands}"
        );
    }
    assert!(commands.contains("deploy/demo.sh"), "{commands}");
}

/// `make` installs toolchains where `jetwasm new` projects look for them (handlers/toolchain.sh:
/// `JETWASM_TOOLS`, default `~/.cache/jetwasm/tools`), so nothing is installed twice.
#[test]
fn make_and_new_projects_share_one_toolchain_folder() {
    let home = tempfile::tempdir().unwrap();
    let elsewhere = home.path().join("elsewhere");
    let default = home.path().join(".cache/jetwasm/tools");
    for (jetwasm_tools, expected) in [(None, &default), (Some(&elsewhere), &elsewhere)] {
        let mut make = Command::new("make");
        make.args(["-n", "nats-server"])
            .current_dir(workspace_root())
            .env("HOME", home.path())
            .env_remove("TOOLS")
            .env_remove("NATS_SERVER_BIN")
            .env_remove("JETWASM_TOOLS")
            // Run from `make test TOOLS=...`, the outer make passes its command line down.
            .env_remove("MAKEFLAGS")
            .env_remove("MFLAGS")
            .env_remove("MAKELEVEL");
        if let Some(dir) = jetwasm_tools {
            make.env("JETWASM_TOOLS", dir);
        }
        let out = make.output().unwrap();
        let commands = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        let venv = format!("python3 -m venv {}/venv", expected.display());
        assert!(commands.contains(&venv), "{venv}:\n{commands}");
    }
    let toolchain =
        std::fs::read_to_string(workspace_root().join("handlers/toolchain.sh")).unwrap();
    assert!(
        toolchain.contains(r#"tools="${JETWASM_TOOLS:-$HOME/.cache/jetwasm/tools}""#),
        "toolchain.sh's default moved: keep the Makefile's in step"
    );
}
