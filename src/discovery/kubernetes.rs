//! The Kubernetes source: a Service's EndpointSlices (discovery.k8s.io/v1), or its core/v1 Endpoints
//! when the API server does not serve EndpointSlices or the config asks for them, followed with kube-rs's
//! watcher (list, then watch from the list's resourceVersion, relist on 410 Expired).
//!
//! Which API to follow is decided from API discovery (`/apis/discovery.k8s.io/v1`, readable by every
//! signed-in user), and the permissions it needs are asked for once at start (SelfSubjectAccessReview),
//! so that a missing Role rule is named before anything fails. Credentials come from KUBECONFIG (or
//! ~/.kube/config), else the pod's service account; requests say `User-Agent: slotline/VERSION`.
//!
//! While the API cannot be reached or refuses, the pool keeps its last known backends and this task
//! retries with backoff; the state is in [`Status`], each change of it is logged once, and every reason
//! is built from the API's own Status (verb, resource, namespace, identity refused). A 403 or 5xx within
//! [`WARMING`] of the API server coming back is its authorizer warming up: retried at the shortest
//! backoff and reported as such; a permission problem only if it persists.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::time::sleep;

use super::endpoints::{from_endpoints, from_slices};
use super::{Endpoint, EndpointSet, Status};
use crate::config::{EndpointsApi, KubernetesConfig};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const READ_TIMEOUT: Duration = Duration::from_secs(300);
const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A watch open this long after a failure, with no new one, shows the API server answering again.
const ANSWERING_AFTER: Duration = Duration::from_secs(1);
/// How long after the API server came back a 403 or 5xx is taken for it warming up.
pub(super) const WARMING: Duration = Duration::from_secs(10);
/// At most this many backends are named in the log line of a change.
const LOGGED_ENDPOINTS: usize = 16;

/// Following one API stopped: the pool is gone.
struct Closed;

