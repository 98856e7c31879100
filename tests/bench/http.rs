//! The HTTP publisher benchmark: requests/s and latency (p50, p99) of `POST /orders` from
//! `BENCH_HTTP_CONNECTIONS` keep-alive connections for `BENCH_HTTP_SECS` seconds, four ways,
//! in the same run:
//! - jetwasm serving the intake (validate, publish, await the PubAck): the product's route;
//! - jetwasm serving a plain `wasi:http` component that validates the same order and answers
//!   without publishing: the host's HTTP path alone;
//! - the same plain component on a plain wasmtime server built as `wasmtime serve` is (hyper,
//!   a fresh store and instance per request, no limits of ours): the baseline, once with
//!   wasmtime's default settings (the pooling allocator with its defaults, as `wasmtime serve`
//!   uses), once with jetwasm's engine settings (`jetwasm::engine`), so that the host's own
//!   HTTP layer (admission, limits, metrics) is measured apart from its engine tuning.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use harness::handler_wasm;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use jetwasm::config::Config;
use jetwasm::metrics::Metrics;
use jetwasm::sandbox::NoOutgoingRequests;
use tokio_util::sync::CancellationToken;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::{env_or, median};

/// One load run against one server.
struct Run {
    rate: f64,
    p50: Duration,
    p99: Duration,
    /// Answers other than 202.
    errors: usize,
}

/// Runs the three servers `rounds` times and prints each round and the medians.
pub async fn bench(js: &jetstream::Context, rounds: usize) -> anyhow::Result<()> {
    let connections = env_or("BENCH_HTTP_CONNECTIONS", 32);
    let secs = env_or("BENCH_HTTP_SECS", 5) as u64;
    let plain = handler_wasm("fixture_http_validate");
    let shutdown = CancellationToken::new();
    let intake = serve_jetwasm(js, &handler_wasm("orders_intake"), &shutdown).await?;
    let hosted_plain = serve_jetwasm(js, &plain, &shutdown).await?;
    let mut defaults = wasmtime::Config::new();
    defaults.allocation_strategy(wasmtime::InstanceAllocationStrategy::pooling());
    let baseline = serve_plain_wasmtime(&plain, Engine::new(&defaults)?, &shutdown)?;
    let tuned = jetwasm::engine::new(jetwasm::engine::PoolSize {
        reservable: connections as u32,
        instances: (connections + 16) as u32,
        max_memory: 64 << 20,
        keep_resident: jetwasm::config::DEFAULT_KEEP_RESIDENT.as_u64() as usize,
    })?;
    let baseline_tuned = serve_plain_wasmtime(&plain, tuned, &shutdown)?;
    println!("HTTP: POST /orders, {connections} keep-alive connections, {secs}s per run");
    let servers = [baseline, baseline_tuned, hosted_plain, intake];
    let mut runs: [Vec<Run>; 4] = Default::default();
    for round in 1..=rounds {
        for (i, addr) in servers.into_iter().enumerate() {
            runs[i].push(load(addr, connections, Duration::from_secs(secs)).await?);
        }
        let [b, t, p, j] = [0, 1, 2, 3].map(|i| runs[i].last().expect("just ran"));
        println!("HTTP round {round}:");
        println!("  plain wasmtime, default settings   {}", show(b));
        println!("  plain wasmtime, jetwasm's engine   {}", show(t));
        println!("  jetwasm, same component            {}", show(p));
        println!("  jetwasm intake (publishes)         {}", show(j));
    }
    shutdown.cancel();
    let [b, t, p, j] = runs.map(|mut runs| summary(&mut runs));
    println!(
        "HTTP median: plain wasmtime {:.0} req/s (p99 {:.1?}), with jetwasm's engine settings {:.0} req/s (p99 {:.1?}); jetwasm, same component {:.0} req/s (p99 {:.1?}): ratio {:.2} to plain, {:.2} to the same engine; jetwasm intake, publishing each order {:.0} req/s (p99 {:.1?}): ratio {:.2} to plain",
        b.0, b.1, t.0, t.1, p.0, p.1, p.0 / b.0, p.0 / t.0, j.0, j.1, j.0 / b.0
    );
    Ok(())
}

fn show(run: &Run) -> String {
    format!(
        "{:>6.0} req/s p50 {:>7.1?} p99 {:>7.1?}{}",
        run.rate,
        run.p50,
        run.p99,
        if run.errors > 0 {
            format!(" ({} not 202)", run.errors)
        } else {
            String::new()
        }
    )
}

/// The median rate and the median p99 of `runs`.
fn summary(runs: &mut [Run]) -> (f64, Duration) {
    let mut rates: Vec<f64> = runs.iter().map(|r| r.rate).collect();
    let mut p99s: Vec<f64> = runs.iter().map(|r| r.p99.as_secs_f64()).collect();
    (
        median(&mut rates),
        Duration::from_secs_f64(median(&mut p99s)),
    )
}

