//! The cluster source: list/watch Services, EndpointSlices and this node's Node from the API
//! server, convert them to what the model reads, and record every change in the [`Feed`].
//!
//! Nothing is published until all three initial lists have completed, because the controller
//! treats the first publication as the whole truth and would otherwise delete the frontends
//! of every object that had not arrived yet. A relist is diffed against the objects already
//! known, so one that finds nothing new publishes nothing. While the API server is
//! unreachable nothing is published, so the datapath keeps serving its last state.

use std::{
    collections::HashMap,
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
    runtime::{WatchStreamExt as _, watcher},
};
use serde::de::DeserializeOwned;
use tokio::{
    sync::{Notify, watch},
    task::JoinSet,
    time::Instant,
};
use tracing::{debug, info, warn};

use super::{Changes, Feed};
use crate::model::{ServiceInput, ServiceName, SliceInput, slim_node};

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
    publications: AtomicU64,
}

impl KubeCounters {
    /// Bursts of changes published to the feed.
    pub fn publications(&self) -> u64 {
        self.publications.load(Ordering::Relaxed)
    }
}

/// Watches the API server and records every change of its objects in a [`Feed`].
pub struct KubeSource {
    client: Client,
    node_name: String,
    counters: Arc<KubeCounters>,
    min_publish_interval: Duration,
}

/// Runs [`KubeSource`] with its defaults until the feed's consumer is gone.
pub async fn run(client: Client, node_name: String, feed: Arc<Feed>) -> anyhow::Result<()> {
    KubeSource::new(client, node_name).run(feed).await
}

impl KubeSource {
    pub fn new(client: Client, node_name: impl Into<String>) -> Self {
        Self {
            client,
            node_name: node_name.into(),
            counters: Arc::default(),
            // The controller coalesces on its own (minSyncPeriod); this only keeps a burst of
            // watch events from waking it once per event.
            min_publish_interval: Duration::from_millis(10),
        }
    }

    pub fn counters(&self) -> Arc<KubeCounters> {
        self.counters.clone()
    }

