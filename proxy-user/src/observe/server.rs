//! The HTTP endpoints: `/metrics` (Prometheus text format) and `/healthz`, `/livez`
//! (kube-proxy's JSON), on one listener or two.
//!
//! HTTP/1.1 only: Prometheus and kubelet probes speak it, and it keeps the server small.

use std::{convert::Infallible, future::Future, io, net::SocketAddr, time::Duration};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio::{net::TcpListener, sync::watch};
use tracing::{debug, info, warn};

use super::service_health::HealthChecksRx;
use super::{Observer, metrics::TEXT_CONTENT_TYPE};

/// A client that has not sent its request headers by then is dropped, so idle or slow
/// connections cannot pile up on a port that is often open to the whole node network.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests may take to finish once shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A listening address could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (set by {setting}): {source}")]
pub struct BindError {
    /// The configuration field(s) the address came from.
    pub setting: &'static str,
    pub addr: SocketAddr,
    #[source]
    pub source: io::Error,
}

/// Which endpoints one listener serves.
#[derive(Clone)]
pub struct Routes {
    observer: Observer,
    metrics: bool,
    health: bool,
    /// A Service's healthCheckNodePort: every path answers for that Service.
    service: Option<(u16, HealthChecksRx)>,
}

impl Routes {
    /// `/metrics` (for `metricsBindAddress`).
    pub fn metrics(observer: &Observer) -> Self {
        Self {
            observer: observer.clone(),
            metrics: true,
            health: false,
            service: None,
        }
    }

    /// `/healthz` and `/livez` (for `healthzBindAddress`).
    pub fn health(observer: &Observer) -> Self {
        Self {
            observer: observer.clone(),
            metrics: false,
            health: true,
            service: None,
        }
    }

    /// All three, for when both settings name the same address.
    pub fn all(observer: &Observer) -> Self {
        Self {
            observer: observer.clone(),
            metrics: true,
            health: true,
            service: None,
        }
    }

    /// The healthCheckNodePort `port` (kube-proxy's ServiceHealthServer), answering from the
    /// checks published on `checks`.
    pub fn service_health(observer: &Observer, port: u16, checks: HealthChecksRx) -> Self {
        Self {
            observer: observer.clone(),
            metrics: false,
            health: false,
            service: Some((port, checks)),
        }
    }

    fn setting(&self) -> &'static str {
        if self.service.is_some() {
            return "a Service's healthCheckNodePort";
        }
        match (self.metrics, self.health) {
            (true, true) => "metricsBindAddress and healthzBindAddress",
            (true, false) => "metricsBindAddress",
            _ => "healthzBindAddress",
        }
    }

    fn respond(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        if let Some((port, checks)) = &self.service {
            return service_health_response(port, checks, &self.observer);
        }
        let known = match path {
            "/metrics" => self.metrics,
            "/healthz" | "/livez" => self.health,
            _ => false,
        };
        if !known {
            return plain(StatusCode::NOT_FOUND, "404 page not found\n");
        }
        // hyper leaves the body out of HEAD responses itself.
        if method != Method::GET && method != Method::HEAD {
            let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        match path {
            "/metrics" => match self.observer.metrics.try_render() {
                Ok(text) => with_type(StatusCode::OK, TEXT_CONTENT_TYPE, text),
                Err(e) => plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("encoding metrics failed: {e}\n"),
                ),
            },
            _ => {
                let healthz = path == "/healthz";
                let probe = if healthz {
                    self.observer.health.healthz()
                } else {
                    self.observer.health.livez()
                };
                self.observer.metrics.record_probe(healthz, probe.status());
                let status = if probe.healthy {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                let mut response = with_type(status, "application/json", probe.body);
                response.headers_mut().insert(
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                );
                response
            }
        }
    }
}

/// kube-proxy's answer on a healthCheckNodePort: 200 while this node has local endpoints for
/// the Service and the proxy is healthy, 503 otherwise, so external load balancers send
/// externalTrafficPolicy: Local traffic only to nodes that can serve it.
fn service_health_response(
    port: &u16,
    checks: &HealthChecksRx,
    observer: &Observer,
) -> Response<Full<Bytes>> {
    let checks = checks.borrow();
    let Some(check) = checks.get(port) else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "no Service uses this port\n",
        );
    };
    let proxy_healthy = observer.health.healthz().healthy;
    let body = serde_json::json!({
        "service": {"namespace": check.namespace, "name": check.name},
        "localEndpoints": check.local_endpoints,
        "serviceProxyHealthy": proxy_healthy,
    })
    .to_string();
    let status = if check.local_endpoints > 0 && proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    with_type(status, "application/json", body)
}

fn with_type(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn plain(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    with_type(status, "text/plain; charset=utf-8", body.to_owned())
}

/// One bound listener and what it serves. Binding is separate from serving so that a bad
/// address fails startup with a clear error instead of inside a background task.
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    routes: Routes,
}

