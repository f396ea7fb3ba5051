//! A fake kube-apiserver speaking just enough of the list/watch protocol for Services,
//! EndpointSlices and Nodes, so that kube-runtime's watchers run unmodified against it.
//!
//! Like the real server it keeps one resourceVersion counter across all kinds and a log of
//! every change, so a watch from resourceVersion N replays what happened after N. Tests drive
//! it directly: change objects, send bookmarks, end or break watch connections, compact the log
//! (410 Gone for older resourceVersions), hold lists back, and stop and restart listening.

use std::{
    collections::{BTreeMap, HashSet},
    convert::Infallible,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
};

use bytes::Bytes;
use futures::channel::mpsc;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::{
    Request, Response, StatusCode,
    body::{Frame, Incoming},
    header::CONTENT_TYPE,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::{net::TcpListener, task::JoinSet};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
}

impl Kind {
    fn from_path(path: &str) -> Option<Self> {
        match path {
            "/api/v1/services" => Some(Kind::Service),
            "/apis/discovery.k8s.io/v1/endpointslices" => Some(Kind::EndpointSlice),
            "/api/v1/nodes" => Some(Kind::Node),
            _ => None,
        }
    }

    fn from_object(object: &Value) -> Self {
        match object["kind"].as_str() {
            Some("Service") => Kind::Service,
            Some("EndpointSlice") => Kind::EndpointSlice,
            Some("Node") => Kind::Node,
            other => panic!("the fake API server does not serve {other:?}"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Kind::Service | Kind::Node => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
        }
    }
}

/// How the server answered a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Listed,
    Watching,
    /// The watch's resourceVersion was compacted away.
    Gone,
}

/// A list or watch request as the server saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub kind: Kind,
    pub watch: bool,
    pub query: BTreeMap<String, String>,
    pub outcome: Outcome,
}

impl Recorded {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }

    pub fn resource_version(&self) -> Option<u64> {
        self.param("resourceVersion")?.parse().ok()
    }
}

type Line = Result<Frame<Bytes>, io::Error>;

struct Watcher {
    kind: Kind,
    labels: Option<String>,
    fields: Option<String>,
    tx: mpsc::UnboundedSender<Line>,
}

impl Watcher {
    fn send(&self, line: Value) {
        let mut text = line.to_string();
        text.push('\n');
        let _ = self.tx.unbounded_send(Ok(Frame::data(Bytes::from(text))));
    }
}

struct Logged {
    rv: u64,
    kind: Kind,
    event: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<(Kind, String, String), Value>,
    log: Vec<Logged>,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted: u64,
    gone_as_http: bool,
    requests: Vec<Recorded>,
    watchers: Vec<Watcher>,
}

impl State {
    fn broadcast(&mut self, kind: Kind, event: &'static str, object: &Value) {
        self.watchers.retain(|w| !w.tx.is_closed());
        for w in &self.watchers {
            if w.kind == kind && matches(w.labels.as_deref(), w.fields.as_deref(), object) {
                w.send(json!({"type": event, "object": object}));
            }
        }
    }
}

struct Inner {
    state: Mutex<State>,
    held: tokio::sync::watch::Sender<HashSet<Kind>>,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct FakeApiServer {
    inner: Arc<Inner>,
    addr: SocketAddr,
    accept: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl FakeApiServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let server = Self {
            inner: Arc::new(Inner {
                state: Mutex::default(),
                held: tokio::sync::watch::Sender::new(HashSet::new()),
            }),
            addr,
            accept: Mutex::default(),
        };
        server.serve(listener);
        server
    }

