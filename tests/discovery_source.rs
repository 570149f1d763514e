//! The Kubernetes discovery source on its own, against the fake API server: kube-rs's watcher runs
//! unmodified, and the source hands over complete endpoint sets through list, watch, bookmarks,
//! 410 relists, closed watches, an API server that goes away and comes back, RBAC refusal, and a server
//! without EndpointSlice v1. The end-to-end behaviour through slotline is in tests/discovery.rs.
//!
//! One test function: KUBECONFIG is process-wide, so nothing else in this binary may run beside it.

mod support;

use std::time::Duration;

use slotline::config::Config;
use slotline::discovery::{Discovery, SourceState};
use support::{KubeApi, PodEndpoint, Slice, TempDir};

const WAIT: Duration = Duration::from_secs(30);

fn config(service: &str, extra: &str) -> slotline::config::PoolConfig {
    let yaml = format!(
        "pools:\n  p:\n    listen: 127.0.0.1:1\n    mode: ketama\n    kubernetes:\n      service: {service}\n      namespace: ns\n      port: redis\n{extra}"
    );
    let config = Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    config.pools["p"].clone()
}

/// The current set as `name=addr` strings, or None while the source knows none.
fn current(d: &Discovery) -> Option<Vec<String>> {
    d.endpoints.borrow().as_deref().map(|set| {
        set.iter()
            .map(|e| format!("{}={}", e.name, e.addr))
            .collect()
    })
}

async fn wait_set(d: &Discovery, want: &[&str]) {
    let end = tokio::time::Instant::now() + WAIT;
    let mut rx = d.endpoints.clone();
    loop {
        if current(d).is_some_and(|set| set == want) {
            return;
        }
        if tokio::time::timeout_at(end, rx.changed()).await.is_err() {
            panic!(
                "timed out waiting for {want:?}; the source has {:?}, status {:?}",
                current(d),
                d.status.snapshot()
            );
        }
    }
}

