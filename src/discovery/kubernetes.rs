//! The Kubernetes source: a Service's EndpointSlices (discovery.k8s.io/v1), or its core/v1 Endpoints
//! when the API server does not serve EndpointSlices or the config asks for them, followed with kube-rs's
//! watcher (list, then watch from the list's resourceVersion, relist on 410 Expired).
//!
//! Credentials come from KUBECONFIG (or ~/.kube/config), else the pod's service account. While the API
//! cannot be reached or refuses (RBAC), the pool keeps its last known backends and this task retries
//! with backoff; the state is in [`Status`] and each change of it is logged once.

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
/// At most this many backends are named in the log line of a change.
const LOGGED_ENDPOINTS: usize = 16;

/// Why following one API stopped.
enum Stop {
    /// The pool is gone.
    Closed,
    /// The API server answered 404 to the list: it does not serve this API.
    NotServed,
}

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
    let mut api = config.api.unwrap_or(EndpointsApi::Endpointslices);
    loop {
        let follow = Follow {
            config: &config,
            namespace: &namespace,
            tx: &tx,
            status: &status,
            // Only the default may fall back, and only once: an explicit `api: endpointslices` means
            // exactly that, and Endpoints have nothing to fall back to (a 404 there is retried).
            fall_back: config.api.is_none() && api == EndpointsApi::Endpointslices,
        };
        let stop = match api {
            EndpointsApi::Endpointslices => {
                let selector = format!("kubernetes.io/service-name={}", config.service);
                follow
                    .run(
                        Api::<EndpointSlice>::namespaced(client.clone(), &namespace),
                        watcher::Config::default().labels(&selector),
                        |objects| from_slices(objects, &config),
                    )
                    .await
            }
            EndpointsApi::Endpoints => {
                let selector = format!("metadata.name={}", config.service);
                follow
                    .run(
                        Api::<Endpoints>::namespaced(client.clone(), &namespace),
                        watcher::Config::default().fields(&selector),
                        |objects| from_endpoints(objects, &config),
                    )
                    .await
            }
        };
        match stop {
            Stop::Closed => return,
            Stop::NotServed => {
                tracing::info!(pool = %status.snapshot().pool, service = %config.service, %namespace,
                    "the API server does not serve discovery.k8s.io/v1 EndpointSlices; following core/v1 Endpoints instead");
                api = EndpointsApi::Endpoints;
            }
        }
    }
}

struct Follow<'a> {
    config: &'a KubernetesConfig,
    namespace: &'a str,
    tx: &'a watch::Sender<EndpointSet>,
    status: &'a Status,
    fall_back: bool,
}

impl Follow<'_> {
    /// Follows the objects `api` and `selector` name, handing each changed endpoint set to the pool.
    async fn run<K>(
        &self,
        api: Api<K>,
        selector: watcher::Config,
        convert: impl Fn(&mut dyn Iterator<Item = &K>) -> Vec<Endpoint>,
    ) -> Stop
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    {
        let mut stream = std::pin::pin!(watcher(api, selector));
        // Objects by name; during a (re)list the new ones gather apart and replace these at InitDone.
        let mut objects: BTreeMap<String, K> = BTreeMap::new();
        let mut listing: Option<BTreeMap<String, K>> = None;
        let mut backoff = MIN_BACKOFF;
        loop {
            let item = tokio::select! {
                item = stream.next() => item,
                _ = self.tx.closed() => return Stop::Closed,
            };
            let Some(item) = item else {
                return Stop::Closed; // the watcher never ends on its own
            };
            let changed = match item {
                Ok(event) => {
                    // Init comes before the list is even asked for: only what the API server sent
                    // shows it answering.
                    if !matches!(event, Event::Init) {
                        backoff = MIN_BACKOFF;
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
                    let code = status_code(&e);
                    match code {
                        // History compacted: the watcher lists again at once, as it should.
                        Some(410) => {
                            tracing::debug!(pool = %self.status.snapshot().pool, "watch expired (410); listing again");
                            continue;
                        }
                        // A list or watch answered 404: the API is not served (an old or trimmed
                        // API server, or EndpointSlices switched off after start).
                        Some(404)
                            if self.fall_back
                                && matches!(
                                    e,
                                    watcher::Error::InitialListFailed(_)
                                        | watcher::Error::WatchStartFailed(_)
                                ) =>
                        {
                            return Stop::NotServed;
                        }
                        _ => {}
                    }
                    self.status.failed(&self.reason(code), &e.to_string());
                    tokio::select! {
                        _ = sleep(backoff) => {}
                        _ = self.tx.closed() => return Stop::Closed,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    false
                }
            };
            if changed && self.publish(convert(&mut objects.values())) {
                return Stop::Closed;
            }
        }
    }

    /// The short class of a failure, as logged when it starts.
    fn reason(&self, code: Option<u16>) -> String {
        match code {
            None => "API server unreachable".into(),
            Some(403) => format!(
                "forbidden: the service account needs get, list and watch on endpointslices.discovery.k8s.io \
                 (or endpoints, for the fallback) in namespace {}",
                self.namespace
            ),
            Some(401) => "unauthorized: the API server refused the credentials".into(),
            Some(404) => "not found (404): the API server does not serve this API".into(),
            Some(code) => format!("API error {code}"),
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

/// The HTTP status the API server gave, if it answered at all.
fn status_code(e: &watcher::Error) -> Option<u16> {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.code),
        watcher::Error::WatchError(s) => Some(s.code),
        _ => None,
    }
}
