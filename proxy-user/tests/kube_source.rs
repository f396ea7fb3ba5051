//! The kube source against a fake API server: kube-runtime's watchers run unmodified over real
//! HTTP, so lists, watches, resumption, bookmarks and 410 relists go through the same code as in
//! a cluster.

mod fake_apiserver;

use std::{
    collections::BTreeMap,
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use fake_apiserver::{FakeApiServer, Kind, Outcome};
use k8s_openapi::api::core::v1::Node;
use serde_json::{Value, json};
use sluice::{
    config::Scheduler,
    model::{NodeContext, ServiceInput, ServiceName, SliceInput, translate_input},
    source::{
        Feed, FeedRx,
        kube::{KubeCounters, KubeSource, client_from},
    },
};
use tokio::task::JoinHandle;

const NODE: &str = "node-a";
/// Generous: the watcher's first retry waits 0.8 s plus jitter, the next ones up to twice that.
const TIMEOUT: Duration = Duration::from_secs(30);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn service(namespace: &str, name: &str, ip: &str) -> Value {
    json!({
        "kind": "Service",
        "metadata": {"namespace": namespace, "name": name, "uid": format!("uid-{name}")},
        "spec": {"clusterIP": ip, "ports": [{"port": 80, "protocol": "TCP"}]},
    })
}

fn slice(namespace: &str, name: &str, service: &str, addresses: &[&str]) -> Value {
    json!({
        "kind": "EndpointSlice",
        "metadata": {
            "namespace": namespace,
            "name": name,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": addresses.iter().map(|a| json!({"addresses": [a]})).collect::<Vec<_>>(),
        "ports": [{"port": 8080, "protocol": "TCP"}],
    })
}

fn node(name: &str, zone: &str) -> Value {
    json!({
        "kind": "Node",
        "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.10"}]},
    })
}

fn labelled(mut object: Value, key: &str, value: &str) -> Value {
    object["metadata"]["labels"][key] = json!(value);
    object
}

/// A small cluster: two Services with a slice each, plus this node and another.
fn populate(server: &FakeApiServer) {
    server.apply(service("default", "web", "10.96.0.10"));
    server.apply(service("shop", "cart", "10.96.0.20"));
    server.apply(slice(
        "default",
        "web-abc",
        "web",
        &["10.0.0.1", "10.0.0.2"],
    ));
    server.apply(slice("shop", "cart-xyz", "cart", &["10.0.1.1"]));
    server.apply(node(NODE, "zone-a"));
    server.apply(node("node-b", "zone-b"));
}

/// What the source has published so far, as a consumer of the feed sees it.
#[derive(Clone, Debug, Default)]
struct Inputs {
    services: BTreeMap<ServiceName, Arc<ServiceInput>>,
    slices: BTreeMap<ServiceName, Arc<SliceInput>>,
    node: Option<Arc<Node>>,
}

impl Inputs {
    fn take_from(&mut self, rx: &mut FeedRx) {
        let changes = rx.take();
        for (name, service) in changes.services {
            match service {
                Some(service) => self.services.insert(name, service),
                None => self.services.remove(&name),
            };
        }
        for (name, slice) in changes.slices {
            match slice {
                Some(slice) => self.slices.insert(name, slice),
                None => self.slices.remove(&name),
            };
        }
        if let Some(node) = changes.node {
            self.node = node;
        }
    }
}

fn service_names(inputs: &Inputs) -> Vec<String> {
    inputs.services.keys().map(ToString::to_string).collect()
}

fn slice_names(inputs: &Inputs) -> Vec<String> {
    inputs.slices.keys().map(ToString::to_string).collect()
}