    /// Watches until the feed's consumer is gone (then `Ok`). Connection problems are
    /// retried forever with backoff; an error means a watcher task died.
    pub async fn run(self, feed: Arc<Feed>) -> anyhow::Result<()> {
        let changed = Arc::new(Notify::new());
        let outage = Arc::new(Outage::default());
        let mut tasks = JoinSet::new();
        let shared = || Shared::new(&self.counters, &changed, &outage, &feed);

        let services = spawn_watcher(
            &mut tasks,
            Api::<Service>::all(self.client.clone()),
            watcher::Config::default().labels(SERVICE_LABEL_SELECTOR),
            Kind {
                resource: Resource::Services,
                convert: |svc: Service| Some(ServiceInput::from_service(&svc)),
                record: |changes, name, input| match input {
                    Some(input) => changes.upsert_service(input),
                    None => changes.delete_service(name),
                },
            },
            shared(),
        );
        let slices = spawn_watcher(
            &mut tasks,
            Api::<EndpointSlice>::all(self.client.clone()),
            watcher::Config::default().labels(SLICE_LABEL_SELECTOR),
            Kind {
                resource: Resource::Slices,
                convert: |slice: EndpointSlice| Some(SliceInput::from_slice(&slice)),
                record: |changes, name, input| match input {
                    Some(input) => changes.upsert_slice(name, input),
                    None => changes.delete_slice(name),
                },
            },
            shared(),
        );
        let node_name = self.node_name.clone();
        let nodes = spawn_watcher(
            &mut tasks,
            Api::<Node>::all(self.client.clone()),
            watcher::Config::default().fields(&format!("metadata.name={}", self.node_name)),
            Kind {
                resource: Resource::Nodes,
                convert: move |mut node: Node| {
                    // The field selector already narrows the list to this node; the check
                    // keeps a misbehaving server from handing us another node's zone.
                    if node.metadata.name.as_deref() != Some(node_name.as_str()) {
                        return None;
                    }
                    slim_node(&mut node);
                    // Changes with every status update, and nothing here reads it.
                    node.metadata.resource_version = None;
                    Some(node)
                },
                record: |changes, _, node| changes.set_node(node),
            },
            shared(),
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
            () = feed.closed() => return Ok(()),
        }

        // Everything listed so far goes out as one publication; from here on the watchers
        // record their changes themselves.
        {
            let mut services = services.lock();
            let mut slices = slices.lock();
            let mut nodes = nodes.lock();
            info!(
                node = %self.node_name,
                services = services.objects.len(),
                endpoint_slices = slices.objects.len(),
                node_found = !nodes.objects.is_empty(),
                "initial lists from the API server complete"
            );
            feed.record(|changes| {
                services.go_live(changes);
                slices.go_live(changes);
                nodes.go_live(changes);
            });
        }
        // Counted before publishing, so a consumer that sees a publication sees it counted.
        self.counters.publications.fetch_add(1, Ordering::Relaxed);
        feed.publish();
        let mut published_at = Instant::now();

        loop {
            tokio::select! {
                () = changed.notified() => {}
                ended = tasks.join_next() => return Err(task_ended(ended)),
                () = feed.closed() => return Ok(()),
            }
            tokio::time::sleep_until(published_at + self.min_publish_interval).await;
            self.counters.publications.fetch_add(1, Ordering::Relaxed);
            feed.publish();
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

/// How one watched kind is converted and recorded.
struct Kind<V, C> {
    resource: Resource,
    /// To the form the model keeps, under the object's namespace/name; `None` for an object
    /// to ignore.
    convert: C,
    record: fn(&mut Changes, ServiceName, Option<Arc<V>>),
}

struct Shared {
    counters: Arc<KubeCounters>,
    changed: Arc<Notify>,
    outage: Arc<Outage>,
    feed: Arc<Feed>,
}

impl Shared {
    fn new(
        counters: &Arc<KubeCounters>,
        changed: &Arc<Notify>,
        outage: &Arc<Outage>,
        feed: &Arc<Feed>,
    ) -> Self {
        Self {
            counters: counters.clone(),
            changed: changed.clone(),
            outage: outage.clone(),
            feed: feed.clone(),
        }
    }
}
/// One kind's objects as last listed and watched, converted.
struct Objects<V> {
    objects: HashMap<ServiceName, Arc<V>>,
    /// A list in progress. It replaces `objects` once complete and is diffed against them,
    /// so a relist records only what really changed and never a half-listed kind.
    listing: Option<HashMap<ServiceName, Arc<V>>>,
    /// Whether changes go to the feed: only after the first publication, which carries
    /// everything listed until then.
    live: bool,
    record: fn(&mut Changes, ServiceName, Option<Arc<V>>),
}

impl<V: PartialEq> Objects<V> {
    fn go_live(&mut self, changes: &mut Changes) {
        for (name, object) in &self.objects {
            (self.record)(changes, name.clone(), Some(object.clone()));
        }
        self.live = true;
    }

    /// Returns whether a change was recorded in `feed`.
    fn apply(&mut self, name: ServiceName, object: Option<V>, feed: &Feed) -> bool {
        let object = match object {
            Some(new) if self.objects.get(&name).is_some_and(|old| **old == new) => return false,
            Some(new) => {
                let new = Arc::new(new);
                self.objects.insert(name.clone(), new.clone());
                Some(new)
            }
            None if self.objects.remove(&name).is_none() => return false,
            None => None,
        };
        if self.live {
            feed.record(|changes| (self.record)(changes, name, object));
        }
        self.live
    }

    /// Ends a list: returns whether a change was recorded in `feed`.
    fn listed(&mut self, feed: &Feed) -> bool {
        let Some(mut listed) = self.listing.take() else {
            return false;
        };
        let mut changes: Vec<(ServiceName, Option<Arc<V>>)> = Vec::new();
        for (name, object) in &mut listed {
            match self.objects.get(name) {
                // Unchanged objects stay the same allocation the consumer already holds.
                Some(old) if **old == **object => *object = old.clone(),
                _ => changes.push((name.clone(), Some(object.clone()))),
            }
        }
        changes.extend(
            self.objects
                .keys()
                .filter(|name| !listed.contains_key(name))
                .map(|name| (name.clone(), None)),
        );
        self.objects = listed;
        if !self.live || changes.is_empty() {
            return false;
        }
        feed.record(|into| {
            for (name, object) in changes {
                (self.record)(into, name, object);
            }
        });
        true
    }
}

/// The run loop's handle on one watcher task.
struct Watched<V> {
    objects: Arc<Mutex<Objects<V>>>,
    ready: watch::Receiver<bool>,
}

impl<V> Watched<V> {
    async fn wait_until_ready(&self) -> Result<(), watch::error::RecvError> {
        self.ready
            .clone()
            .wait_for(|ready| *ready)
            .await
            .map(|_| ())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Objects<V>> {
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Starts a watcher that keeps one kind's [`Objects`] and records their changes.
///
/// The watcher is restarted by hand rather than left to kube-runtime because kube-runtime
/// relists on a 410 ERROR event but keeps retrying the same resourceVersion forever when the
/// server answers the watch request itself with HTTP 410; in that case the watcher is
/// replaced by a fresh one (which relists), feeding the same objects.
fn spawn_watcher<K, V, C>(
    tasks: &mut JoinSet<()>,
    api: Api<K>,
    config: watcher::Config,
    kind: Kind<V, C>,
    shared: Shared,
) -> Watched<V>
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
    V: PartialEq + Send + Sync + 'static,
    C: Fn(K) -> Option<V> + Send + 'static,
{
    let objects = Arc::new(Mutex::new(Objects {
        objects: HashMap::new(),
        listing: None,
        live: false,
        record: kind.record,
    }));
    let (ready_tx, ready) = watch::channel(false);
    let handle = Watched {
        objects: objects.clone(),
        ready,
    };
    let Kind {
        resource, convert, ..
    } = kind;
    tasks.spawn(async move {
        let counters = resource.counters(&shared.counters);
        let mut lists = 0u64;
        // Paces replacements of the watcher after HTTP 410, like kube-runtime paces its own
        // retries; it resets itself after two quiet minutes.
        let mut gone_backoff = watcher::DefaultBackoff::default();
        loop {
            let mut events = std::pin::pin!(watcher(api.clone(), config.clone()).default_backoff());
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
                let mut objects = objects.lock().unwrap_or_else(|e| e.into_inner());
                let recorded = match event {
                    watcher::Event::Init => {
                        lists += 1;
                        if lists > 1 {
                            counters.relists.fetch_add(1, Ordering::Relaxed);
                            info!(resource = resource.name(), "relisting");
                        }
                        objects.listing = Some(HashMap::new());
                        false
                    }
                    watcher::Event::InitApply(object) => {
                        counters.events.fetch_add(1, Ordering::Relaxed);
                        let name = ServiceName::of(object.meta());
                        if let (Some(listing), Some(object)) =
                            (objects.listing.as_mut(), convert(object))
                        {
                            listing.insert(name, Arc::new(object));
                        }
                        false
                    }
                    watcher::Event::InitDone => {
                        let recorded = objects.listed(&shared.feed);
                        ready_tx.send_replace(true);
                        recorded
                    }
                    watcher::Event::Apply(object) => {
                        counters.events.fetch_add(1, Ordering::Relaxed);
                        let name = ServiceName::of(object.meta());
                        match convert(object) {
                            Some(object) => objects.apply(name, Some(object), &shared.feed),
                            None => false,
                        }
                    }
                    watcher::Event::Delete(object) => {
                        counters.events.fetch_add(1, Ordering::Relaxed);
                        objects.apply(ServiceName::of(object.meta()), None, &shared.feed)
                    }
                };
                drop(objects);
                if recorded {
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
    handle
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
                "cannot list/watch the API server; keeping the last state and retrying with backoff"
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
