//! Starting and stopping components: a handler bound to its consumer (lanes and sweeper), a
//! timer publisher ticking, an HTTP publisher's route served. Which version of what runs is
//! the `deployments` module's business; this one only carries it out.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::binding::Binding;
use crate::components::Runner;
use crate::http_publisher::HttpPublisher;
use crate::{consumer, sweeper, timer_publisher};

/// HTTP publishers by path, then method (looked up per request without allocating).
type Routes = HashMap<String, HashMap<String, Arc<HttpPublisher>>>;

/// A component at work.
pub enum Running {
    /// A handler bound to its consumer.
    Handler {
        /// What its lanes, sweeper and messages share.
        binding: Arc<Binding>,
        /// Stops its lanes and sweeper.
        stop: CancellationToken,
    },
    /// A timer publisher ticking.
    Timer {
        /// Stops its ticks (a running one finishes).
        stop: CancellationToken,
    },
    /// An HTTP publisher's route served.
    Http {
        /// Its method and path.
        route: (String, String),
    },
}

/// Starts and stops components, each on its tenant's connection, under the host's shutdown
/// token, their tasks on its tracker; serves the HTTP routes.
pub struct Launcher {
    shutdown: CancellationToken,
    calls: TaskTracker,
    routes: ArcSwap<Routes>,
}

impl Launcher {
    /// Nothing started yet.
    pub fn new(shutdown: &CancellationToken, calls: &TaskTracker) -> Launcher {
        Launcher {
            shutdown: shutdown.clone(),
            calls: calls.clone(),
            routes: ArcSwap::default(),
        }
    }

    /// Starts a loaded component: a handler bound, a timer ticking, a route served.
    pub async fn start(&self, runner: Runner) -> anyhow::Result<Running> {
        Ok(match runner {
            Runner::Handler(binding) => {
                let stop = self.shutdown.child_token();
                let js = binding.tenant.js().clone();
                sweeper::start(binding.clone(), &js, &stop, &self.calls)
                    .await
                    .map_err(|e| {
                        e.context(format!(
                            "handler {}: listening for max-deliveries advisories",
                            binding.name
                        ))
                    })?;
                consumer::start(binding.clone(), &js, &stop, &self.calls);
                Running::Handler { binding, stop }
            }
            Runner::Timer(publisher) => {
                let stop = self.shutdown.child_token();
                self.calls
                    .spawn(timer_publisher::run(publisher, stop.clone()));
                Running::Timer { stop }
            }
            Runner::Http(publisher) => {
                let route = route_key(&publisher);
                self.routes.rcu(|routes| {
                    let mut routes = Routes::clone(routes);
                    let (method, path) = route.clone();
                    routes
                        .entry(path)
                        .or_default()
                        .insert(method, publisher.clone());
                    routes
                });
                Running::Http { route }
            }
        })
    }

    /// Stops a running component: a handler's lanes finish and unbind, a timer stops after
    /// its running tick, a route is no longer served (requests running finish).
    pub fn stop(&self, name: &str, running: Running) {
        match running {
            Running::Handler { binding, stop, .. } => {
                let in_flight = binding.metrics.in_flight.get();
                tracing::info!(
                    handler = name,
                    in_flight,
                    "unbinding: no new pulls; running calls finish"
                );
                stop.cancel();
            }
            Running::Timer { stop } => stop.cancel(),
            Running::Http { route, .. } => {
                self.routes.rcu(|routes| {
                    let mut routes = Routes::clone(routes);
                    let (method, path) = &route;
                    if let Some(methods) = routes.get_mut(path) {
                        methods.remove(method);
                        if methods.is_empty() {
                            routes.remove(path);
                        }
                    }
                    routes
                });
            }
        }
    }

    /// The HTTP publisher serving `method` `path`, if any: its exact route, else the
    /// wildcard route (`/api/{*rest}`) with the longest prefix of `path`.
    pub fn route(&self, method: &str, path: &str) -> Option<Arc<HttpPublisher>> {
        let routes = self.routes.load();
        if let Some(exact) = routes.get(path).and_then(|methods| methods.get(method)) {
            return Some(exact.clone());
        }
        (routes.iter())
            .filter(|(route, _)| under(path, route))
            .filter_map(|(route, methods)| Some((route.len(), methods.get(method)?)))
            .max_by_key(|(len, _)| *len)
            .map(|(_, publisher)| publisher.clone())
    }

    /// Whether some HTTP publisher serves `path` (with any method).
    pub fn serves_path(&self, path: &str) -> bool {
        let routes = self.routes.load();
        routes.contains_key(path) || routes.keys().any(|route| under(path, route))
    }

    /// Whether a publisher serves `route` now.
    pub fn serves(&self, route: &(String, String)) -> bool {
        let (method, path) = route;
        (self.routes.load().get(path)).is_some_and(|methods| methods.contains_key(method))
    }
}

/// The method and path an HTTP publisher serves.
pub fn route_key(publisher: &HttpPublisher) -> (String, String) {
    (publisher.route.method.clone(), publisher.route.path.clone())
}

/// Whether `path` is under the wildcard route `route` (`/api/{*rest}` serves `/api/` and every
/// path below it); false for a route without a wildcard tail.
fn under(path: &str, route: &str) -> bool {
    match route.rsplit_once("/{*") {
        Some((prefix, _)) => path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/')),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_route_serves_every_path_under_its_prefix() {
        assert!(under("/api/orders", "/api/{*rest}"));
        assert!(under("/api/", "/api/{*rest}"));
        assert!(under("/api/a/b/c", "/api/{*rest}"));
        assert!(!under("/api", "/api/{*rest}"));
        assert!(!under("/apix/y", "/api/{*rest}"));
        assert!(!under("/api/orders", "/api/orders"));
        assert!(under("/anything", "/{*all}"));
    }
}
