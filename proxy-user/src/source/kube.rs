//! The cluster source: list/watch Services, EndpointSlices and this node's Node from the API
//! server and publish complete snapshots of them, like the manifests source does.
//!
//! The first snapshot is published only once all three initial lists have completed, because
//! the controller treats the first value as the whole truth and would otherwise delete the
//! frontends of every object that had not arrived yet. While the API server is unreachable
//! nothing is published, so the datapath keeps serving its last state.

use std::{
    fmt::Debug,
    hash::Hash,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        WatchStreamExt as _,
        reflector::{Store, store::Writer},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::{
    sync::{Notify, watch},
    task::JoinSet,
    time::Instant,
};
use tracing::{debug, info, warn};

use super::Inputs;
use crate::model::{slim_node, slim_service, slim_slice};

/// kube-proxy's Service selector: Services handled by another proxy
/// (`service.kubernetes.io/service-proxy-name`) are not ours, and headless ones have no VIP.
pub const SERVICE_LABEL_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// Slices that belong to a Service (the label is how a slice names it) of a kind we serve.
/// kube-proxy applies the same `!service-proxy-name,!headless` selector to slices as to
/// Services (the EndpointSlice controller copies both labels from the Service), so slices of
/// Services that another proxy owns are filtered here too instead of being shipped and ignored.
pub const SLICE_LABEL_SELECTOR: &str = "kubernetes.io/service-name,!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name";

/// The name of the node Sluice runs on, as kube-proxy derives it: `hostnameOverride`, else
/// `NODE_NAME` (set from the downward API in the DaemonSet), else the kernel's hostname;
/// trimmed and lowercased, because Node names are.
pub fn node_name(hostname_override: Option<&str>) -> anyhow::Result<String> {
    resolve_node_name(hostname_override, std::env::var("NODE_NAME").ok(), || {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
    })
}

fn resolve_node_name(
    hostname_override: Option<&str>,
    env: Option<String>,
    hostname: impl FnOnce() -> std::io::Result<String>,
) -> anyhow::Result<String> {
    let chosen = match (hostname_override, env) {
        (Some(name), _) if !name.trim().is_empty() => name.to_owned(),
        (_, Some(name)) if !name.trim().is_empty() => name,
        _ => hostname().context("cannot read the hostname to use as the node name")?,
    };
    let name = chosen.trim().to_lowercase();
    anyhow::ensure!(
        !name.is_empty(),
        "the node name is empty: set hostnameOverride or NODE_NAME"
    );
    Ok(name)
}

/// A client for `kubeconfig`, or for the cluster Sluice runs in (service account token and
/// `KUBERNETES_SERVICE_HOST`) when there is none.
///
/// kube-proxy's `clientConnection.qps`/`burst` are not applied: kube has no client-side rate
/// limiter, and this source makes one list and one long-lived watch per resource, retried with
/// exponential backoff, which is far below any sensible limit. `contentType` is not applied
/// either: kube speaks JSON only.
pub async fn client_from(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("cannot use kubeconfig {}", path.display()))?
        }
        None => kube::Config::incluster().context(
            "no kubeconfig given and not running in a cluster (in-cluster configuration)",
        )?,
    };
    Client::try_from(config).context("cannot build the Kubernetes client")
}

/// Counters of one watched resource.
#[derive(Debug, Default)]
pub struct ResourceCounters {
    events: AtomicU64,
    relists: AtomicU64,
    errors: AtomicU64,
}

impl ResourceCounters {
    /// Objects received: listed, added, modified or deleted.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Full lists after the initial one (410 Gone, or a watch that could not be resumed).
    pub fn relists(&self) -> u64 {
        self.relists.load(Ordering::Relaxed)
    }