async fn wait_state(d: &Discovery, what: &str, check: impl Fn(&SourceState) -> bool) {
    let end = tokio::time::Instant::now() + WAIT;
    while !check(&d.status.snapshot().state) {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for the source to be {what}: {:?}",
            d.status.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn two_pods(ip0: &str) -> Slice {
    Slice::new(
        "redis-a",
        "redis",
        6379,
        vec![
            PodEndpoint::ready(ip0, "redis-0"),
            PodEndpoint::ready("127.0.0.3", "redis-1"),
        ],
    )
}

#[test]
fn kubernetes_source_follows_a_service_through_api_trouble() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_test_writer()
        .try_init();
    let mut api = KubeApi::start();
    let dir = TempDir::new("kubeconfig");
    let kubeconfig = api.write_kubeconfig(&dir);
    // The only test of this binary: nothing reads the environment concurrently.
    std::env::set_var("KUBECONFIG", &kubeconfig);
    api.apply_slice("ns", &two_pods("127.0.0.2"));
    // Another service's slice in the same namespace must not be picked up.
    api.apply_slice(
        "ns",
        &Slice::new(
            "other-a",
            "other",
            6379,
            vec![PodEndpoint::ready("127.0.0.9", "other-0")],
        ),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let d = Discovery::start("p", &config("redis", ""));
        wait_set(&d, &["redis-0=127.0.0.2:6379", "redis-1=127.0.0.3:6379"]).await;
        assert_eq!(d.status.snapshot().state, SourceState::Synced);

        // A pod rescheduled with a new IP: same name, new address.
        api.apply_slice("ns", &two_pods("127.0.0.5"));
        wait_set(&d, &["redis-0=127.0.0.5:6379", "redis-1=127.0.0.3:6379"]).await;

        // Slices split across objects are joined and de-duplicated; not-ready and terminating
        // endpoints are left out; conditions.ready absent means ready.
        let mut absent = PodEndpoint::ready("127.0.0.7", "redis-3");
        absent.ready = None;
        api.apply_slice(
            "ns",
            &Slice::new(
                "redis-b",
                "redis",
                6379,
                vec![
                    PodEndpoint::ready("127.0.0.3", "redis-1"),
                    PodEndpoint::not_ready("127.0.0.6", "redis-2"),
                    absent,
                    PodEndpoint::terminating("127.0.0.8", "redis-4"),
                ],
            ),
        );
        wait_set(
            &d,
            &["redis-0=127.0.0.5:6379", "redis-1=127.0.0.3:6379", "redis-3=127.0.0.7:6379"],
        )
        .await;
        api.delete_slice("ns", "redis-b");
        wait_set(&d, &["redis-0=127.0.0.5:6379", "redis-1=127.0.0.3:6379"]).await;

        // Bookmarks move the resourceVersion on; the watch goes on.
        api.bookmark();
        api.apply_slice("ns", &two_pods("127.0.0.2"));
        wait_set(&d, &["redis-0=127.0.0.2:6379", "redis-1=127.0.0.3:6379"]).await;

        // 410 Expired: the watcher lists again, and later changes still arrive.
        let lists = api.lists(true);
        api.expire();
        api.apply_slice("ns", &two_pods("127.0.0.4"));
        wait_set(&d, &["redis-0=127.0.0.4:6379", "redis-1=127.0.0.3:6379"]).await;
        assert!(api.lists(true) > lists, "no relist after 410: {:?}", api.requests());

        // Watches the server closes (timeoutSeconds) are opened again from where they were.
        api.set_watch_limit(Some(Duration::from_millis(300)));
        let watches = api.watches();
        support::wait_for(WAIT, "watches to be reopened", || api.watches() >= watches + 3);
        api.apply_slice("ns", &two_pods("127.0.0.2"));
        wait_set(&d, &["redis-0=127.0.0.2:6379", "redis-1=127.0.0.3:6379"]).await;
        api.set_watch_limit(None);

        // API server down: the last known set stays; the state says so; changes made meanwhile are
        // picked up once it is back.
        api.stop();
        wait_state(&d, "failing (unreachable)", |s| matches!(s, SourceState::Failing { reason } if reason.contains("unreachable"))).await;
        assert_eq!(
            current(&d).expect("a set"),
            ["redis-0=127.0.0.2:6379", "redis-1=127.0.0.3:6379"]
        );
        api.apply_slice("ns", &two_pods("127.0.0.5"));
        api.restart();
        wait_set(&d, &["redis-0=127.0.0.5:6379", "redis-1=127.0.0.3:6379"]).await;
        wait_state(&d, "synced again", |s| *s == SourceState::Synced).await;

        // RBAC forbids: same, with a reason that says what to grant.
        api.set_forbidden(true);
        api.expire(); // make the watcher ask again now rather than at its next timeout
        wait_state(&d, "failing (forbidden)", |s| matches!(s, SourceState::Failing { reason } if reason.contains("forbidden") && reason.contains("endpointslices"))).await;
        assert!(current(&d).is_some_and(|s| s.len() == 2));
        api.set_forbidden(false);
        api.apply_slice("ns", &two_pods("127.0.0.2"));
        wait_set(&d, &["redis-0=127.0.0.2:6379", "redis-1=127.0.0.3:6379"]).await;

        // A server without EndpointSlice v1: the source falls back to core/v1 Endpoints by itself,
        // unless the config insists on EndpointSlices.
        api.set_slices_served(false);
        let fallback = Discovery::start("p", &config("redis", ""));
        wait_set(&fallback, &["redis-0=127.0.0.2:6379", "redis-1=127.0.0.3:6379"]).await;
        assert!(
            api.requests().iter().any(|r| r.contains("/api/v1/namespaces/ns/endpoints?")),
            "{:?}",
            api.requests()
        );
        api.apply_slice("ns", &two_pods("127.0.0.6"));
        wait_set(&fallback, &["redis-0=127.0.0.6:6379", "redis-1=127.0.0.3:6379"]).await;
        let strict = Discovery::start("p", &config("redis", "      api: endpointslices\n"));
        wait_state(&strict, "failing (not found)", |s| matches!(s, SourceState::Failing { reason } if reason.contains("404"))).await;
        assert!(current(&strict).is_none());

        // A server with neither API: after falling back, the 404 is a failure like any other (retried
        // with backoff), not another fallback.
        api.set_endpoints_served(false);
        let neither = Discovery::start("p", &config("redis", ""));
        wait_state(&neither, "failing (not found) after the fallback", |s| matches!(s, SourceState::Failing { reason } if reason.contains("404"))).await;
        api.set_endpoints_served(true);
        wait_set(&neither, &["redis-0=127.0.0.6:6379", "redis-1=127.0.0.3:6379"]).await;

        // A service with no endpoints at all is an empty set, not an unknown one.
        let empty = Discovery::start("p", &config("nothing", "      api: endpoints\n"));
        wait_set(&empty, &[]).await;
    });
}