    fn serve(&self, listener: TcpListener) {
        let inner = self.inner.clone();
        // The connections live in the accept task's JoinSet, so aborting that task closes the
        // listener and every open connection at once: the server is gone, as after a crash.
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let inner = inner.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req| {
                        let inner = inner.clone();
                        async move { Ok::<_, Infallible>(handle(&inner, req).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        *self.accept.lock().unwrap() = Some(task);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops listening and closes every connection: clients get "connection refused".
    pub async fn stop(&self) {
        let task = self.accept.lock().unwrap().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        self.inner.state().watchers.clear();
    }

    /// Listens again on the same address, with the same objects and log.
    pub async fn restart(&self) {
        let listener = TcpListener::bind(self.addr).await.expect("rebind");
        self.serve(listener);
    }

    /// Creates or replaces an object (by kind, namespace and name) and returns its new
    /// resourceVersion.
    pub fn apply(&self, mut object: Value) -> u64 {
        let kind = Kind::from_object(&object);
        object["apiVersion"] = json!(kind.api_version());
        let mut state = self.inner.state();
        state.rv += 1;
        let rv = state.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = (
            kind,
            object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
            object["metadata"]["name"]
                .as_str()
                .expect("metadata.name")
                .to_owned(),
        );
        let event = if state.objects.insert(key, object.clone()).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        state.broadcast(kind, event, &object);
        state.log.push(Logged {
            rv,
            kind,
            event,
            object,
        });
        rv
    }

    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> u64 {
        let mut state = self.inner.state();
        let mut object = state
            .objects
            .remove(&(kind, namespace.to_owned(), name.to_owned()))
            .unwrap_or_else(|| panic!("no {kind:?} {namespace}/{name}"));
        state.rv += 1;
        let rv = state.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        state.broadcast(kind, "DELETED", &object);
        state.log.push(Logged {
            rv,
            kind,
            event: "DELETED",
            object,
        });
        rv
    }

    /// Lists of `kind` wait until released.
    pub fn hold_lists(&self, kind: Kind) {
        self.inner.held.send_modify(|h| {
            h.insert(kind);
        });
    }

    pub fn release_lists(&self, kind: Kind) {
        self.inner.held.send_modify(|h| {
            h.remove(&kind);
        });
    }

    /// Sends every open watch a BOOKMARK at the current resourceVersion; returns it.
    pub fn bookmark(&self) -> u64 {
        let mut state = self.inner.state();
        let rv = state.rv;
        state.watchers.retain(|w| !w.tx.is_closed());
        for w in &state.watchers {
            w.send(json!({
                "type": "BOOKMARK",
                "object": {
                    "kind": w.kind.name(),
                    "apiVersion": w.kind.api_version(),
                    "metadata": {"resourceVersion": rv.to_string()},
                },
            }));
        }
        rv
    }

    /// Ends every open watch cleanly, as the server does when a watch's timeout expires.
    pub fn end_watches(&self) {
        self.inner.state().watchers.clear();
    }

    /// Breaks every open watch connection mid-stream (no final chunk). Returns how many.
    pub fn break_watches(&self) -> usize {
        let mut state = self.inner.state();
        let watchers = std::mem::take(&mut state.watchers);
        let mut broken = 0;
        for w in watchers {
            // hyper aborts the connection when a response body fails.
            if w.tx
                .unbounded_send(Err(io::Error::other("connection broken by the test")))
                .is_ok()
            {
                broken += 1;
            }
        }
        broken
    }

    /// Forgets the log up to now: a watch from an older resourceVersion gets 410 Gone.
    pub fn compact(&self) {
        let mut state = self.inner.state();
        state.compacted = state.rv;
        let compacted = state.compacted;
        state.log.retain(|l| l.rv > compacted);
    }

    /// Compacts and ends every open watch with a 410 ERROR event, as the server does when a
    /// watcher falls too far behind.
    pub fn expire_watches(&self) {
        self.compact();
        let mut state = self.inner.state();
        let compacted = state.compacted;
        for w in std::mem::take(&mut state.watchers) {
            w.send(gone_event(compacted));
        }
    }

    /// Whether a watch from a compacted resourceVersion is refused with HTTP 410 rather than
    /// answered with 200 and a 410 ERROR event (what kube-apiserver does).
    pub fn set_gone_as_http(&self, yes: bool) {
        self.inner.state().gone_as_http = yes;
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.state().requests.clone()
    }

    pub fn open_watches(&self, kind: Kind) -> usize {
        let mut state = self.inner.state();
        state.watchers.retain(|w| !w.tx.is_closed());
        state.watchers.iter().filter(|w| w.kind == kind).count()
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn gone_event(compacted: u64) -> Value {
    json!({
        "type": "ERROR",
        "object": status(410, "Expired", &format!("too old resource version (compacted at {compacted})")),
    })
}

fn json_response(code: StatusCode, body: &Value) -> Response<BoxBody<Bytes, io::Error>> {
    Response::builder()
        .status(code)
        .header(CONTENT_TYPE, "application/json")
        .body(
            Full::new(Bytes::from(body.to_string()))
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap()
}

async fn handle(inner: &Inner, req: Request<Incoming>) -> Response<BoxBody<Bytes, io::Error>> {
    let Some(kind) = Kind::from_path(req.uri().path()) else {
        return json_response(
            StatusCode::NOT_FOUND,
            &status(404, "NotFound", "the fake API server does not serve this"),
        );
    };
    let query: BTreeMap<String, String> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let watch = matches!(query.get("watch").map(String::as_str), Some("1" | "true"));
    let labels = query.get("labelSelector").cloned();
    let fields = query.get("fieldSelector").cloned();
    let record = |state: &mut State, outcome| {
        state.requests.push(Recorded {
            kind,
            watch,
            query: query.clone(),
            outcome,
        })
    };

    if !watch {
        // Recorded on arrival, so a test can see a held list was asked for.
        record(&mut inner.state(), Outcome::Listed);
        let mut held = inner.held.subscribe();
        let _ = held.wait_for(|h| !h.contains(&kind)).await;
        let state = inner.state();
        let items: Vec<&Value> = state
            .objects
            .iter()
            .filter(|((k, _, _), o)| *k == kind && matches(labels.as_deref(), fields.as_deref(), o))
            .map(|(_, o)| o)
            .collect();
        let list = json!({
            "kind": format!("{}List", kind.name()),
            "apiVersion": kind.api_version(),
            "metadata": {"resourceVersion": state.rv.to_string()},
            "items": items,
        });
        return json_response(StatusCode::OK, &list);
    }

    let mut state = inner.state();
    let from = query
        .get("resourceVersion")
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&v| v != 0)
        .unwrap_or(state.rv);
    if from < state.compacted {
        record(&mut state, Outcome::Gone);
        if state.gone_as_http {
            let message = format!("too old resource version: {from} ({})", state.compacted);
            return json_response(StatusCode::GONE, &status(410, "Expired", &message));
        }
        let mut line = gone_event(state.compacted).to_string();
        line.push('\n');
        return json_response_text(line);
    }
    record(&mut state, Outcome::Watching);
    let (tx, rx) = mpsc::unbounded();
    let watcher = Watcher {
        kind,
        labels,
        fields,
        tx,
    };
    for l in state.log.iter().filter(|l| l.kind == kind && l.rv > from) {
        if matches(
            watcher.labels.as_deref(),
            watcher.fields.as_deref(),
            &l.object,
        ) {
            watcher.send(json!({"type": l.event, "object": l.object}));
        }
    }
    state.watchers.push(watcher);
    // hyper sends a body of unknown length chunked, as the API server streams watches.
    Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "application/json")
        .body(StreamBody::new(rx).boxed())
        .unwrap()
}

fn json_response_text(text: String) -> Response<BoxBody<Bytes, io::Error>> {
    Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "application/json")
        .body(
            Full::new(Bytes::from(text))
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap()
}

/// Label selectors as kube-proxy writes them (`key`, `!key`, `key=value`, `key!=value`) and
/// the `metadata.name` / `metadata.namespace` field selectors.
fn matches(labels: Option<&str>, fields: Option<&str>, object: &Value) -> bool {
    let object_labels = &object["metadata"]["labels"];
    let label = |key: &str| object_labels.get(key).and_then(Value::as_str);
    let labels_ok = labels
        .unwrap_or("")
        .split(',')
        .filter(|t| !t.is_empty())
        .all(|term| {
            if let Some(key) = term.strip_prefix('!') {
                label(key).is_none()
            } else if let Some((key, value)) = term.split_once("!=") {
                label(key) != Some(value)
            } else if let Some((key, value)) =
                term.split_once("==").or_else(|| term.split_once('='))
            {
                label(key) == Some(value)
            } else {
                label(term).is_some()
            }
        });
    let fields_ok = fields
        .unwrap_or("")
        .split(',')
        .filter(|t| !t.is_empty())
        .all(|term| {
            let (path, value) = term
                .split_once("==")
                .or_else(|| term.split_once('='))
                .unwrap_or_else(|| panic!("unsupported field selector {term:?}"));
            match path {
                "metadata.name" | "metadata.namespace" => {
                    let field = path.trim_start_matches("metadata.");
                    object["metadata"][field].as_str().unwrap_or("") == value
                }
                _ => panic!("unsupported field selector {term:?}"),
            }
        });
    labels_ok && fields_ok
}
