//! A small fake Kubernetes API server: just enough of the real wire protocol for kube-rs's own watcher
//! to run unmodified against it (see ../shared/guide/testing.md).
//!
//! It serves discovery.k8s.io/v1 EndpointSlices (selected by the `kubernetes.io/service-name` label) and
//! the core/v1 Endpoints derived from them (selected by `metadata.name`): list with a
//! `metadata.resourceVersion`, and watch as a chunked stream of newline-delimited JSON events from a
//! resourceVersion on (ADDED, MODIFIED, DELETED, BOOKMARK, and ERROR 410 Expired to force a relist),
//! closed after `timeoutSeconds`. A test can stop it and start it again on the same port, stop serving
//! EndpointSlice v1 (404, as an old cluster does) or forbid everything (403, as RBAC does).
//!
//! Plain HTTP/1.1 over threads; every response says `Connection: close`, so one request is one
//! connection and the log of requests is easy to reason about.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::TempDir;

const SERVICE_LABEL: &str = "kubernetes.io/service-name";

/// One endpoint of an EndpointSlice: a pod's address and conditions.
#[derive(Debug, Clone)]
pub struct PodEndpoint {
    pub ip: String,
    /// `hostname` (set for StatefulSet pods behind a headless service).
    pub hostname: Option<String>,
    /// `targetRef.name`: the pod.
    pub pod: Option<String>,
    /// `conditions.ready`; `None` leaves the field out (which means ready).
    pub ready: Option<bool>,
    pub terminating: bool,
    /// `zone`, when set.
    pub zone: Option<String>,
}

impl PodEndpoint {
    /// A ready StatefulSet pod: hostname and pod name are both `pod`.
    pub fn ready(ip: &str, pod: &str) -> PodEndpoint {
        PodEndpoint {
            ip: ip.to_string(),
            hostname: Some(pod.to_string()),
            pod: Some(pod.to_string()),
            ready: Some(true),
            terminating: false,
            zone: None,
        }
    }

    pub fn not_ready(ip: &str, pod: &str) -> PodEndpoint {
        PodEndpoint {
            ready: Some(false),
            ..PodEndpoint::ready(ip, pod)
        }
    }

    /// Shutting down: no longer ready, still serving its last requests.
    pub fn terminating(ip: &str, pod: &str) -> PodEndpoint {
        PodEndpoint {
            ready: Some(false),
            terminating: true,
            ..PodEndpoint::ready(ip, pod)
        }
    }
}

/// An EndpointSlice of a Service.
#[derive(Debug, Clone)]
pub struct Slice {
    pub name: String,
    pub service: String,
    /// `(name, port)`.
    pub ports: Vec<(String, u16)>,
    pub endpoints: Vec<PodEndpoint>,
}