    /// Failed list or watch calls, each followed by a backoff.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

/// What the source has done so far, for metrics.
#[derive(Debug, Default)]
pub struct KubeCounters {
    pub services: ResourceCounters,
    pub slices: ResourceCounters,
    pub nodes: ResourceCounters,
    snapshots: AtomicU64,
}

impl KubeCounters {
    /// Snapshots sent on the channel.
    pub fn snapshots(&self) -> u64 {
        self.snapshots.load(Ordering::Relaxed)
    }
}

/// Watches the API server and publishes [`Inputs`] snapshots.
pub struct KubeSource {
    client: Client,
    node_name: String,
    counters: Arc<KubeCounters>,
    min_publish_interval: Duration,
}

/// Runs [`KubeSource`] with its defaults until every receiver of `tx` is gone.
pub async fn run(
    client: Client,
    node_name: String,
    tx: watch::Sender<Arc<Inputs>>,
) -> anyhow::Result<()> {
    KubeSource::new(client, node_name).run(tx).await
}

impl KubeSource {
    pub fn new(client: Client, node_name: impl Into<String>) -> Self {
        Self {
            client,
            node_name: node_name.into(),
            counters: Arc::default(),
            // The controller coalesces on its own (minSyncPeriod); this only keeps a burst of
            // watch events from building one snapshot per event.
            min_publish_interval: Duration::from_millis(10),
        }
    }

    pub fn counters(&self) -> Arc<KubeCounters> {
        self.counters.clone()
    }

    /// Watches until every receiver of `tx` is dropped (then `Ok`). Connection problems are
    /// retried forever with backoff; an error means a watcher task died.
    pub async fn run(self, tx: watch::Sender<Arc<Inputs>>) -> anyhow::Result<()> {
        let changed = Arc::new(Notify::new());
        let outage = Arc::new(Outage::default());
        let mut tasks = JoinSet::new();

        let services = spawn_reflector(
            &mut tasks,
            Api::<Service>::all(self.client.clone()),
            watcher::Config::default().labels(SERVICE_LABEL_SELECTOR),
            Resource::Services,
            slim_service,
            Shared::new(&self.counters, &changed, &outage),
        );
        let slices = spawn_reflector(
            &mut tasks,
            Api::<EndpointSlice>::all(self.client.clone()),
            watcher::Config::default().labels(SLICE_LABEL_SELECTOR),
            Resource::Slices,
            slim_slice,
            Shared::new(&self.counters, &changed, &outage),
        );
        let nodes = spawn_reflector(
            &mut tasks,
            Api::<Node>::all(self.client.clone()),
            watcher::Config::default().fields(&format!("metadata.name={}", self.node_name)),
            Resource::Nodes,
            slim_node,
            Shared::new(&self.counters, &changed, &outage),
        );

        let all_ready = async {
            tokio::try_join!(
                services.wait_until_ready(),
                slices.wait_until_ready(),
                nodes.wait_until_ready()
            )
        };
        tokio::select! {
            ready = all_ready => { ready.context("a watcher stopped before its first list")?; }
            ended = tasks.join_next() => return Err(task_ended(ended)),
            () = tx.closed() => return Ok(()),
        }

        let mut last = Arc::new(snapshot(&services, &slices, &nodes, &self.node_name));
        info!(
            node = %self.node_name,
            services = last.services.len(),
            endpoint_slices = last.slices.len(),
            node_found = last.node.is_some(),
            "initial lists from the API server complete"
        );
        // Counted before sending, so a receiver that sees a snapshot also sees it counted.
        self.counters.snapshots.fetch_add(1, Ordering::Relaxed);
        if tx.send(last.clone()).is_err() {
            return Ok(());
        }
        let mut published_at = Instant::now();

        loop {
            tokio::select! {
                () = changed.notified() => {}
                ended = tasks.join_next() => return Err(task_ended(ended)),
                () = tx.closed() => return Ok(()),
            }
            tokio::time::sleep_until(published_at + self.min_publish_interval).await;
            let next = snapshot(&services, &slices, &nodes, &self.node_name);
            // A relist usually returns what we already had; resending it would only make the
            // controller recompute the same state.
            if next.services == last.services
                && next.slices == last.slices
                && next.node == last.node
            {
                continue;
            }
            last = Arc::new(next);
            self.counters.snapshots.fetch_add(1, Ordering::Relaxed);
            if tx.send(last.clone()).is_err() {
                return Ok(());
            }
            published_at = Instant::now();
        }
    }
}

fn task_ended(ended: Option<Result<(), tokio::task::JoinError>>) -> anyhow::Error {
    match ended {
        Some(Err(e)) => anyhow::anyhow!("a watcher task failed: {e}"),
        _ => anyhow::anyhow!("a watcher task ended"),
    }
}

/// Sorted so that equal contents compare equal and consumers see a stable order.
fn snapshot(
    services: &Store<Service>,
    slices: &Store<EndpointSlice>,
    nodes: &Store<Node>,
    node_name: &str,
) -> Inputs {
    fn sorted<K: kube::Resource + Clone>(store: Vec<Arc<K>>) -> Vec<K> {
        let mut objects: Vec<K> = store.iter().map(|o| K::clone(o)).collect();
        objects.sort_by(|a, b| {
            (a.meta().namespace.as_deref(), a.meta().name.as_deref())
                .cmp(&(b.meta().namespace.as_deref(), b.meta().name.as_deref()))
        });
        objects
    }
    Inputs {
        services: sorted(services.state()),
        slices: sorted(slices.state()),
        // The field selector already narrows the list to this node; the check keeps a
        // misbehaving server from handing us another node's zone.
        node: nodes
            .find(|n| n.metadata.name.as_deref() == Some(node_name))
            .map(|n| Node::clone(&n)),
    }
}

#[derive(Clone, Copy, Debug)]
enum Resource {
    Services,
    Slices,
    Nodes,
}

impl Resource {
    fn name(self) -> &'static str {
        match self {
            Resource::Services => "services",
            Resource::Slices => "endpointslices",
            Resource::Nodes => "nodes",
        }
    }