/// The host's HTTP listener with `component` as an HTTP publisher on `POST /orders`, in this
/// process, as `jetwasm run` serves it.
async fn serve_jetwasm(
    js: &jetstream::Context,
    component: &Path,
    shutdown: &CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let text = format!(
        r#"
[runtime]
http = "127.0.0.1:0"

[[publisher]]
name = "intake"
component = "{}"
http = {{ method = "POST", path = "/orders" }}
publish = ["bench.http"]
config = {{ subject = "bench.http" }}
"#,
        component.display()
    );
    let config = Config::parse(&text, Path::new(".")).map_err(|e| anyhow::anyhow!(e.join("; ")))?;
    let metrics = Metrics::new();
    let loader = jetwasm::components::Loader::for_config(&config, js, &metrics)?;
    let calls = tokio_util::task::TaskTracker::new();
    let deployments = jetwasm::deployments::Deployments::new(loader, &metrics, shutdown, &calls);
    deployments.start_configured(&config.components()).await?;
    let status = jetwasm::listener::Status {
        metrics,
        ready: Arc::new(AtomicBool::new(true)),
        deployments: Arc::new(deployments),
    };
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    jetwasm::listener::serve(any_port, status, shutdown.clone()).await
}

/// Store data for the plain server: WASI with nothing granted, and wasi:http.
struct Plain {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    /// The component makes no outgoing requests; refusing them costs nothing.
    hooks: NoOutgoingRequests,
    table: ResourceTable,
}

impl WasiView for Plain {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Plain {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            hooks: &mut self.hooks,
            table: &mut self.table,
            ctx: &mut self.http,
        }
    }
}

/// `component` served on `engine` the way `wasmtime serve` serves it: hyper HTTP/1 with
/// keep-alive, a fresh store and instance per request.
fn serve_plain_wasmtime(
    component: &Path,
    engine: Engine,
    shutdown: &CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let component = Component::from_file(&engine, component)?;
    let mut linker = Linker::<Plain>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    let pre = ProxyPre::new(linker.instantiate_pre(&component)?)?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
            };
            let pre = pre.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let pre = pre.clone();
                    async move { handle_plain(pre, request).await }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// One request in a fresh store and instance.
async fn handle_plain(
    pre: ProxyPre<Plain>,
    request: hyper::Request<hyper::body::Incoming>,
) -> anyhow::Result<hyper::Response<HyperOutgoingBody>> {
    let (parts, body) = request.into_parts();
    let body = Full::new(body.collect().await?.to_bytes());
    let request = hyper::Request::from_parts(parts, body);
    let mut store = Store::new(
        pre.engine(),
        Plain {
            wasi: WasiCtx::builder().build(),
            http: WasiHttpCtx::new(),
            hooks: NoOutgoingRequests::default(),
            table: ResourceTable::new(),
        },
    );
    // jetwasm's engine interrupts at epoch deadlines; this server sets none.
    store.set_epoch_deadline(u64::MAX / 2);
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let incoming = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, request)?;
    let out = store.data_mut().http().new_response_outparam(sender)?;
    let guest = tokio::spawn(async move {
        let proxy = pre.instantiate_async(&mut store).await?;
        proxy
            .wasi_http_incoming_handler()
            .call_handle(&mut store, incoming, out)
            .await
    });
    match receiver.await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(code)) => anyhow::bail!("the component answered with an error: {code:?}"),
        Err(_) => anyhow::bail!("no response: {:?}", guest.await),
    }
}

/// Posts valid orders to `addr` from `connections` keep-alive connections for `period`.
async fn load(addr: SocketAddr, connections: usize, period: Duration) -> anyhow::Result<Run> {
    let until = Instant::now() + period;
    let workers: Vec<_> = (0..connections)
        .map(|c| tokio::spawn(post_until(addr, c, until)))
        .collect();
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for worker in workers {
        let (mut times, failed) = worker.await??;
        latencies.append(&mut times);
        errors += failed;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    anyhow::ensure!(!latencies.is_empty(), "no request answered");
    Ok(Run {
        rate: latencies.len() as f64 / elapsed,
        p50: at(0.5),
        p99: at(0.99),
        errors,
    })
}

/// One connection's requests until `until`: each one's latency, and how many were not 202.
async fn post_until(
    addr: SocketAddr,
    connection: usize,
    until: Instant,
) -> anyhow::Result<(Vec<Duration>, usize)> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let (mut times, mut failed) = (Vec::new(), 0);
    let mut n = 0;
    while Instant::now() < until {
        let body = format!(
            r#"{{"id":"h-{connection}-{n}","customer":"c-1","items":[{{"sku":"A1","qty":1,"price":9.5}}],"total":9.5}}"#
        );
        n += 1;
        let request = hyper::Request::post("/orders")
            .header("host", "bench")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let sent = Instant::now();
        let response = sender.send_request(request).await?;
        let status = response.status();
        response.into_body().collect().await?;
        times.push(sent.elapsed());
        failed += usize::from(status != hyper::StatusCode::ACCEPTED);
    }
    Ok((times, failed))
}