impl Slice {
    /// A slice of `service` with one port named `redis`.
    pub fn new(name: &str, service: &str, port: u16, endpoints: Vec<PodEndpoint>) -> Slice {
        Slice {
            name: name.to_string(),
            service: service.to_string(),
            ports: vec![("redis".to_string(), port)],
            endpoints,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resource {
    Slices,
    Endpoints,
}

impl Resource {
    fn kind(self) -> &'static str {
        match self {
            Resource::Slices => "EndpointSlice",
            Resource::Endpoints => "Endpoints",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Resource::Slices => "discovery.k8s.io/v1",
            Resource::Endpoints => "v1",
        }
    }
}

/// Something a watcher may be sent.
#[derive(Debug, Clone)]
enum What {
    /// ADDED, MODIFIED or DELETED of one object (its JSON).
    Object {
        kind: &'static str,
        resource: Resource,
        ns: String,
        /// The service the object belongs to (label of a slice, name of an Endpoints).
        service: String,
        json: String,
    },
    Bookmark,
    Expired,
}

#[derive(Debug, Clone)]
struct Event {
    rv: u64,
    what: What,
}

#[derive(Default)]
struct State {
    rv: u64,
    slices: BTreeMap<(String, String), (u64, Slice)>,
    /// Which Endpoints objects exist, by (namespace, service).
    endpoints: BTreeMap<(String, String), u64>,
    events: Vec<Event>,
    /// A watch from a resourceVersion below this gets 410 Expired.
    compacted: u64,
    /// Bumped by `stop`: connections of an older generation close.
    generation: u64,
    slices_served: bool,
    endpoints_served: bool,
    forbidden: bool,
    /// What RBAC grants the service account: (resource, verb) pairs; `None`, everything.
    grants: Option<Vec<(&'static str, &'static str)>>,
    /// Until then every request is refused with 403, as a real API server does for a few seconds
    /// after a restart, while its authorizer's caches fill.
    warming_until: Option<Instant>,
    watch_limit: Option<Duration>,
    requests: Vec<String>,
    /// The `User-Agent` of every request.
    user_agents: Vec<String>,
}

struct Inner {
    state: Mutex<State>,
    changed: Condvar,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The fake API server; stopped on drop.
pub struct KubeApi {
    inner: Arc<Inner>,
    port: u16,
    acceptor: Option<JoinHandle<()>>,
}

impl KubeApi {
    /// Starts serving on a free port of 127.0.0.1.
    pub fn start() -> KubeApi {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake API server");
        let port = listener.local_addr().expect("local address").port();
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                rv: 100,
                slices_served: true,
                endpoints_served: true,
                ..State::default()
            }),
            changed: Condvar::new(),
        });
        let mut api = KubeApi {
            inner,
            port,
            acceptor: None,
        };
        api.serve(listener);
        api
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Writes a kubeconfig pointing at this server into `dir`; run slotline with KUBECONFIG set to it.
    pub fn write_kubeconfig(&self, dir: &TempDir) -> PathBuf {
        dir.write(
            "kubeconfig",
            &format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
                 contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
                 current-context: fake\nusers:\n- name: fake\n  user:\n    token: not-a-secret\n",
                self.url()
            ),
        )
    }

    fn serve(&mut self, listener: TcpListener) {
        let inner = self.inner.clone();
        let generation = inner.lock().generation;
        self.acceptor = Some(thread::spawn(move || {
            for conn in listener.incoming() {
                if inner.lock().generation != generation {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let inner = inner.clone();
                thread::spawn(move || handle(&inner, conn, generation));
            }
        }));
    }

    /// "API server down": closes the listener and every open connection; connections are refused
    /// until `restart`. Objects and resourceVersions are kept, as etcd keeps them.
    pub fn stop(&mut self) {
        let Some(acceptor) = self.acceptor.take() else {
            return;
        };
        self.inner.lock().generation += 1;
        self.inner.changed.notify_all();
        // Wake the blocking accept so that it sees the new generation and drops the listener.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        let _ = acceptor.join();
    }

    /// "API server back": serves again on the same port.
    pub fn restart(&mut self) {
        if self.acceptor.is_some() {
            return;
        }
        let end = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(e) if Instant::now() < end => {
                    let _ = e;
                    thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!(
                    "cannot bind the fake API server again on {}: {e}",
                    self.port
                ),
            }
        };
        self.serve(listener);
    }

    /// Creates or replaces a slice (ADDED or MODIFIED), and the service's Endpoints with it.
    pub fn apply_slice(&self, ns: &str, slice: &Slice) {
        let mut state = self.inner.lock();
        state.rv += 1;
        let rv = state.rv;
        let key = (ns.to_string(), slice.name.clone());
        let kind = if state.slices.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        state.slices.insert(key, (rv, slice.clone()));
        state.events.push(Event {
            rv,
            what: What::Object {
                kind,
                resource: Resource::Slices,
                ns: ns.to_string(),
                service: slice.service.clone(),
                json: slice_json(ns, rv, slice),
            },
        });
        endpoints_changed(&mut state, ns, &slice.service);
        drop(state);
        self.inner.changed.notify_all();
    }

    /// Deletes a slice (DELETED).
    pub fn delete_slice(&self, ns: &str, name: &str) {
        let mut state = self.inner.lock();
        let Some((_, slice)) = state.slices.remove(&(ns.to_string(), name.to_string())) else {
            return;
        };
        state.rv += 1;
        let rv = state.rv;
        state.events.push(Event {
            rv,
            what: What::Object {
                kind: "DELETED",
                resource: Resource::Slices,
                ns: ns.to_string(),
                service: slice.service.clone(),
                json: slice_json(ns, rv, &slice),
            },
        });
        endpoints_changed(&mut state, ns, &slice.service);
        drop(state);
        self.inner.changed.notify_all();
    }

    /// Sends a BOOKMARK at the current resourceVersion to every open watch.
    pub fn bookmark(&self) {
        self.push_control(What::Bookmark);
    }

    /// Compacts history: every open watch gets ERROR 410 Expired and is closed, and a watch from any
    /// resourceVersion seen so far gets the same, so that clients must list again.
    pub fn expire(&self) {
        let mut state = self.inner.lock();
        // A list from now on answers a newer resourceVersion than any a client holds.
        state.rv += 1;
        state.compacted = state.rv;
        drop(state);
        self.push_control(What::Expired);
    }

    fn push_control(&self, what: What) {
        let mut state = self.inner.lock();
        let rv = state.rv;
        state.events.push(Event { rv, what });
        drop(state);
        self.inner.changed.notify_all();
    }

    /// Whether discovery.k8s.io/v1 EndpointSlices are served; when not, their paths answer 404.
    pub fn set_slices_served(&self, served: bool) {
        self.inner.lock().slices_served = served;
    }

    /// Whether core/v1 Endpoints are served; when not, their paths answer 404 (a server with neither).
    pub fn set_endpoints_served(&self, served: bool) {
        self.inner.lock().endpoints_served = served;
    }

    /// Whether every request is refused with 403 Forbidden (the service account lacks RBAC).
    pub fn set_forbidden(&self, forbidden: bool) {
        self.inner.lock().forbidden = forbidden;
    }

    /// RBAC grants only these (resource, verb) pairs, resources as `endpointslices` or `endpoints`,
    /// verbs `get`, `list`, `watch`; anything else is refused with the 403 Status a real API server
    /// writes. API discovery and SelfSubjectAccessReview stay open, as for every signed-in user.
    pub fn grant_only(&self, grants: &[(&'static str, &'static str)]) {
        self.inner.lock().grants = Some(grants.to_vec());
    }

    /// Grants everything again.
    pub fn grant_all(&self) {
        self.inner.lock().grants = None;
    }

    /// "API server back, authorizer still warming up": serves again, but refuses every request with
    /// 403 for `warming`.
    pub fn restart_warming(&mut self, warming: Duration) {
        self.inner.lock().warming_until = Some(Instant::now() + warming);
        self.restart();
    }

    /// The `User-Agent` header of every request so far.
    pub fn user_agents(&self) -> Vec<String> {
        self.inner.lock().user_agents.clone()
    }

    /// Closes watches after at most `limit`, whatever timeoutSeconds they asked for.
    pub fn set_watch_limit(&self, limit: Option<Duration>) {
        self.inner.lock().watch_limit = limit;
    }

    /// Every request so far, as `GET /path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.inner.lock().requests.clone()
    }

    /// How many list (not watch) requests of EndpointSlices (`slices`) or Endpoints were made.
    pub fn lists(&self, slices: bool) -> usize {
        let path = if slices {
            "/endpointslices"
        } else {
            "/endpoints?"
        };
        self.requests()
            .iter()
            .filter(|r| r.contains(path) && !r.contains("watch=true"))
            .count()
    }

    /// How many watch requests are open or were made.
    pub fn watches(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.contains("watch=true"))
            .count()
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Publishes the Endpoints object of `service` after one of its slices changed.
fn endpoints_changed(state: &mut State, ns: &str, service: &str) {
    let slices: Vec<Slice> = state
        .slices
        .iter()
        .filter(|((n, _), (_, s))| n == ns && s.service == service)
        .map(|(_, (_, s))| s.clone())
        .collect();
    let key = (ns.to_string(), service.to_string());
    state.rv += 1;
    let rv = state.rv;
    let kind = match (state.endpoints.contains_key(&key), slices.is_empty()) {
        (true, true) => "DELETED",
        (true, false) => "MODIFIED",
        (false, _) => "ADDED",
    };
    if slices.is_empty() {
        state.endpoints.remove(&key);
    } else {
        state.endpoints.insert(key, rv);
    }
    state.events.push(Event {
        rv,
        what: What::Object {
            kind,
            resource: Resource::Endpoints,
            ns: ns.to_string(),
            service: service.to_string(),
            json: endpoints_json(ns, service, rv, &slices),
        },
    });
}

