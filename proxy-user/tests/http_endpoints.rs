//! The metrics and health endpoints over real sockets: status codes, bodies and headers as a
//! scraper or a kubelet probe sees them. Time is driven by a manual clock, never by sleeping.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::Arc,
    time::{Duration, UNIX_EPOCH},
};

use sluice::observe::{ManualClock, Observer, Servers};
use tokio::{runtime::Runtime, sync::oneshot, task::JoinHandle};

const SYNC_PERIOD: Duration = Duration::from_secs(30);
/// kube-proxy's healthTimeout for SYNC_PERIOD.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(60);
const IO_TIMEOUT: Duration = Duration::from_secs(5);

struct Reply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

/// A deliberately minimal HTTP/1.1 client: one request per connection, read to EOF.
fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("header terminator");
    let mut lines = head.lines();
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path)
}

/// The servers running on their own runtime while the test body talks to them with blocking
/// sockets.
struct Running {
    runtime: Runtime,
    clock: Arc<ManualClock>,
    observer: Observer,
    metrics_addr: SocketAddr,
    healthz_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Running {
    fn start(metrics: &str, healthz: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let clock = Arc::new(ManualClock::new(
            UNIX_EPOCH + Duration::from_secs(1_714_557_600),
        ));
        let observer = Observer::with_clock(SYNC_PERIOD, clock.clone());
        let servers = runtime
            .block_on(Servers::bind(
                metrics.parse().unwrap(),
                healthz.parse().unwrap(),
                &observer,
            ))
            .expect("binding");
        let metrics_addr = loopback(servers.metrics_addr());
        let healthz_addr = loopback(servers.healthz_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = runtime.spawn(servers.run(async {
            let _ = stopped.await;
        }));
        Self {
            runtime,
            clock,
            observer,
            metrics_addr,
            healthz_addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Resolves the cancellation future and waits for the serving task to end.
    fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            self.runtime
                .block_on(async { tokio::time::timeout(IO_TIMEOUT, task).await })
                .expect("the server task ends after cancellation")
                .expect("the server task does not panic");
        }
    }
}

/// Where to connect for a listener bound to an unspecified address.
fn loopback(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip([127, 0, 0, 1].into());
    }
    addr
}

#[test]
fn shared_address_serves_metrics_and_health() {
    let mut running = Running::start("127.0.0.1:0", "127.0.0.1:0");
    assert_eq!(running.metrics_addr, running.healthz_addr);
    let addr = running.metrics_addr;

    running.observer.metrics.set_dataplane_mode("ebpf");
    running.observer.metrics.record_skipped("invalid_port");
    let metrics = get(addr, "/metrics");
    assert_eq!(metrics.status, 200);
    assert_eq!(metrics.headers["content-type"], "text/plain; version=0.0.4");
    for name in [
        "kubeproxy_sync_proxy_rules_duration_seconds",
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
        "sluice_skipped_objects_total{reason=\"invalid_port\"} 1",
        "sluice_dataplane_info{mode=\"ebpf\"} 1",
        "sluice_build_info",
    ] {
        assert!(
            metrics.body.contains(name),
            "{name} missing:\n{}",
            metrics.body
        );
    }

    // Never synced: not healthy, but alive.
    let healthz = get(addr, "/healthz");
    assert_eq!(healthz.status, 503);
    assert_eq!(healthz.headers["content-type"], "application/json");
    assert_eq!(healthz.headers["x-content-type-options"], "nosniff");
    let body = healthz.json();
    assert_eq!(body["lastUpdated"], "0001-01-01T00:00:00Z");
    assert_eq!(body["currentTime"], "2024-05-01T10:00:00Z");
    assert_eq!(body["nodeEligible"], true);
    assert_eq!(get(addr, "/livez").status, 200);

    // First sync done.
    running.observer.queued();
    running.clock.advance(Duration::from_secs(1));
    running.observer.synced(false, Duration::from_millis(20));
    let healthz = get(addr, "/healthz");
    assert_eq!(healthz.status, 200, "{}", healthz.body);
    assert_eq!(healthz.json()["healthy"], true);

    // A change queued but not synced within the timeout.
    running.observer.queued();
    running
        .clock
        .advance(HEALTH_TIMEOUT - Duration::from_secs(1));
    assert_eq!(get(addr, "/healthz").status, 200, "not late yet");
    running.clock.advance(Duration::from_secs(1));
    let healthz = get(addr, "/healthz");
    assert_eq!(healthz.status, 503);
    assert_eq!(healthz.json()["lastUpdated"], "2024-05-01T10:00:01Z");
    let livez = get(addr, "/livez");
    assert_eq!(livez.status, 503);
    assert!(livez.json().get("nodeEligible").is_none());

    // Catching up heals both.
    running.observer.synced(false, Duration::from_millis(20));
    assert_eq!(get(addr, "/healthz").status, 200);
    assert_eq!(get(addr, "/livez").status, 200);

    // A node on its way out fails /healthz only.
    running.observer.health.set_node_eligible(false);
    let healthz = get(addr, "/healthz");
    assert_eq!(healthz.status, 503);
    assert_eq!(healthz.json()["nodeEligible"], false);
    assert_eq!(get(addr, "/livez").status, 200);

    let missing = get(addr, "/nope");
    assert_eq!(missing.status, 404);
    assert_eq!(request(addr, "POST", "/metrics").status, 405);
    let head = request(addr, "HEAD", "/metrics");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());