    fn counters(self, counters: &KubeCounters) -> &ResourceCounters {
        match self {
            Resource::Services => &counters.services,
            Resource::Slices => &counters.slices,
            Resource::Nodes => &counters.nodes,
        }
    }
}

struct Shared {
    counters: Arc<KubeCounters>,
    changed: Arc<Notify>,
    outage: Arc<Outage>,
}

impl Shared {
    fn new(counters: &Arc<KubeCounters>, changed: &Arc<Notify>, outage: &Arc<Outage>) -> Self {
        Self {
            counters: counters.clone(),
            changed: changed.clone(),
            outage: outage.clone(),
        }
    }
}

/// Starts a watcher feeding a reflector store and returns the store's reader.
///
/// The store's writer is driven by hand rather than through `reflector()` because it must
/// outlive the watcher: kube-runtime relists on a 410 ERROR event but keeps retrying the same
/// resourceVersion forever when the server answers the watch request itself with HTTP 410, so
/// in that case the watcher is replaced by a fresh one (which relists), feeding the same store.
/// A relist fills a buffer that replaces the store's contents only when complete, so a
/// snapshot never sees a half-listed resource.
fn spawn_reflector<K>(
    tasks: &mut JoinSet<()>,
    api: Api<K>,
    config: watcher::Config,
    resource: Resource,
    slim: fn(&mut K),
    shared: Shared,
) -> Store<K>
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let mut writer = Writer::<K>::default();
    let store = writer.as_reader();
    tasks.spawn(async move {
        let counters = resource.counters(&shared.counters);
        let mut lists = 0u64;
        // Paces replacements of the watcher after HTTP 410, like kube-runtime paces its own
        // retries; it resets itself after two quiet minutes.
        let mut gone_backoff = watcher::DefaultBackoff::default();
        loop {
            let mut events = std::pin::pin!(
                watcher(api.clone(), config.clone())
                    .default_backoff()
                    .map(|event| event.map(|e| e.modify(slim)))
            );
            while let Some(event) = events.next().await {
                let event = match event {
                    Ok(event) => event,
                    Err(error) => {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                        shared.outage.failed(resource, &error, Instant::now());
                        if is_http_gone(&error) {
                            break;
                        }
                        continue;
                    }
                };
                shared.outage.recovered();
                match &event {
                    watcher::Event::Init => {
                        lists += 1;
                        if lists > 1 {
                            counters.relists.fetch_add(1, Ordering::Relaxed);
                            info!(resource = resource.name(), "relisting");
                        }
                    }
                    watcher::Event::InitApply(_)
                    | watcher::Event::Apply(_)
                    | watcher::Event::Delete(_) => {
                        counters.events.fetch_add(1, Ordering::Relaxed);
                    }
                    watcher::Event::InitDone => {}
                }
                writer.apply_watcher_event(&event);
                if !matches!(event, watcher::Event::Init | watcher::Event::InitApply(_)) {
                    // notify_one keeps a permit when the publisher is busy, so no change is lost.
                    shared.changed.notify_one();
                }
            }
            let delay = gone_backoff.next().unwrap_or(Duration::from_secs(30));
            debug!(
                resource = resource.name(),
                ?delay,
                "watch expired (HTTP 410): relisting"
            );
            tokio::time::sleep(delay).await;
        }
    });
    store
}