/// A JSON string literal.
fn q(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn target_ref(ns: &str, pod: &Option<String>) -> String {
    match pod {
        Some(pod) => format!(
            ",\"targetRef\":{{\"kind\":\"Pod\",\"namespace\":{},\"name\":{}}}",
            q(ns),
            q(pod)
        ),
        None => String::new(),
    }
}

fn slice_json(ns: &str, rv: u64, slice: &Slice) -> String {
    let endpoints: Vec<String> = slice
        .endpoints
        .iter()
        .map(|e| {
            let mut conditions = Vec::new();
            if let Some(ready) = e.ready {
                conditions.push(format!("\"ready\":{ready}"));
            }
            conditions.push(format!(
                "\"serving\":{}",
                e.ready.unwrap_or(true) || e.terminating
            ));
            conditions.push(format!("\"terminating\":{}", e.terminating));
            let mut hostname = e
                .hostname
                .as_ref()
                .map_or(String::new(), |h| format!(",\"hostname\":{}", q(h)));
            if let Some(zone) = &e.zone {
                hostname.push_str(&format!(",\"zone\":{}", q(zone)));
            }
            format!(
                "{{\"addresses\":[{}],\"conditions\":{{{}}}{hostname}{}}}",
                q(&e.ip),
                conditions.join(","),
                target_ref(ns, &e.pod)
            )
        })
        .collect();
    format!(
        "{{\"apiVersion\":\"discovery.k8s.io/v1\",\"kind\":\"EndpointSlice\",\"metadata\":{{\"name\":{},\
         \"namespace\":{},\"resourceVersion\":\"{rv}\",\"labels\":{{{}:{}}}}},\"addressType\":\"IPv4\",\
         \"endpoints\":[{}],\"ports\":[{}]}}",
        q(&slice.name),
        q(ns),
        q(SERVICE_LABEL),
        q(&slice.service),
        endpoints.join(","),
        ports_json(&slice.ports)
    )
}

fn ports_json(ports: &[(String, u16)]) -> String {
    ports
        .iter()
        .map(|(name, port)| {
            format!(
                "{{\"name\":{},\"port\":{port},\"protocol\":\"TCP\"}}",
                q(name)
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The core/v1 Endpoints the endpoints controller would write for these slices: one subset per slice,
/// ready addresses apart from the others (Endpoints have no "terminating").
fn endpoints_json(ns: &str, service: &str, rv: u64, slices: &[Slice]) -> String {
    let address = |e: &PodEndpoint| {
        let hostname = e
            .hostname
            .as_ref()
            .map_or(String::new(), |h| format!(",\"hostname\":{}", q(h)));
        format!(
            "{{\"ip\":{}{hostname}{}}}",
            q(&e.ip),
            target_ref(ns, &e.pod)
        )
    };
    let subsets: Vec<String> = slices
        .iter()
        .map(|s| {
            let ready: Vec<String> = s
                .endpoints
                .iter()
                .filter(|e| e.ready.unwrap_or(true) && !e.terminating)
                .map(address)
                .collect();
            let not_ready: Vec<String> = s
                .endpoints
                .iter()
                .filter(|e| !e.ready.unwrap_or(true) || e.terminating)
                .map(address)
                .collect();
            format!(
                "{{\"addresses\":[{}],\"notReadyAddresses\":[{}],\"ports\":[{}]}}",
                ready.join(","),
                not_ready.join(","),
                ports_json(&s.ports)
            )
        })
        .collect();
    format!(
        "{{\"apiVersion\":\"v1\",\"kind\":\"Endpoints\",\"metadata\":{{\"name\":{},\"namespace\":{},\
         \"resourceVersion\":\"{rv}\"}},\"subsets\":[{}]}}",
        q(service),
        q(ns),
        subsets.join(",")
    )
}

fn status_json(code: u16, reason: &str, message: &str) -> String {
    format!(
        "{{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{{}},\"status\":\"Failure\",\
         \"message\":{},\"reason\":{},\"code\":{code}}}",
        q(message),
        q(reason)
    )
}

/// The service account the fake server says it refused.
pub const IDENTITY: &str = "system:serviceaccount:slotline:slotline";

/// The 403 a real API server answers when RBAC denies `verb` on `resource` in `ns`.
fn forbidden_json(resource: Resource, verb: &str, ns: &str) -> String {
    let (name, group) = match resource {
        Resource::Slices => ("endpointslices", "discovery.k8s.io"),
        Resource::Endpoints => ("endpoints", ""),
    };
    let full = if group.is_empty() {
        name.to_string()
    } else {
        format!("{name}.{group}")
    };
    format!(
        "{{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{{}},\"status\":\"Failure\",\
         \"message\":{},\"reason\":\"Forbidden\",\"details\":{{\"group\":{},\"kind\":{}}},\"code\":403}}",
        q(&format!(
            "{full} is forbidden: User \"{IDENTITY}\" cannot {verb} resource \"{name}\" in API group \"{group}\" in the namespace \"{ns}\""
        )),
        q(group),
        q(name)
    )
}

fn resource_name(resource: Resource) -> &'static str {
    match resource {
        Resource::Slices => "endpointslices",
        Resource::Endpoints => "endpoints",
    }
}

/// A parsed request target.
struct Target {
    resource: Resource,
    ns: String,
    query: BTreeMap<String, String>,
}

fn parse_target(target: &str) -> Option<Target> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (resource, ns) = match parts.as_slice() {
        ["apis", "discovery.k8s.io", "v1", "namespaces", ns, "endpointslices"] => {
            (Resource::Slices, ns)
        }
        ["api", "v1", "namespaces", ns, "endpoints"] => (Resource::Endpoints, ns),
        _ => return None,
    };
    let query = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect();
    Some(Target {
        resource,
        ns: ns.to_string(),
        query,
    })
}

/// application/x-www-form-urlencoded decoding.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Which service a request selects, if it names one.
fn selected_service(target: &Target) -> Option<String> {
    match target.resource {
        Resource::Slices => target
            .query
            .get("labelSelector")
            .and_then(|s| s.strip_prefix(&format!("{SERVICE_LABEL}=")))
            .map(str::to_string),
        Resource::Endpoints => target
            .query
            .get("fieldSelector")
            .and_then(|s| s.strip_prefix("metadata.name="))
            .map(str::to_string),
    }
}

fn respond(conn: &mut TcpStream, code: u16, reason: &str, body: &str) {
    let _ = write!(
        conn,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
}

fn handle(inner: &Inner, mut conn: TcpStream, generation: u64) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 64 * 1024 {
            return;
        }
    }
    let end = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(head.len(), |i| i + 4);
    let mut body = head.split_off(end);
    let head = String::from_utf8_lossy(&head).into_owned();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while body.len() < length {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    let line = head.lines().next().unwrap_or("");
    let mut words = line.split(' ');
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (forbidden, slices_served, endpoints_served, grants, warming) = {
        let mut state = inner.lock();
        if state.generation != generation {
            return;
        }
        state.requests.push(format!("{method} {target}"));
        state
            .user_agents
            .push(header("user-agent").unwrap_or_default());
        let warming = state.warming_until.is_some_and(|t| Instant::now() < t);
        (
            state.forbidden,
            state.slices_served,
            state.endpoints_served,
            state.grants.clone(),
            warming,
        )
    };
    if warming {
        let body = status_json(
            403,
            "Forbidden",
            &format!("forbidden: User \"{IDENTITY}\" cannot get path \"{target}\""),
        );
        return respond(&mut conn, 403, "Forbidden", &body);
    }
    // API discovery, readable by every signed-in user.
    let path = target.split('?').next().unwrap_or(target);
    if method == "GET" && (path == "/apis/discovery.k8s.io/v1" || path == "/api/v1") {
        let slices = path.starts_with("/apis");
        if (slices && !slices_served) || (!slices && !endpoints_served) {
            let body = status_json(
                404,
                "NotFound",
                "the server could not find the requested resource",
            );
            return respond(&mut conn, 404, "Not Found", &body);
        }
        let (group_version, name, kind) = match slices {
            true => ("discovery.k8s.io/v1", "endpointslices", "EndpointSlice"),
            false => ("v1", "endpoints", "Endpoints"),
        };
        let body = format!(
            "{{\"kind\":\"APIResourceList\",\"apiVersion\":\"v1\",\"groupVersion\":\"{group_version}\",\
             \"resources\":[{{\"name\":\"{name}\",\"singularName\":\"\",\"namespaced\":true,\"kind\":\"{kind}\",\
             \"verbs\":[\"create\",\"delete\",\"get\",\"list\",\"patch\",\"update\",\"watch\"]}}]}}"
        );
        return respond(&mut conn, 200, "OK", &body);
    }
    if method == "POST" && path == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews" {
        return access_review(&mut conn, &body, forbidden, grants.as_deref());
    }
    let Some(target) = parse_target(target).filter(|_| method == "GET") else {
        let body = status_json(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
        return respond(&mut conn, 404, "Not Found", &body);
    };
    let verb = if target.query.get("watch").map(String::as_str) == Some("true") {
        "watch"
    } else {
        "list"
    };
    let granted = grants
        .as_ref()
        .is_none_or(|g| g.contains(&(resource_name(target.resource), verb)));
    if forbidden || !granted {
        {
            let body = forbidden_json(target.resource, verb, &target.ns);
            return respond(&mut conn, 403, "Forbidden", &body);
        }
    }
    let served = match target.resource {
        Resource::Slices => slices_served,
        Resource::Endpoints => endpoints_served,
    };
    if !served {
        let body = status_json(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
        return respond(&mut conn, 404, "Not Found", &body);
    }
    if target.query.get("watch").map(String::as_str) == Some("true") {
        watch(inner, conn, generation, &target);
    } else {
        list(inner, &mut conn, &target);
    }
}

/// A SelfSubjectAccessReview: allowed when the grants hold the verb on the resource.
fn access_review(
    conn: &mut TcpStream,
    body: &[u8],
    forbidden: bool,
    grants: Option<&[(&'static str, &'static str)]>,
) {
    let review: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let attrs = &review["spec"]["resourceAttributes"];
    let (verb, resource) = (
        attrs["verb"].as_str().unwrap_or(""),
        attrs["resource"].as_str().unwrap_or(""),
    );
    let allowed =
        !forbidden && grants.is_none_or(|g| g.iter().any(|&(r, v)| r == resource && v == verb));
    let answer = format!(
        "{{\"kind\":\"SelfSubjectAccessReview\",\"apiVersion\":\"authorization.k8s.io/v1\",\
         \"metadata\":{{}},\"spec\":{{\"resourceAttributes\":{attrs}}},\"status\":{{\"allowed\":{allowed}}}}}"
    );
    respond(conn, 201, "Created", &answer);
}

fn matches(what: &What, target: &Target, service: &Option<String>) -> bool {
    match what {
        What::Object {
            resource,
            ns,
            service: s,
            ..
        } => {
            *resource == target.resource
                && *ns == target.ns
                && service.as_ref().is_none_or(|want| want == s)
        }
        What::Bookmark | What::Expired => true,
    }
}

fn list(inner: &Inner, conn: &mut TcpStream, target: &Target) {
    let service = selected_service(target);
    let state = inner.lock();
    let items: Vec<String> = match target.resource {
        Resource::Slices => state
            .slices
            .iter()
            .filter(|((ns, _), (_, s))| {
                *ns == target.ns && service.as_ref().is_none_or(|want| *want == s.service)
            })
            .map(|((ns, _), (rv, s))| slice_json(ns, *rv, s))
            .collect(),
        Resource::Endpoints => state
            .endpoints
            .iter()
            .filter(|((ns, svc), _)| {
                *ns == target.ns && service.as_ref().is_none_or(|want| want == svc)
            })
            .map(|((ns, svc), rv)| {
                let slices: Vec<Slice> = state
                    .slices
                    .iter()
                    .filter(|((n, _), (_, s))| n == ns && s.service == *svc)
                    .map(|(_, (_, s))| s.clone())
                    .collect();
                endpoints_json(ns, svc, *rv, &slices)
            })
            .collect(),
    };
    let body = format!(
        "{{\"kind\":\"{}List\",\"apiVersion\":\"{}\",\"metadata\":{{\"resourceVersion\":\"{}\"}},\"items\":[{}]}}",
        target.resource.kind(),
        target.resource.api_version(),
        state.rv,
        items.join(",")
    );
    drop(state);
    respond(conn, 200, "OK", &body);
}

fn chunk(conn: &mut TcpStream, line: &str) -> bool {
    let data = format!("{line}\n");
    conn.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes())
        .is_ok()
}

fn watch(inner: &Inner, mut conn: TcpStream, generation: u64, target: &Target) {
    let service = selected_service(target);
    let from: u64 = target
        .query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = target
        .query
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let (start_len, mut next, expired, limit) = {
        let state = inner.lock();
        let expired = from != 0 && from < state.compacted;
        // History replay: object events after `from`; control events only from now on.
        let next = state
            .events
            .iter()
            .position(|e| e.rv > from && matches!(e.what, What::Object { .. }))
            .unwrap_or(state.events.len());
        (state.events.len(), next, expired, state.watch_limit)
    };
    let deadline = Instant::now() + limit.map_or(timeout, |l| l.min(timeout));
    if conn
        .write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
              Connection: close\r\n\r\n",
        )
        .is_err()
    {
        return;
    }
    let expired_line = || {
        format!(
            "{{\"type\":\"ERROR\",\"object\":{}}}",
            status_json(410, "Expired", &format!("too old resource version: {from}"))
        )
    };
    if expired {
        chunk(&mut conn, &expired_line());
        let _ = conn.write_all(b"0\r\n\r\n");
        return;
    }
    loop {
        let mut lines = Vec::new();
        let mut close = false;
        {
            let mut state = inner.lock();
            loop {
                if state.generation != generation {
                    // The server went down: the connection just breaks.
                    drop(state);
                    let _ = conn.shutdown(Shutdown::Both);
                    return;
                }
                if next < state.events.len() || Instant::now() >= deadline {
                    break;
                }
                let wait = deadline
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(200));
                state = inner
                    .changed
                    .wait_timeout(state, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            for (i, event) in state.events.iter().enumerate().skip(next) {
                let control = !matches!(event.what, What::Object { .. });
                if (control && i < start_len) || !matches(&event.what, target, &service) {
                    continue;
                }
                match &event.what {
                    What::Object { kind, json, .. } => {
                        lines.push(format!("{{\"type\":\"{kind}\",\"object\":{json}}}"))
                    }
                    What::Bookmark => lines.push(format!(
                        "{{\"type\":\"BOOKMARK\",\"object\":{{\"kind\":\"{}\",\"apiVersion\":\"{}\",\
                         \"metadata\":{{\"resourceVersion\":\"{}\"}}}}}}",
                        target.resource.kind(),
                        target.resource.api_version(),
                        event.rv
                    )),
                    What::Expired => {
                        lines.push(expired_line());
                        close = true;
                        break;
                    }
                }
            }
            next = state.events.len();
        }
        for line in &lines {
            if !chunk(&mut conn, line) {
                return;
            }
        }
        if close || Instant::now() >= deadline {
            let _ = conn.write_all(b"0\r\n\r\n");
            return;
        }
    }
}