    let probes = get(addr, "/metrics").body;
    assert!(
        probes.contains("kubeproxy_proxy_healthz_total{code=\"503\"} 3"),
        "{probes}"
    );
    assert!(
        probes.contains("kubeproxy_proxy_livez_total{code=\"503\"} 1"),
        "{probes}"
    );

    running.shut_down();
    assert!(
        TcpStream::connect_timeout(&addr, IO_TIMEOUT).is_err(),
        "the listener is closed after shutdown"
    );
}

#[test]
fn separate_addresses_split_the_routes() {
    // kube-proxy's defaults in shape: metrics on loopback, health on every address.
    let mut running = Running::start("127.0.0.1:0", "0.0.0.0:0");
    let (metrics, health) = (running.metrics_addr, running.healthz_addr);
    assert_ne!(metrics, health);

    assert_eq!(get(metrics, "/metrics").status, 200);
    assert_eq!(get(metrics, "/healthz").status, 404);
    assert_eq!(get(metrics, "/livez").status, 404);
    assert_eq!(get(health, "/metrics").status, 404);
    assert_eq!(get(health, "/healthz").status, 503);
    assert_eq!(get(health, "/livez").status, 200);

    running.observer.synced(true, Duration::from_millis(5));
    assert_eq!(get(health, "/healthz").status, 200);
    assert!(
        get(metrics, "/metrics")
            .body
            .contains("kubeproxy_sync_full_proxy_rules_duration_seconds_count 1")
    );

    running.shut_down();
    assert!(TcpStream::connect_timeout(&metrics, IO_TIMEOUT).is_err());
    assert!(TcpStream::connect_timeout(&health, IO_TIMEOUT).is_err());
}

#[test]
fn bind_errors_name_the_address_and_the_setting() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let free: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let observer = Observer::new(SYNC_PERIOD);

    for (metrics, healthz, setting) in [
        (taken_addr, free, "metricsBindAddress"),
        (free, taken_addr, "healthzBindAddress"),
        (
            taken_addr,
            taken_addr,
            "metricsBindAddress and healthzBindAddress",
        ),
    ] {
        let err = match runtime.block_on(Servers::bind(metrics, healthz, &observer)) {
            Ok(_) => panic!("binding {taken_addr} twice succeeded"),
            Err(e) => e,
        };
        assert_eq!(err.setting, setting);
        assert_eq!(err.addr, taken_addr);
        let message = err.to_string();
        assert!(message.contains(&taken_addr.to_string()), "{message}");
        assert!(message.contains(setting), "{message}");
    }
}

#[test]
fn an_open_idle_connection_does_not_hold_up_shutdown() {
    let mut running = Running::start("127.0.0.1:0", "127.0.0.1:0");
    // Keep-alive connection that has finished one request and sits idle.
    let mut idle = TcpStream::connect_timeout(&running.metrics_addr, IO_TIMEOUT).unwrap();
    idle.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    write!(idle, "GET /livez HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    running.shut_down();
}