/// The server answered the watch request itself with 410 Gone: the resourceVersion we hold is
/// compacted away, and only a new list can continue.
fn is_http_gone(error: &watcher::Error) -> bool {
    matches!(
        error,
        watcher::Error::WatchStartFailed(kube::Error::Api(response))
            | watcher::Error::WatchFailed(kube::Error::Api(response))
            if response.code == 410
    )
}

/// One warning per outage instead of one per retry (the backoff retries for as long as the
/// API server is away). An outage ends at the first event received, or, since a quiet cluster
/// may send none after the watches resume, once no error has been seen for longer than the
/// longest backoff.
#[derive(Debug, Default)]
struct Outage {
    last_error: Mutex<Option<Instant>>,
}

/// Longer than kube-runtime's longest backoff (30 s, up to doubled by jitter).
const OUTAGE_QUIET: Duration = Duration::from_secs(120);

impl Outage {
    /// Returns whether this error starts a new outage (and was logged at warn).
    fn failed(&self, resource: Resource, error: &watcher::Error, now: Instant) -> bool {
        let mut last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        let new_outage = last.is_none_or(|t| now.saturating_duration_since(t) > OUTAGE_QUIET);
        *last = Some(now);
        if new_outage {
            warn!(
                resource = resource.name(),
                %error,
                "cannot list/watch the API server; keeping the last snapshot and retrying with backoff"
            );
        } else {
            debug!(resource = resource.name(), %error, "list/watch still failing");
        }
        new_outage
    }

    fn recovered(&self) {
        let mut last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        if last.take().is_some() {
            info!("receiving from the API server again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_name_comes_from_the_override_then_node_name_then_the_hostname() {
        let host = || Ok("Host-1\n".to_owned());
        let no_host = || Err(std::io::Error::other("no hostname"));
        assert_eq!(
            resolve_node_name(Some("Worker-A "), Some("env".into()), no_host).unwrap(),
            "worker-a"
        );
        assert_eq!(
            resolve_node_name(None, Some("worker-b".into()), no_host).unwrap(),
            "worker-b"
        );
        assert_eq!(
            resolve_node_name(Some("  "), Some(String::new()), host).unwrap(),
            "host-1"
        );
        assert!(resolve_node_name(None, None, no_host).is_err());
        assert!(resolve_node_name(None, None, || Ok(" \n".into())).is_err());
    }

    #[test]
    fn an_outage_is_reported_once_however_many_retries_fail() {
        let outage = Outage::default();
        let error = || watcher::Error::NoResourceVersion;
        let t0 = Instant::now();
        assert!(outage.failed(Resource::Services, &error(), t0));
        for i in 1..20 {
            let later = t0 + Duration::from_secs(5 * i);
            assert!(!outage.failed(Resource::Nodes, &error(), later));
        }
        // Recovery ends the outage; the next failure is a new one.
        outage.recovered();
        assert!(outage.failed(Resource::Slices, &error(), t0 + Duration::from_secs(200)));
        // So is a failure after a long quiet spell without any event in between.
        assert!(outage.failed(Resource::Slices, &error(), t0 + Duration::from_secs(400)));
    }

    #[test]
    fn only_an_http_410_on_the_watch_call_replaces_the_watcher() {
        let response = |code| kube::core::ErrorResponse {
            status: "Failure".into(),
            message: "too old resource version".into(),
            reason: "Expired".into(),
            code,
        };
        assert!(is_http_gone(&watcher::Error::WatchStartFailed(
            kube::Error::Api(response(410))
        )));
        assert!(is_http_gone(&watcher::Error::WatchFailed(
            kube::Error::Api(response(410))
        )));
        assert!(!is_http_gone(&watcher::Error::WatchStartFailed(
            kube::Error::Api(response(500))
        )));
        // kube-runtime relists on its own after a 410 ERROR event.
        assert!(!is_http_gone(&watcher::Error::WatchError(response(410))));
        assert!(!is_http_gone(&watcher::Error::InitialListFailed(
            kube::Error::Api(response(410))
        )));
    }
}