impl Server {
    pub async fn bind(addr: SocketAddr, routes: Routes) -> Result<Self, BindError> {
        let err = |source| BindError {
            setting: routes.setting(),
            addr,
            source,
        };
        let listener = TcpListener::bind(addr).await.map_err(err)?;
        let local_addr = listener.local_addr().map_err(err)?;
        Ok(Self {
            listener,
            local_addr,
            routes,
        })
    }

    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` resolves, then stops accepting and gives open requests
    /// [`SHUTDOWN_GRACE`] to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Self {
            listener,
            local_addr,
            routes,
        } = self;
        info!(address = %local_addr, serves = routes.setting(), "HTTP endpoints listening");
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let stream = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _peer)) => stream,
                    Err(e) => {
                        warn!(address = %local_addr, error = %e, "accepting a connection failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
            };
            let routes = routes.clone();
            let service = service_fn(move |request: Request<Incoming>| {
                let response = routes.respond(request.method(), request.uri().path());
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    debug!(error = %e, "HTTP connection ended with an error");
                }
            });
        }
        drop(listener);
        if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
            .await
            .is_err()
        {
            debug!(address = %local_addr, "HTTP connections still open at shutdown; dropped");
        }
    }
}

/// Binds `addr` and serves `routes` on it until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    routes: Routes,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BindError> {
    Server::bind(addr, routes).await?.run(shutdown).await;
    Ok(())
}

/// The listeners for kube-proxy's two settings: one when `metricsBindAddress` and
/// `healthzBindAddress` are equal, two otherwise.
pub struct Servers {
    metrics: Server,
    health: Option<Server>,
}

impl Servers {
    pub async fn bind(
        metrics_addr: SocketAddr,
        healthz_addr: SocketAddr,
        observer: &Observer,
    ) -> Result<Self, BindError> {
        if metrics_addr == healthz_addr {
            return Ok(Self {
                metrics: Server::bind(metrics_addr, Routes::all(observer)).await?,
                health: None,
            });
        }
        Ok(Self {
            metrics: Server::bind(metrics_addr, Routes::metrics(observer)).await?,
            health: Some(Server::bind(healthz_addr, Routes::health(observer)).await?),
        })
    }

    /// Where `/metrics` is served.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics.local_addr()
    }

    /// Where `/healthz` and `/livez` are served.
    pub fn healthz_addr(&self) -> SocketAddr {
        self.health
            .as_ref()
            .map_or(self.metrics.local_addr(), Server::local_addr)
    }

    /// Serves every listener until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        // One shutdown future, several listeners: fan it out through a watch channel. A
        // dropped sender also reads as "stop", so no listener can outlive this function.
        let (stop_tx, stop_rx) = watch::channel(());
        let stopped = |mut rx: watch::Receiver<()>| async move {
            let _ = rx.changed().await;
        };
        let metrics = self.metrics.run(stopped(stop_rx.clone()));
        let health = async {
            if let Some(server) = self.health {
                server.run(stopped(stop_rx)).await;
            }
        };
        let all = async { tokio::join!(metrics, health) };
        tokio::pin!(all);
        tokio::select! {
            () = shutdown => {
                drop(stop_tx);
                all.await;
            }
            _ = &mut all => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::observe::ManualClock;

    fn observer() -> Observer {
        let clock = Arc::new(ManualClock::new(UNIX_EPOCH));
        Observer::with_clock(Duration::from_secs(30), clock)
    }

    #[test]
    fn routes_serve_only_their_paths() {
        let obs = observer();
        let metrics = Routes::metrics(&obs);
        let health = Routes::health(&obs);
        let all = Routes::all(&obs);
        let get = &Method::GET;
        assert_eq!(metrics.respond(get, "/metrics").status(), StatusCode::OK);
        assert_eq!(
            metrics.respond(get, "/healthz").status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            health.respond(get, "/metrics").status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(health.respond(get, "/livez").status(), StatusCode::OK);
        assert_eq!(
            all.respond(get, "/healthz").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            all.respond(get, "/metrics/").status(),
            StatusCode::NOT_FOUND
        );
        let post = all.respond(&Method::POST, "/metrics");
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[header::ALLOW], "GET, HEAD");
    }

    #[test]
    fn probes_are_counted_by_status() {
        let obs = observer();
        let all = Routes::all(&obs);
        all.respond(&Method::GET, "/healthz");
        all.respond(&Method::GET, "/livez");
        let text = obs.metrics.render();
        assert!(text.contains("kubeproxy_proxy_healthz_total{code=\"503\"} 1\n"));
        assert!(text.contains("kubeproxy_proxy_livez_total{code=\"200\"} 1\n"));
    }

    #[test]
    fn settings_are_named_for_errors() {
        let obs = observer();
        assert_eq!(Routes::metrics(&obs).setting(), "metricsBindAddress");
        assert_eq!(Routes::health(&obs).setting(), "healthzBindAddress");
        assert_eq!(
            Routes::all(&obs).setting(),
            "metricsBindAddress and healthzBindAddress"
        );
    }
}