fn slice_addresses(inputs: &Inputs, name: &str) -> Vec<String> {
    inputs
        .slices
        .iter()
        .filter(|(n, _)| &*n.name == name)
        .flat_map(|(_, s)| s.endpoints.iter().filter_map(|e| e.address))
        .map(|a| a.to_string())
        .collect()
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(TIMEOUT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {TIMEOUT:?} waiting for {what}"))
}

/// Waits for a condition that has no channel to wait on (requests the fake saw, counters).
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    within(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

struct Running {
    rx: FeedRx,
    seen: Inputs,
    counters: Arc<KubeCounters>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Running {
    fn start(client: kube::Client) -> Self {
        let feed = Feed::new();
        let rx = feed.subscribe();
        let source = KubeSource::new(client, NODE);
        let counters = source.counters();
        let task = tokio::spawn(source.run(feed));
        Self {
            rx,
            seen: Inputs::default(),
            counters,
            task,
        }
    }

    async fn first_snapshot(&mut self) -> Inputs {
        within("the first publication", self.rx.changed())
            .await
            .expect("source stopped");
        self.seen.take_from(&mut self.rx);
        self.seen.clone()
    }

    async fn wait_for(&mut self, what: &str, mut pred: impl FnMut(&Inputs) -> bool) -> Inputs {
        within(what, async {
            loop {
                self.seen.take_from(&mut self.rx);
                if pred(&self.seen) {
                    return self.seen.clone();
                }
                self.rx.changed().await.expect("source stopped");
            }
        })
        .await
    }
}

fn client(server: &FakeApiServer) -> kube::Client {
    let config = kube::Config::new(server.url().parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

async fn started() -> (FakeApiServer, Running, Inputs) {
    init_tracing();
    let server = FakeApiServer::start().await;
    populate(&server);
    let mut source = Running::start(client(&server));
    let first = source.first_snapshot().await;
    (server, source, first)
}

fn lists_of(server: &FakeApiServer, kind: Kind) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.kind == kind && !r.watch)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_snapshot_waits_for_all_three_lists_and_holds_exactly_the_objects() {
    init_tracing();
    let server = FakeApiServer::start().await;
    populate(&server);
    // Out of scope, filtered by the server through the selectors the source sends.
    server.apply(labelled(
        service("default", "other-proxy", "10.96.0.30"),
        "service.kubernetes.io/service-proxy-name",
        "someone-else",
    ));
    server.apply(labelled(
        slice("default", "db-headless", "db", &["10.0.2.1"]),
        "service.kubernetes.io/headless",
        "",
    ));
    let mut orphan = slice("default", "no-service", "x", &["10.0.3.1"]);
    orphan["metadata"]["labels"] = json!({});
    server.apply(orphan);
    server.hold_lists(Kind::Node);

    let mut source = Running::start(client(&server));
    let counters = source.counters.clone();
    eventually(
        "the Service and EndpointSlice lists and the Node request",
        || {
            counters.services.events() == 2
                && counters.slices.events() == 2
                && lists_of(&server, Kind::Node) == 1
        },
    )
    .await;
    // Watches of the listed kinds are open by now: anything published would have been.
    eventually("the Service and EndpointSlice watches", || {
        server.open_watches(Kind::Service) == 1 && server.open_watches(Kind::EndpointSlice) == 1
    })
    .await;
    assert!(
        !source.rx.has_changed(),
        "published before the Node list completed"
    );
    assert_eq!(
        source.rx.feed().pending(),
        (0, 0),
        "recorded before the Node list completed"
    );
    assert_eq!(source.counters.publications(), 0);

    server.release_lists(Kind::Node);
    let first = source.first_snapshot().await;
    assert_eq!(service_names(&first), ["default/web", "shop/cart"]);
    assert_eq!(slice_names(&first), ["default/web-abc", "shop/cart-xyz"]);
    let node = first.node.as_ref().expect("this node");
    assert_eq!(node.metadata.name.as_deref(), Some(NODE));
    assert_eq!(slice_addresses(&first, "web-abc"), ["10.0.0.1", "10.0.0.2"]);
    assert_eq!(source.counters.publications(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_selectors_sent_are_kube_proxys() {
    let (server, _source, _) = started().await;
    eventually("a watch of each kind", || {
        [Kind::Service, Kind::EndpointSlice, Kind::Node]
            .iter()
            .all(|&k| server.open_watches(k) == 1)
    })
    .await;
    let requests = server.requests();
    for kind in [Kind::Service, Kind::EndpointSlice, Kind::Node] {
        let of_kind: Vec<_> = requests.iter().filter(|r| r.kind == kind).collect();
        assert!(of_kind.iter().any(|r| !r.watch), "{kind:?}: no list");
        assert!(of_kind.iter().any(|r| r.watch), "{kind:?}: no watch");
        for r in of_kind {
            let (labels, fields) = (r.param("labelSelector"), r.param("fieldSelector"));
            match kind {
                Kind::Service => {
                    assert_eq!(
                        labels,
                        Some(
                            "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless"
                        )
                    );
                    assert_eq!(fields, None);
                }
                Kind::EndpointSlice => {
                    assert_eq!(
                        labels,
                        Some(
                            "kubernetes.io/service-name,!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name"
                        )
                    );
                    assert_eq!(fields, None);
                }
                Kind::Node => {
                    assert_eq!(labels, None);
                    assert_eq!(fields, Some("metadata.name=node-a"));
                }
            }
            if r.watch {
                assert_eq!(r.param("allowWatchBookmarks"), Some("true"), "{r:?}");
                assert!(r.resource_version().is_some(), "{r:?}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modified_added_and_deleted_objects_show_up_in_later_snapshots() {
    let (server, mut source, first) = started().await;
    assert_eq!(slice_addresses(&first, "web-abc"), ["10.0.0.1", "10.0.0.2"]);

    server.apply(slice(
        "default",
        "web-abc",
        "web",
        &["10.0.0.2", "10.0.0.3"],
    ));
    let inputs = source
        .wait_for("the modified slice", |i| {
            slice_addresses(i, "web-abc") == ["10.0.0.2", "10.0.0.3"]
        })
        .await;
    assert_eq!(service_names(&inputs), ["default/web", "shop/cart"]);

    server.delete(Kind::Service, "shop", "cart");
    server.delete(Kind::EndpointSlice, "shop", "cart-xyz");
    server.apply(service("default", "api", "10.96.0.40"));
    let inputs = source
        .wait_for("the deletion and the addition", |i| {
            service_names(i) == ["default/api", "default/web"]
                && slice_names(i) == ["default/web-abc"]
        })
        .await;
    assert_eq!(
        inputs.node.as_ref().unwrap().metadata.name.as_deref(),
        Some(NODE)
    );

    // Changes to other nodes are not this node's business.
    server.apply(node("node-b", "zone-c"));
    server.apply(node(NODE, "zone-z"));
    let inputs = source
        .wait_for("this node's new zone", |i| {
            i.node
                .as_ref()
                .and_then(|n| n.metadata.labels.as_ref())
                .unwrap()["topology.kubernetes.io/zone"]
                == "zone-z"
        })
        .await;
    assert_eq!(
        inputs.node.as_ref().unwrap().metadata.name.as_deref(),
        Some(NODE)
    );
    assert_eq!(source.counters.services.relists(), 0);

    // Dropping the receiver stops the source.
    let Running { rx, task, .. } = &mut source;
    drop(std::mem::replace(rx, Feed::new().subscribe()));
    let ended = within("the source to stop", task).await;
    assert!(matches!(ended, Ok(Ok(()))), "{ended:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_watch_connection_resumes_from_the_last_resource_version() {
    let (server, mut source, _) = started().await;
    eventually("a watch of each kind", || {
        [Kind::Service, Kind::EndpointSlice, Kind::Node]
            .iter()
            .all(|&k| server.open_watches(k) == 1)
    })
    .await;
    let seen = server.apply(service("default", "api", "10.96.0.40"));
    source
        .wait_for("the new Service", |i| {
            service_names(i).contains(&"default/api".into())
        })
        .await;
    let lists_before = server.requests().iter().filter(|r| !r.watch).count();

    assert_eq!(server.break_watches(), 3);
    // Happens while the watches are down: it must come from the resumed watch's replay.
    server.apply(service("default", "late", "10.96.0.50"));
    let inputs = source
        .wait_for("the Service added while disconnected", |i| {
            service_names(i).contains(&"default/late".into())
        })
        .await;
    assert_eq!(
        service_names(&inputs),
        ["default/api", "default/late", "default/web", "shop/cart"]
    );

    let requests = server.requests();
    assert_eq!(
        requests.iter().filter(|r| !r.watch).count(),
        lists_before,
        "resumed without a relist"
    );
    let service_watches: Vec<_> = requests
        .iter()
        .filter(|r| r.kind == Kind::Service && r.watch)
        .collect();
    assert!(service_watches.len() >= 2, "{service_watches:?}");
    let resumed = service_watches.last().unwrap();
    assert_eq!(resumed.resource_version(), Some(seen), "{resumed:?}");
    assert_eq!(resumed.outcome, Outcome::Watching);
    let c = &source.counters;
    assert_eq!(
        (c.services.relists(), c.slices.relists(), c.nodes.relists()),
        (0, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_error_event_on_an_open_watch_causes_a_relist_with_a_correct_snapshot() {
    let (server, mut source, _) = started().await;
    eventually("a watch of each kind", || {
        [Kind::Service, Kind::EndpointSlice, Kind::Node]
            .iter()
            .all(|&k| server.open_watches(k) == 1)
    })
    .await;
    let lists_before = lists_of(&server, Kind::Service);
    server.expire_watches();
    server.delete(Kind::Service, "shop", "cart");
    server.apply(service("default", "api", "10.96.0.40"));
    server.apply(slice("default", "web-abc", "web", &["10.0.0.9"]));

    let inputs = source
        .wait_for("the relisted state", |i| {
            service_names(i) == ["default/api", "default/web"]
                && slice_addresses(i, "web-abc") == ["10.0.0.9"]
        })
        .await;
    assert_eq!(slice_names(&inputs), ["default/web-abc", "shop/cart-xyz"]);
    assert!(inputs.node.is_some());
    let counters = source.counters.clone();
    eventually("a relist of every kind", || {
        counters.services.relists() >= 1
            && counters.slices.relists() >= 1
            && counters.nodes.relists() >= 1
    })
    .await;
    assert!(lists_of(&server, Kind::Service) > lists_before);
}

/// The server went away, history was compacted meanwhile, and the resumed watch's
/// resourceVersion is too old: the real API server answers 200 with a 410 ERROR event; some
/// proxies and older servers answer HTTP 410. Either way the source relists.
async fn resume_after_compaction(gone_as_http: bool) {
    let (server, mut source, first) = started().await;
    server.set_gone_as_http(gone_as_http);
    let published = source.counters.publications();
    server.stop().await;

    server.delete(Kind::Service, "shop", "cart");
    server.delete(Kind::EndpointSlice, "shop", "cart-xyz");
    server.apply(service("default", "api", "10.96.0.40"));
    server.compact();
    assert!(
        !source.rx.has_changed(),
        "nothing new while the server is away"
    );
    assert_eq!(service_names(&source.seen), service_names(&first));
    server.restart().await;

    let inputs = source
        .wait_for("the relisted state", |i| {
            service_names(i) == ["default/api", "default/web"]
                && slice_names(i) == ["default/web-abc"]
        })
        .await;
    assert!(inputs.node.is_some());
    assert!(source.counters.publications() > published);
    let requests = server.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.kind == Kind::Service && r.outcome == Outcome::Gone),
        "the resumed watch hit the compaction"
    );
    assert!(source.counters.services.relists() >= 1);
    assert!(source.counters.slices.relists() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_error_event_on_resume_causes_a_relist() {
    resume_after_compaction(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_410_on_resume_causes_a_relist() {
    resume_after_compaction(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookmarks_move_the_resume_point_past_changes_to_other_kinds() {
    let (server, mut source, _) = started().await;
    eventually("a watch of each kind", || {
        [Kind::Service, Kind::EndpointSlice, Kind::Node]
            .iter()
            .all(|&k| server.open_watches(k) == 1)
    })
    .await;
    // Only slices change: without bookmarks the Service and Node watches would resume from
    // their old resourceVersions, which the compaction below makes too old.
    for i in 0..5 {
        server.apply(slice(
            "default",
            "web-abc",
            "web",
            &[&format!("10.0.0.{}", 10 + i)],
        ));
    }
    source
        .wait_for("the last slice change", |i| {
            slice_addresses(i, "web-abc") == ["10.0.0.14"]
        })
        .await;
    let bookmark = server.bookmark();
    server.compact();
    // A clean end, like a watch timeout: everything sent before it is delivered.
    server.end_watches();

    eventually("watches resumed from the bookmark", || {
        [Kind::Service, Kind::Node].iter().all(|&kind| {
            server
                .requests()
                .iter()
                .any(|r| r.kind == kind && r.watch && r.resource_version() == Some(bookmark))
        })
    })
    .await;
    server.apply(service("default", "api", "10.96.0.40"));
    source
        .wait_for("a Service after the resume", |i| {
            service_names(i).contains(&"default/api".into())
        })
        .await;
    assert!(
        server.requests().iter().all(|r| r.outcome != Outcome::Gone),
        "no watch was too old"
    );
    let c = &source.counters;
    assert_eq!(
        (c.services.relists(), c.slices.relists(), c.nodes.relists()),
        (0, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_objects_carry_what_the_model_reads_and_the_node_is_slimmed() {
    init_tracing();
    let server = FakeApiServer::start().await;
    populate(&server);
    let annotations = json!({
        "kubectl.kubernetes.io/last-applied-configuration": "{\"big\": true}",
        "service.kubernetes.io/topology-mode": "Auto",
        "sluice.dev/scheduler": "mh",
        "example.com/owner": "team-a",
    });
    let managed = json!([{"manager": "kubectl", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]);
    let mut svc = service("default", "web", "10.96.0.10");
    svc["metadata"]["annotations"] = annotations.clone();
    svc["metadata"]["managedFields"] = managed.clone();
    server.apply(svc);
    let mut sl = slice("default", "web-abc", "web", &["10.0.0.1"]);
    sl["metadata"]["annotations"] = json!({
        "endpoints.kubernetes.io/last-change-trigger-time": "2025-01-01T00:00:00Z",
        "example.com/other": "x",
    });
    sl["metadata"]["managedFields"] = managed.clone();
    server.apply(sl);
    let mut n = node(NODE, "zone-a");
    n["metadata"]["annotations"] = json!({"node.alpha.kubernetes.io/ttl": "0"});
    n["metadata"]["managedFields"] = managed;
    n["status"]["images"] = json!([{"names": ["registry.example/app:1"], "sizeBytes": 1000}]);
    server.apply(n);

    let mut source = Running::start(client(&server));
    let first = source.first_snapshot().await;
    // Services and slices arrive converted: only what the model reads is there at all.
    let scheduler = |inputs: &Inputs, name: &str| {
        let service = &inputs.services[&ServiceName::new("default", name)];
        let translated = translate_input(service, &[], &NodeContext::default())
            .unwrap()
            .unwrap();
        translated.frontends[0].scheduler
    };
    assert_eq!(scheduler(&first, "web"), Some(Scheduler::Maglev));
    let slice = &first.slices[&ServiceName::new("default", "web-abc")];
    assert_eq!(slice.trigger_time.as_deref(), Some("2025-01-01T00:00:00Z"));
    let node = first.node.as_ref().unwrap();
    assert_eq!(node.metadata.managed_fields, None);
    assert_eq!(node.metadata.annotations, None);
    assert_eq!(node.status.as_ref().unwrap().images, None);

    // Objects arriving through the watch are converted too.
    let mut svc = service("default", "api", "10.96.0.40");
    svc["metadata"]["annotations"] = annotations;
    server.apply(svc);
    let inputs = source
        .wait_for("the watched Service", |i| {
            service_names(i).contains(&"default/api".into())
        })
        .await;
    assert_eq!(scheduler(&inputs, "api"), Some(Scheduler::Maglev));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_server_is_down_the_last_snapshot_stays_and_nothing_is_published() {
    let (server, mut source, first) = started().await;
    let published = source.counters.publications();
    let errors_before = source.counters.services.errors();
    server.stop().await;

    let counters = source.counters.clone();
    eventually("two failed retries of the Service watch", || {
        counters.services.errors() >= errors_before + 2
    })
    .await;
    assert_eq!(
        source.counters.publications(),
        published,
        "published while down"
    );
    assert!(!source.rx.has_changed());
    assert_eq!(source.rx.feed().pending(), (0, 0), "recorded while down");
    assert_eq!(service_names(&first), ["default/web", "shop/cart"]);
    assert_eq!(first.slices.len(), 2);
    assert!(first.node.is_some());

    server.restart().await;
    server.apply(service("default", "api", "10.96.0.40"));
    let inputs = source
        .wait_for("a change after the server is back", |i| {
            service_names(i).contains(&"default/api".into())
        })
        .await;
    assert_eq!(
        service_names(&inputs),
        ["default/api", "default/web", "shop/cart"]
    );
    // The log was not compacted: the watches resumed where they were.
    assert_eq!(source.counters.services.relists(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_events_is_published_in_a_few_publications() {
    let (server, mut source, _) = started().await;
    let before = source.counters.publications();
    let start = Instant::now();
    const BURST: usize = 2000;
    for i in 0..BURST {
        server.apply(service(
            "burst",
            &format!("svc-{i:04}"),
            &format!("10.97.{}.{}", i / 250, i % 250),
        ));
    }
    let inputs = source
        .wait_for("the whole burst", |i| i.services.len() == BURST + 2)
        .await;
    let elapsed = start.elapsed();
    let published = source.counters.publications() - before;
    assert!(inputs.services.len() == BURST + 2);
    let allowed = elapsed.as_millis() as u64 / 10 + 1;
    assert!(
        published <= allowed,
        "{published} publications in {elapsed:?} (at most one per 10 ms)"
    );
    assert!(
        published < BURST as u64 / 4,
        "{published} publications for {BURST} events"
    );
    assert_eq!(source.counters.services.events(), (BURST + 2) as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_from_a_kubeconfig_reaches_the_server() {
    init_tracing();
    let server = FakeApiServer::start().await;
    populate(&server);
    let dir = std::env::temp_dir().join(format!("sluice-kube-source-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"{}\"}}\nusers:\n- name: nobody\n  user: {{}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: nobody}}\ncurrent-context: fake\n",
            server.url()
        ),
    )
    .unwrap();
    let client = client_from(Some(&path))
        .await
        .expect("client from kubeconfig");
    let mut source = Running::start(client);
    let first = source.first_snapshot().await;
    assert_eq!(service_names(&first), ["default/web", "shop/cart"]);
    std::fs::remove_dir_all(&dir).unwrap();

    let missing = client_from(Some(&dir.join("missing"))).await;
    assert!(
        format!("{:#}", missing.err().expect("no such file")).contains("missing"),
        "the error names the file"
    );
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
        let error = client_from(None).await.err().expect("not in a cluster");
        assert!(format!("{error:#}").contains("in-cluster"), "{error:#}");
    }
}