pub(super) async fn run(
    config: KubernetesConfig,
    tx: watch::Sender<EndpointSet>,
    status: Arc<Status>,
) {
    let mut backoff = MIN_BACKOFF;
    let client = loop {
        match client().await {
            Ok(client) => break client,
            Err(e) => {
                status.failed(
                    "no Kubernetes client configuration (KUBECONFIG or in-cluster)",
                    &e,
                );
                tokio::select! {
                    _ = sleep(backoff) => {}
                    _ = tx.closed() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    };
    let namespace = config
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let mut health = ApiHealth::default();
    let Some(api) = choose_api(&client, &config, &status, &tx, &mut health).await else {
        return;
    };
    let pool = status.snapshot().pool;
    for missing in missing_access(&client, &namespace, api).await {
        tracing::warn!(%pool, %namespace, "{missing}");
    }
    let follow = Follow {
        config: &config,
        namespace: &namespace,
        tx: &tx,
        status: &status,
        health,
    };
    let _closed: Closed = match api {
        EndpointsApi::Endpointslices => {
            let selector = slice_selector(&config.service);
            follow
                .run(
                    Api::<EndpointSlice>::namespaced(client.clone(), &namespace),
                    watcher::Config::default().labels(&selector),
                    |objects| from_slices(objects, &config),
                )
                .await
        }
        EndpointsApi::Endpoints => {
            let selector = endpoints_selector(&config.service);
            follow
                .run(
                    Api::<Endpoints>::namespaced(client.clone(), &namespace),
                    watcher::Config::default().fields(&selector),
                    |objects| from_endpoints(objects, &config),
                )
                .await
        }
    };
}

/// The API to follow: the config's, else EndpointSlices if API discovery lists them in
/// discovery.k8s.io/v1, else core/v1 Endpoints. None when the pool is gone first.
async fn choose_api(
    client: &Client,
    config: &KubernetesConfig,
    status: &Status,
    tx: &watch::Sender<EndpointSet>,
    health: &mut ApiHealth,
) -> Option<EndpointsApi> {
    if let Some(api) = config.api {
        return Some(api);
    }
    let mut backoff = MIN_BACKOFF;
    loop {
        match discover_api(client).await {
            Ok(EndpointsApi::Endpointslices) => return Some(EndpointsApi::Endpointslices),
            Ok(EndpointsApi::Endpoints) => {
                tracing::info!(pool = %status.snapshot().pool, service = %config.service,
                    "the API server does not serve discovery.k8s.io/v1 EndpointSlices; following core/v1 Endpoints");
                return Some(EndpointsApi::Endpoints);
            }
            Err(e) => {
                let (reason, message) = health.describe(&e, "API discovery");
                status.failed(&reason, &message);
                tracing::debug!(error = ?e, "API discovery failed");
                let wait = health.backoff(&mut backoff);
                tokio::select! {
                    _ = sleep(wait) => {}
                    _ = tx.closed() => return None,
                }
            }
        }
    }
}

/// Asks API discovery whether the API server serves discovery.k8s.io/v1 EndpointSlices: them if it
/// does, else core/v1 Endpoints.
async fn discover_api(client: &Client) -> Result<EndpointsApi, kube::Error> {
    match client.list_api_group_resources("discovery.k8s.io/v1").await {
        Ok(list) if list.resources.iter().any(|r| r.name == "endpointslices") => {
            Ok(EndpointsApi::Endpointslices)
        }
        Ok(_) => Ok(EndpointsApi::Endpoints),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(EndpointsApi::Endpoints),
        Err(e) => Err(e),
    }
}

/// What names the Service's objects: a label selector on EndpointSlices, a field selector on its
/// Endpoints (which carry the Service's name).
fn slice_selector(service: &str) -> String {
    format!("kubernetes.io/service-name={service}")
}

fn endpoints_selector(service: &str) -> String {
    format!("metadata.name={service}")
}

/// The Role rule the chosen API needs, as (API group, resource).
fn resource_of(api: EndpointsApi) -> (&'static str, &'static str) {
    match api {
        EndpointsApi::Endpointslices => ("discovery.k8s.io", "endpointslices"),
        EndpointsApi::Endpoints => ("", "endpoints"),
    }
}

/// Asks the API server whether slotline may list and watch what it is about to follow
/// (SelfSubjectAccessReview): one line per missing permission, naming the Role rule that would grant
/// it. An API server that cannot answer is no verdict.
async fn missing_access(client: &Client, namespace: &str, api: EndpointsApi) -> Vec<String> {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    let (group, resource) = resource_of(api);
    let reviews = Api::<SelfSubjectAccessReview>::all(client.clone());
    let mut missing = Vec::new();
    for verb in ["list", "watch"] {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(namespace.to_string()),
                    verb: Some(verb.to_string()),
                    group: Some(group.to_string()),
                    resource: Some(resource.to_string()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        match reviews
            .create(&kube::api::PostParams::default(), &review)
            .await
        {
            Ok(answer) if answer.status.as_ref().is_some_and(|s| s.allowed) => {}
            Ok(_) => missing.push(format!(
                "missing permission: {verb} {resource} in namespace {namespace}; grant it with a Role in {namespace} \
                 (rule: apiGroups [\"{group}\"], resources [\"{resource}\"], verbs [\"list\", \"watch\"]) bound to slotline's service account"
            )),
            Err(e) => tracing::debug!(error = %e, "cannot ask the API server what slotline may do"),
        }
    }
    missing
}

/// What `slotline check` finds of a Kubernetes source, in the words the running proxy would use: a
/// line saying what would be followed and how many endpoints are ready, or the problems that keep
/// the pool from its backends. Without a client configuration there is nothing to ask: a note.
pub(super) async fn check(config: &KubernetesConfig) -> Result<String, Vec<String>> {
    let client = match client().await {
        Ok(client) => client,
        Err(_) => {
            return Ok(
                "not asked: no Kubernetes client configuration here (KUBECONFIG or in-cluster)"
                    .into(),
            )
        }
    };
    let namespace = config
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let mut health = ApiHealth::default();
    let api = match config.api {
        Some(api) => api,
        None => match discover_api(&client).await {
            Ok(api) => api,
            Err(e) => return Err(vec![health.describe(&e, "API discovery").0]),
        },
    };
    let missing = missing_access(&client, &namespace, api).await;
    if !missing.is_empty() {
        return Err(missing);
    }
    let (_, resource) = resource_of(api);
    let listed = match api {
        EndpointsApi::Endpointslices => {
            let selector = slice_selector(&config.service);
            Api::<EndpointSlice>::namespaced(client, &namespace)
                .list(&kube::api::ListParams::default().labels(&selector))
                .await
                .map(|list| from_slices(&list.items, config).len())
        }
        EndpointsApi::Endpoints => {
            let selector = endpoints_selector(&config.service);
            Api::<Endpoints>::namespaced(client, &namespace)
                .list(&kube::api::ListParams::default().fields(&selector))
                .await
                .map(|list| from_endpoints(&list.items, config).len())
        }
    };
    let service = &config.service;
    match listed {
        Err(e) => Err(vec![health.describe(&e, "list").0]),
        Ok(0) => Err(vec![format!(
            "kubernetes service {service} in namespace {namespace} lists no ready endpoints ({resource})"
        )]),
        Ok(ready) => Ok(format!(
            "kubernetes service {service} in namespace {namespace}: {ready} ready endpoint(s), followed through {resource}"
        )),
    }
}

/// What the API server has been doing lately: when it came back after being unreachable, a 403 or 5xx
/// is its authorizer warming up, not a missing permission.
#[derive(Default)]
struct ApiHealth {
    /// When the API server answered first after being unreachable.
    back_at: Option<tokio::time::Instant>,
    was_unreachable: bool,
}

impl ApiHealth {
    /// The reason for a failure (what the state and the log say, compared to tell news from a retry),
    /// and the API's own message. Built from the API's Status: the verb, resource, namespace and
    /// identity it refused are in its message.
    fn describe(&mut self, e: &kube::Error, what: &str) -> (String, String) {
        let now = tokio::time::Instant::now();
        match e {
            kube::Error::Api(s) => {
                if self.was_unreachable {
                    self.was_unreachable = false;
                    self.back_at = Some(now);
                }
                let warming = self
                    .back_at
                    .is_some_and(|back| now.saturating_duration_since(back) < WARMING);
                let message = if s.message.is_empty() {
                    s.reason.clone()
                } else {
                    s.message.clone()
                };
                let reason = match s.code {
                    403 | 500..=599 if warming => format!(
                        "API server warming up (it answered {} right after coming back)",
                        s.code
                    ),
                    401 => format!("unauthorized (401): {message}"),
                    403 => format!("forbidden (403): {message}"),
                    404 => format!("not found (404): {message}"),
                    code => format!("API error {code}: {message}"),
                };
                (reason, message)
            }
            other => {
                self.was_unreachable = true;
                let message = other.to_string();
                let message = message.lines().next().unwrap_or_default().to_string();
                (format!("API server unreachable ({what})"), message)
            }
        }
    }

    /// How long to wait before the next try: the shortest backoff while the API server warms up,
    /// else `backoff`, which doubles.
    fn backoff(&self, backoff: &mut Duration) -> Duration {
        let warming = self.back_at.is_some_and(|back| back.elapsed() < WARMING);
        if warming {
            return MIN_BACKOFF;
        }
        let wait = *backoff;
        *backoff = (*backoff * 2).min(MAX_BACKOFF);
        wait
    }
}

struct Follow<'a> {
    config: &'a KubernetesConfig,
    namespace: &'a str,
    tx: &'a watch::Sender<EndpointSet>,
    status: &'a Status,
    health: ApiHealth,
}

impl Follow<'_> {
    /// Follows the objects `api` and `selector` name, handing each changed endpoint set to the pool.
    async fn run<K>(
        mut self,
        api: Api<K>,
        selector: watcher::Config,
        convert: impl Fn(&mut dyn Iterator<Item = &K>) -> Vec<Endpoint>,
    ) -> Closed
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    {
        let mut stream = std::pin::pin!(watcher(api, selector));
        // Objects by name; during a (re)list the new ones gather apart and replace these at InitDone.
        let mut objects: BTreeMap<String, K> = BTreeMap::new();
        let mut listing: Option<BTreeMap<String, K>> = None;
        let mut backoff = MIN_BACKOFF;
        // After a failure, a watch that stays open this long without one is the API answering again
        // (a watch with nothing to report sends nothing).
        let mut answering_by: Option<tokio::time::Instant> = None;
        loop {
            let quiet = async {
                match answering_by {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let item = tokio::select! {
                item = stream.next() => item,
                _ = quiet => {
                    answering_by = None;
                    self.status.ok();
                    continue;
                }
                _ = self.tx.closed() => return Closed,
            };
            let Some(item) = item else {
                return Closed; // the watcher never ends on its own
            };
            let changed = match item {
                Ok(event) => {
                    // Init comes before the list is even asked for: only what the API server sent
                    // shows it answering.
                    if !matches!(event, Event::Init) {
                        backoff = MIN_BACKOFF;
                        answering_by = None;
                        self.status.ok();
                    }
                    match event {
                        Event::Init => {
                            listing = Some(BTreeMap::new());
                            false
                        }
                        Event::InitApply(o) => {
                            listing
                                .get_or_insert_with(BTreeMap::new)
                                .insert(o.name_any(), o);
                            false
                        }
                        Event::InitDone => {
                            objects = listing.take().unwrap_or_default();
                            true
                        }
                        Event::Apply(o) => {
                            objects.insert(o.name_any(), o);
                            true
                        }
                        Event::Delete(o) => objects.remove(&o.name_any()).is_some(),
                    }
                }
                Err(e) => {
                    if let watcher::Error::WatchError(s) = &e {
                        // History compacted (410 Expired): the watcher lists again at once, as it
                        // should.
                        if s.code == 410 {
                            tracing::debug!(pool = %self.status.snapshot().pool, "watch expired (410); listing again");
                            continue;
                        }
                    }
                    let (reason, message) = match &e {
                        watcher::Error::InitialListFailed(e)
                        | watcher::Error::WatchStartFailed(e)
                        | watcher::Error::WatchFailed(e) => {
                            self.health.describe(e, "list and watch")
                        }
                        watcher::Error::WatchError(s) => (
                            format!("watch error {}: {}", s.code, s.message),
                            s.message.clone(),
                        ),
                        other => (format!("watch failed: {other}"), other.to_string()),
                    };
                    tracing::debug!(pool = %self.status.snapshot().pool, error = ?e, "discovery request failed");
                    self.status.failed(&reason, &message);
                    let wait = self.health.backoff(&mut backoff);
                    tokio::select! {
                        _ = sleep(wait) => {}
                        _ = self.tx.closed() => return Closed,
                    }
                    answering_by = Some(tokio::time::Instant::now() + ANSWERING_AFTER);
                    false
                }
            };
            if changed && self.publish(convert(&mut objects.values())) {
                return Closed;
            }
        }
    }

    /// Hands a changed set to the pool. Returns true when the pool is gone.
    fn publish(&self, endpoints: Vec<Endpoint>) -> bool {
        let unchanged = self
            .tx
            .borrow()
            .as_deref()
            .is_some_and(|current| *current == *endpoints);
        if unchanged {
            return false;
        }
        let pool = self.status.snapshot().pool;
        if endpoints.is_empty() {
            tracing::warn!(%pool, service = %self.config.service, namespace = %self.namespace,
                "the service lists no ready endpoints; requests fail until one is ready");
        } else {
            let listed: Vec<String> = endpoints
                .iter()
                .take(LOGGED_ENDPOINTS)
                .map(|e| format!("{}={}", e.name, e.addr))
                .collect();
            tracing::info!(%pool, service = %self.config.service, count = endpoints.len(),
                endpoints = %listed.join(" "), "backends changed");
        }
        self.status.synced(endpoints.len());
        self.tx.send(Some(endpoints.into())).is_err()
    }
}

/// A client from KUBECONFIG (or ~/.kube/config), else the pod's service account. kube-rs sets no read
/// timeout: an API server that accepts connections but never answers would hold a list forever, and
/// the pool's state would claim it is in sync. Watches are closed by the server within 290 s, so a read
/// that waits longer than that has hung.
async fn client() -> Result<Client, String> {
    let mut config = kube::Config::infer().await.map_err(|e| e.to_string())?;
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(READ_TIMEOUT);
    // So that the API server's audit log can tell slotline from anything else.
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(concat!("slotline/", env!("CARGO_PKG_VERSION"))),
    ));
    Client::try_from(config).map_err(|e| e.to_string())
}

/// A watcher wrapper, so that the kube-rs watcher type stays in one place.
fn watcher<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl futures::Stream<Item = watcher::Result<Event<K>>> + Send
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    watcher::watcher(api, config)
}
