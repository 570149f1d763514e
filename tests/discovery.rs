//! Kubernetes-native discovery through the real slotline binary: real redis-servers play the pods of a
//! StatefulSet on their own 127.0.0.x addresses, the fake API server publishes their EndpointSlices,
//! and slotline follows them with no config edit and no restart.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::time::Duration;

use support::{
    cluster_port, free_port, wait_for, wait_ok, Client, KubeApi, Nutcracker, PodEndpoint, RedisPod,
    Reply, Slice, Slotline, TempDir, IDENTITY,
};

const WAIT: Duration = Duration::from_secs(30);
const NS: &str = "cache";

/// How a pod is listed instead of ready; `None` leaves it out of the slice.
type Listed = Option<fn(&str, &str) -> PodEndpoint>;

/// Pods, the API server that lists them, and slotline following it.
struct Setup {
    api: KubeApi,
    pods: Vec<RedisPod>,
    port: u16,
    _dir: TempDir,
}

impl Setup {
    /// Pods `redis-0..` on 127.0.0.2.. sharing one port, one ready slice listing them all.
    fn new(count: usize) -> Setup {
        let port = cluster_port();
        let pods = (0..count)
            .map(|i| RedisPod::start(&format!("redis-{i}"), &format!("127.0.0.{}", i + 2), port))
            .collect();
        let setup = Setup {
            api: KubeApi::start(),
            pods,
            port,
            _dir: TempDir::new("discovery"),
        };
        setup.publish(&[]);
        setup
    }

    /// Publishes one slice with every running pod ready, except those listed in `others` (pod index
    /// and how it is listed instead; `None` leaves it out).
    fn publish(&self, others: &[(usize, Listed)]) {
        let endpoints = self
            .pods
            .iter()
            .enumerate()
            .filter_map(|(i, pod)| match others.iter().find(|(o, _)| *o == i) {
                Some((_, Some(how))) => Some(how(pod.ip(), pod.name())),
                Some((_, None)) => None,
                None => Some(PodEndpoint::ready(pod.ip(), pod.name())),
            })
            .collect();
        self.api.apply_slice(
            NS,
            &Slice::new("redis-abcde", "redis", self.port, endpoints),
        );
    }

    /// Starts slotline with `yaml`, KUBECONFIG pointing at the fake API server.
    fn slotline(&self, yaml: &str) -> Slotline {
        let kubeconfig = self.api.write_kubeconfig(&self._dir);
        let kubeconfig = kubeconfig.to_string_lossy().into_owned();
        Slotline::start_with_env(yaml, &[("KUBECONFIG", &kubeconfig)])
    }

    /// Slotline in front of the pods as a ketama pool, with `count` keys written through it.
    fn ketama_with_keys(&self, count: usize) -> (Slotline, Client, Vec<String>) {
        let proxy = self.slotline(&ketama_yaml(free_port(), ""));
        let mut client = proxy.client();
        let keys = keys(count);
        serving(&mut client);
        set_all(&mut client, &keys);
        (proxy, client, keys)
    }

    /// The keys each pod holds, by pod.
    fn placement(&self) -> Vec<BTreeSet<Vec<u8>>> {
        self.pods
            .iter()
            .map(|pod| {
                let reply = pod.client().cmd(&["KEYS", "*:user"]);
                reply
                    .as_array()
                    .unwrap_or_else(|| panic!("KEYS on {} answered {reply:?}", pod.name()))
                    .iter()
                    .filter_map(|k| k.as_bytes().map(<[u8]>::to_vec))
                    .collect()
            })
            .collect()
    }
}

fn ketama_yaml(listen: u16, extra: &str) -> String {
    format!(
        "pools:\n  cache:\n    listen: 127.0.0.1:{listen}\n    mode: ketama\n    timeout: 2000\n    kubernetes:\n      service: redis\n      namespace: {NS}\n      port: redis\n{extra}"
    )
}

/// Waits until slotline answers a keyed command without an error (it has learnt its backends).
fn serving(client: &mut Client) {
    wait_ok(WAIT, "slotline to learn its backends", || {
        client
            .cmd(&["SET", "probe", "1"])
            .error()
            .map_or(Ok(()), |e| Err(e.to_string()))
    });
}

/// Keys that spread over a ring: twemproxy's fnv1a_64 multiplies by a small prime, so keys that
/// differ only in their last characters hash close together; these differ from the first.
fn keys(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{i}:user")).collect()
}

fn set_all(client: &mut Client, keys: &[String]) {
    let sets: Vec<[&str; 3]> = keys
        .iter()
        .map(|k| ["SET", k.as_str(), k.as_str()])
        .collect();
    for (key, reply) in keys.iter().zip(client.pipeline(&sets)) {
        assert!(reply.is_ok(), "SET {key}: {reply:?}");
    }
}

/// Whether every key reads back its own value through `client`; Err names the first that does not.
fn all_read_back(client: &mut Client, keys: &[String]) -> Result<(), String> {
    let gets: Vec<[&str; 2]> = keys.iter().map(|k| ["GET", k.as_str()]).collect();
    for (key, reply) in keys.iter().zip(client.pipeline(&gets)) {
        if reply != Reply::bulk(key) {
            return Err(format!("GET {key} answered {reply:?}"));
        }
    }
    Ok(())
}

#[test]
fn a_pod_back_at_a_new_ip_keeps_its_keys_and_clients_stay_connected() {
    let mut setup = Setup::new(3);
    let proxy = setup.slotline(&ketama_yaml(free_port(), ""));
    let config_before = fs::read_to_string(proxy.config_path()).expect("read the config");
    let keys = keys(600);
    // Clients that stay connected throughout: one writes, the others only read.
    let mut writer = proxy.client();
    let mut readers: Vec<Client> = (0..4).map(|_| proxy.client()).collect();
    serving(&mut writer);
    set_all(&mut writer, &keys);
    let before = setup.placement();
    let connections_before = connections_received(&mut writer);
    assert!(
        before.iter().all(|held| held.len() > 50),
        "every pod holds a share of the keys: {:?}",
        before.iter().map(BTreeSet::len).collect::<Vec<_>>()
    );

    // The StatefulSet controller reschedules redis-0: terminating, gone, back at 127.0.0.5 not ready,
    // then ready. Its volume (the data directory) goes with it.
    setup.publish(&[(0, Some(PodEndpoint::terminating))]);
    setup.pods[0].stop();
    setup.publish(&[(0, None)]);
    setup.pods[0].start_on("127.0.0.5");
    setup.publish(&[(0, Some(PodEndpoint::not_ready))]);
    setup.publish(&[]);

    // Traffic resumes on the same client connections, and every key is read back from where it was.
    wait_ok(
        WAIT,
        "every key to read back through the writer's connection",
        || all_read_back(&mut writer, &keys),
    );
    for reader in &mut readers {
        all_read_back(reader, &keys).expect("a reader connected before the move reads every key");
    }
    assert_eq!(setup.placement(), before, "keys moved between pods");
    let probe = setup.pods[0].client().cmd(&["DBSIZE"]);
    assert!(probe.as_int().is_some_and(|n| n > 50), "{probe:?}");
    // New writes go to the pod's new address too.
    set_all(&mut writer, &keys);
    assert_eq!(setup.placement(), before);
    assert_eq!(
        fs::read_to_string(proxy.config_path()).expect("read the config"),
        config_before,
        "no config edit"
    );
    assert_eq!(
        connections_received(&mut writer),
        connections_before,
        "no client had to reconnect"
    );
}

/// INFO's slotline section.
fn info_slotline(client: &mut Client) -> String {
    let info = client.cmd(&["INFO", "slotline"]);
    String::from_utf8_lossy(info.as_bytes().unwrap_or_default()).into_owned()
}

/// INFO's total_connections_received.
fn connections_received(client: &mut Client) -> u64 {
    let info = client.cmd(&["INFO", "stats"]);
    let info = String::from_utf8_lossy(info.as_bytes().unwrap_or_default()).into_owned();
    info.lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no total_connections_received in {info}"))
}

#[test]
fn ring_names_are_what_nutcracker_hashes_for_named_server_lines() {
    let setup = Setup::new(3);
    // redis-0 and redis-2 go by their hostnames; redis-1 keeps the name an older twemproxy config gave
    // it.
    let proxy = setup.slotline(&ketama_yaml(
        free_port(),
        "      names:\n        redis-1: shard-b\n",
    ));
    let keys = keys(500);
    let mut client = proxy.client();
    serving(&mut client);
    set_all(&mut client, &keys);
    let ours = setup.placement();
    for pod in &setup.pods {
        assert!(pod.client().cmd(&["FLUSHALL"]).is_ok());
    }
    let nut_port = free_port();
    let lines: String = setup
        .pods
        .iter()
        .map(|p| {
            let name = if p.name() == "redis-1" {
                "shard-b"
            } else {
                p.name()
            };
            format!("    - {}:1 {name}\n", p.addr())
        })
        .collect();
    let nutcracker = Nutcracker::start(
        &format!("pool:\n  listen: 127.0.0.1:{nut_port}\n  hash: fnv1a_64\n  distribution: ketama\n  redis: true\n  servers:\n{lines}"),
        nut_port,
    );
    set_all(&mut nutcracker.client(), &keys);
    assert_eq!(
        setup.placement(),
        ours,
        "placement differs from nutcracker's"
    );
}

#[test]
fn slices_are_joined_and_only_ready_endpoints_get_traffic() {
    let setup = Setup::new(4);
    // Two slices: redis-0 ready, redis-2 terminating in one; redis-1 ready (also listed in the first
    // slice, as during a rebalance), redis-3 not ready in the other.
    let pod = |i: usize| &setup.pods[i];
    let slice = |name: &str, endpoints: Vec<PodEndpoint>| {
        setup
            .api
            .apply_slice(NS, &Slice::new(name, "redis", setup.port, endpoints));
    };
    setup.api.delete_slice(NS, "redis-abcde");
    slice(
        "redis-aaaaa",
        vec![
            PodEndpoint::ready(pod(0).ip(), pod(0).name()),
            PodEndpoint::ready(pod(1).ip(), pod(1).name()),
            PodEndpoint::terminating(pod(2).ip(), pod(2).name()),
        ],
    );
    slice(
        "redis-bbbbb",
        vec![
            PodEndpoint::ready(pod(1).ip(), pod(1).name()),
            PodEndpoint::not_ready(pod(3).ip(), pod(3).name()),
        ],
    );
    let proxy = setup.slotline(&ketama_yaml(free_port(), ""));
    let mut client = proxy.client();
    let keys = keys(300);
    serving(&mut client);
    set_all(&mut client, &keys);
    all_read_back(&mut client, &keys).expect("every key reads back");
    let held: Vec<usize> = setup.placement().iter().map(BTreeSet::len).collect();
    assert!(held[0] > 0 && held[1] > 0, "{held:?}");
    assert_eq!(
        (held[2], held[3]),
        (0, 0),
        "terminating or not-ready pods got requests: {held:?}"
    );
    assert_eq!(held[0] + held[1], keys.len());

    // redis-0 starts terminating: it gets no new requests, and slotline's connections to it are
    // closed once drained (it leaves the ring, so its keys are served by redis-1 meanwhile).
    assert!(other_connections(&setup.pods[0]) > 0);
    slice(
        "redis-aaaaa",
        vec![
            PodEndpoint::terminating(pod(0).ip(), pod(0).name()),
            PodEndpoint::ready(pod(1).ip(), pod(1).name()),
        ],
    );
    wait_for(
        WAIT,
        "slotline to close its connections to the terminating pod",
        || other_connections(&setup.pods[0]) == 0,
    );
    let before = setup.pods[0].dbsize();
    set_all(&mut client, &keys);
    all_read_back(&mut client, &keys).expect("every key reads back");
    assert_eq!(
        setup.pods[0].dbsize(),
        before,
        "the terminating pod got requests"
    );
}

#[test]
fn subscribers_follow_the_ring_when_a_pod_joins() {
    let setup = Setup::new(3);
    // The StatefulSet has two ready pods; the third joins once clients have subscribed.
    setup.publish(&[(2, None)]);
    let proxy = setup.slotline(&ketama_yaml(free_port(), ""));
    let mut writer = proxy.client();
    serving(&mut writer);
    // A channel lives on the server a key of its name lives on: a key per channel, written now,
    // tells afterwards (by reading back as nil) which channels the new pod took over.
    let channels = keys(40);
    set_all(&mut writer, &channels);
    let mut subscribers: Vec<Client> = channels
        .iter()
        .map(|ch| {
            let mut sub = proxy.client();
            let reply = sub.cmd(&["SUBSCRIBE", ch.as_str()]);
            assert_eq!(reply.as_array().map(<[Reply]>::len), Some(3), "{reply:?}");
            sub
        })
        .collect();
    let mut watcher = proxy.client();
    let reply = watcher.cmd(&["PSUBSCRIBE", "*:user"]);
    assert_eq!(reply.as_array().map(<[Reply]>::len), Some(3), "{reply:?}");

    setup.publish(&[]);
    let moved = |writer: &mut Client| -> Vec<bool> {
        let gets: Vec<[&str; 2]> = channels.iter().map(|ch| ["GET", ch.as_str()]).collect();
        writer
            .pipeline(&gets)
            .iter()
            .map(|reply| *reply == Reply::nil())
            .collect()
    };
    wait_for(WAIT, "the new pod to take over some channels", || {
        moved(&mut writer).contains(&true)
    });
    let moved = moved(&mut writer);
    assert!(moved.contains(&false), "some channels stay where they were");

    // A pattern now misses a server: its client is closed, and subscribes again on all three.
    assert!(watcher.is_closed(), "the pattern subscriber is closed");
    let mut watcher = proxy.client();
    let reply = watcher.cmd(&["PSUBSCRIBE", "*:user"]);
    assert_eq!(reply.as_array().map(<[Reply]>::len), Some(3), "{reply:?}");
    for ((ch, sub), moved) in channels.iter().zip(&mut subscribers).zip(&moved) {
        if *moved {
            // PUBLISH goes to the new pod now; the client held the channel elsewhere.
            assert!(
                sub.is_closed(),
                "the subscriber of {ch}, which moved, is closed"
            );
            let mut again = proxy.client();
            let reply = again.cmd(&["SUBSCRIBE", ch.as_str()]);
            assert_eq!(reply.as_array().map(<[Reply]>::len), Some(3), "{reply:?}");
            *sub = again;
        }
        // Both the channel's subscriber (kept, or back) and the pattern's get what is published.
        assert_eq!(
            writer.cmd(&["PUBLISH", ch.as_str(), "hello"]),
            Reply::Int(2),
            "{ch}"
        );
        let message = sub.read_reply();
        assert_eq!(
            message.as_array().and_then(|m| m[2].as_str()),
            Some("hello"),
            "{ch}: {message:?}"
        );
        let pmessage = watcher.read_reply();
        assert_eq!(
            pmessage.as_array().and_then(|m| m[2].as_str()),
            Some(ch.as_str()),
            "{pmessage:?}"
        );
    }
    assert!(proxy
        .log()
        .contains("no longer matches where messages are published"));
}

/// Connections to `pod` other than the one asking.
fn other_connections(pod: &RedisPod) -> usize {
    let reply = pod.client().cmd(&["CLIENT", "LIST"]);
    let list = String::from_utf8_lossy(reply.as_bytes().unwrap_or_default()).into_owned();
    list.lines().count().saturating_sub(1)
}

#[test]
fn endpoints_are_read_when_the_api_server_has_no_endpointslices() {
    let setup = Setup::new(2);
    setup.api.set_slices_served(false);
    let (proxy, mut client, keys) = setup.ketama_with_keys(200);
    all_read_back(&mut client, &keys).expect("every key reads back");
    assert!(setup.placement().iter().all(|held| !held.is_empty()));
    assert!(
        proxy.log().contains("following core/v1 Endpoints"),
        "{}",
        proxy.log()
    );
    assert!(setup
        .api
        .requests()
        .iter()
        .any(|r| r.contains("/api/v1/namespaces/cache/endpoints?")));
}

#[test]
fn backends_keep_serving_while_the_api_server_is_down_and_changes_are_picked_up_after() {
    let mut setup = Setup::new(2);
    let (proxy, mut client, keys) = setup.ketama_with_keys(200);

    assert!(info_slotline(&mut client).contains("discovery_state:synced\r\n"));
    setup.api.stop();
    wait_for(WAIT, "slotline to notice the API server is gone", || {
        proxy.log().contains("discovery source failing")
    });
    let info = info_slotline(&mut client);
    assert!(
        info.contains("discovery_state:failing\r\n") && info.contains("discovery_endpoints:2\r\n"),
        "{info}"
    );
    all_read_back(&mut client, &keys).expect("the last known backends keep serving");

    // A pod moves while the API is down; once it is back, the change is picked up.
    setup.pods[1].stop();
    setup.pods[1].start_on("127.0.0.6");
    setup.publish(&[]);
    setup.api.restart();
    wait_ok(
        WAIT,
        "every key to read back after the API server returned",
        || all_read_back(&mut client, &keys),
    );
    wait_for(WAIT, "slotline to log the recovery", || {
        proxy.log().contains("discovery source reachable again")
    });
    assert!(info_slotline(&mut client).contains("discovery_state:synced\r\n"));
    let log = proxy.log();
    assert_eq!(
        log.matches("discovery source failing").count(),
        1,
        "one warning for the outage, not one per retry:\n{log}"
    );
}

#[test]
fn rbac_forbidden_is_reported_and_retried() {
    let setup = Setup::new(1);
    setup.api.set_forbidden(true);
    let proxy = setup.slotline(&ketama_yaml(free_port(), ""));
    let mut client = proxy.client();
    // What the API refused, as it said it: the verb, the resource, the namespace and who.
    let refused = format!(
        "User \"{IDENTITY}\" cannot list resource \"endpointslices\" in API group \"discovery.k8s.io\" in the namespace \"{NS}\""
    );
    wait_ok(WAIT, "INFO to say what RBAC refused", || {
        let info = info_slotline(&mut client);
        let said = info.contains("discovery_state:failing")
            && info.contains("forbidden")
            && info.contains(&refused);
        if said {
            Ok(())
        } else {
            Err(info)
        }
    });
    // The client hears the same truth, not "no ready endpoints": the service has one.
    let reply = client.cmd(&["GET", "k"]);
    let error = reply.error().unwrap_or_default().to_string();
    assert!(
        error.contains("forbidden") && error.contains(&refused),
        "{error}"
    );
    assert!(!error.contains("no ready endpoints"), "{error}");
    // The role is granted: slotline picks the endpoints up by itself.
    setup.api.set_forbidden(false);
    serving(&mut client);
    assert_eq!(proxy.log().matches("discovery source failing").count(), 1);
}

#[test]
fn a_410_expired_watch_is_relisted_and_followed() {
    let mut setup = Setup::new(2);
    let (_proxy, mut client, keys) = setup.ketama_with_keys(200);
    let lists = setup.api.lists(true);
    setup.api.expire();
    setup.pods[0].stop();
    setup.pods[0].start_on("127.0.0.7");
    setup.publish(&[]);
    wait_ok(WAIT, "every key to read back after the relist", || {
        all_read_back(&mut client, &keys)
    });
    assert!(setup.api.lists(true) > lists, "{:?}", setup.api.requests());
}

#[test]
fn an_empty_endpoint_set_gives_clients_a_clear_error_until_a_pod_is_ready() {
    let setup = Setup::new(1);
    setup.publish(&[(0, Some(PodEndpoint::not_ready))]);
    let proxy = setup.slotline(&ketama_yaml(free_port(), ""));
    let mut client = proxy.client();
    wait_ok(WAIT, "an error naming the empty service", || {
        match client.cmd(&["GET", "k"]) {
            Reply::Error(e) if e.contains("no ready endpoints") && e.contains("redis") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    assert_eq!(client.cmd(&["PING"]), Reply::Status("PONG".into()));
    setup.publish(&[]);
    wait_ok(WAIT, "the pod to serve", || {
        match client.cmd(&["SET", "k", "v"]) {
            reply if reply.is_ok() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
}

#[test]
fn a_static_host_name_is_resolved_again_when_its_pod_moves() {
    let port = cluster_port();
    let mut pods = [
        RedisPod::start("redis-0", "127.0.0.2", port),
        RedisPod::start("redis-1", "127.0.0.3", port),
    ];
    let dir = TempDir::new("hosts");
    let hosts = dir.write("hosts", "127.0.0.2 redis-0.redis.cache.svc.slotline.test\n");
    let listen = free_port();
    // A long resolve_interval: the failed connection is what makes slotline look the name up again.
    let yaml = format!(
        "pools:\n  cache:\n    listen: 127.0.0.1:{listen}\n    mode: ketama\n    resolve_interval: 600000\n    servers:\n      - redis-0.redis.cache.svc.slotline.test:{port}:1 redis-0\n      - 127.0.0.3:{port}:1 redis-1\n"
    );
    let hosts_path = hosts.to_string_lossy().into_owned();
    let proxy = Slotline::start_with_env(&yaml, &[("SLOTLINE_TEST_HOSTS_FILE", &hosts_path)]);
    let mut client = proxy.client();
    let keys = keys(200);
    set_all(&mut client, &keys);
    let held = |pods: &[RedisPod; 2]| pods.iter().map(RedisPod::dbsize).collect::<Vec<_>>();
    let before = held(&pods);
    assert!(before.iter().all(|&n| n > 0), "{before:?}");

    pods[0].stop();
    pods[0].start_on("127.0.0.8");
    dir.write("hosts", "127.0.0.8 redis-0.redis.cache.svc.slotline.test\n");
    wait_ok(WAIT, "every key to read back from the moved pod", || {
        all_read_back(&mut client, &keys)
    });
    assert_eq!(held(&pods), before, "keys moved");
    assert!(
        proxy.log().contains("backend address changed"),
        "{}",
        proxy.log()
    );
}

/// Lists `cluster`'s nodes as the endpoints of service `redis-cluster`, one slice per node (the nodes
/// listen on different ports of 127.0.0.1), named `prefix-N`; slices of other prefixes are deleted.
fn publish_cluster(
    api: &KubeApi,
    cluster: &support::RedisCluster,
    prefix: &str,
    old: Option<&str>,
) {
    for (i, port) in cluster.live_ports().into_iter().enumerate() {
        let name = format!("{prefix}-{i}");
        api.apply_slice(
            NS,
            &Slice::new(
                &name,
                "redis-cluster",
                port,
                vec![PodEndpoint::ready("127.0.0.1", &name)],
            ),
        );
    }
    if let Some(old) = old {
        for i in 0..cluster.live_ports().len() {
            api.delete_slice(NS, &format!("{old}-{i}"));
        }
    }
}

#[test]
fn a_cluster_pool_is_seeded_by_the_service_and_bootstraps_again_after_a_full_restart() {
    let opts = support::ClusterOpts {
        replicas_per_master: 0,
        ..Default::default()
    };
    let before = support::RedisCluster::start(opts.clone());
    let api = KubeApi::start();
    publish_cluster(&api, &before, "before", None);
    let dir = TempDir::new("kubeconfig");
    let kubeconfig = api.write_kubeconfig(&dir).to_string_lossy().into_owned();
    let listen = free_port();
    // No servers: the seeds are the Service's endpoints.
    let proxy = Slotline::start_with_env(
        &format!(
            "pools:\n  main:\n    listen: 127.0.0.1:{listen}\n    mode: cluster\n    kubernetes:\n      service: redis-cluster\n      namespace: {NS}\n"
        ),
        &[("KUBECONFIG", &kubeconfig)],
    );
    let mut client = proxy.client();
    let keys = keys(300);
    serving(&mut client);
    set_all(&mut client, &keys);
    all_read_back(&mut client, &keys).expect("every key reads back through the cluster pool");

    // The whole StatefulSet restarts at new addresses: every node slotline knows is gone, and the
    // Service lists only new ones. (A fresh cluster stands in for it: its data starts empty.)
    let after = support::RedisCluster::start(opts);
    publish_cluster(&api, &after, "after", Some("before"));
    drop(before);
    wait_ok(
        WAIT,
        "the pool to learn the new cluster from the Service",
        || match client.cmd(&["SET", "after:probe", "1"]) {
            reply if reply.is_ok() => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    set_all(&mut client, &keys);
    all_read_back(&mut client, &keys).expect("every key reads back from the new cluster");
    let held: i64 = after
        .live_ports()
        .into_iter()
        .map(|port| after.client(port).cmd(&["DBSIZE"]).as_int().unwrap_or(0))
        .sum();
    assert_eq!(
        held,
        keys.len() as i64 + 1,
        "the keys are on the new cluster"
    );
}

/// A Role that grants only core Endpoints is enough with the default `api`: which API to follow comes
/// from API discovery, not from the EndpointSlice list's error, which a real API server answers 403
/// (not 404) when the role does not cover it.
#[test]
fn a_role_for_endpoints_alone_is_enough_when_discovery_chooses_them() {
    let setup = Setup::new(1);
    setup.api.set_slices_served(false);
    setup
        .api
        .grant_only(&[("endpoints", "list"), ("endpoints", "watch")]);
    let proxy = setup.slotline(&ketama_yaml(free_port(), ""));
    let mut client = proxy.client();
    serving(&mut client);
    assert_eq!(setup.api.lists(true), 0, "{:?}", setup.api.requests());
    // Every request says who it is, for the API server's audit log.
    let agents = setup.api.user_agents();
    assert!(
        !agents.is_empty() && agents.iter().all(|a| a.starts_with("slotline/")),
        "{agents:?}"
    );
}

/// A Role that lacks `watch`: the list succeeds, the watch is refused. At start-up slotline asks the
/// API server what it may do and names the missing rule; the failing state and the log say what was
/// refused (the verb and resource the API server named), each in one line without a debug dump.
#[test]
fn a_missing_verb_is_named_at_start_up_and_in_the_reason() {
    let setup = Setup::new(1);
    setup.api.grant_only(&[("endpointslices", "list")]);
    let proxy = setup.slotline(&ketama_yaml(free_port(), ""));
    let mut client = proxy.client();
    wait_for(
        WAIT,
        "the start-up line naming the missing permission",
        || {
            proxy.log().contains(&format!(
                "missing permission: watch endpointslices in namespace {NS}"
            ))
        },
    );
    assert!(
        !proxy.log().contains("missing permission: list"),
        "{}",
        proxy.log()
    );
    wait_ok(WAIT, "INFO to name the refused watch", || {
        let info = info_slotline(&mut client);
        match info.contains("cannot watch resource \"endpointslices\"") {
            true => Ok(()),
            false => Err(info),
        }
    });
    let log = proxy.log();
    for line in log.lines() {
        assert!(
            line.len() < 600,
            "a log line of {} bytes: {line}",
            line.len()
        );
        assert!(
            !line.contains("Status {") && !line.contains("ErrorResponse"),
            "{line}"
        );
    }
}

/// For a few seconds after a restart a real API server answers 403 while its authorizer warms up:
/// slotline says so (not "forbidden"), retries at its shortest backoff, and is in sync soon after.
#[test]
fn a_warming_api_server_is_not_taken_for_a_missing_permission() {
    let mut setup = Setup::new(1);
    let (proxy, mut client, _keys) = setup.ketama_with_keys(10);
    setup.api.stop();
    wait_ok(WAIT, "slotline to see the API server down", || {
        let info = info_slotline(&mut client);
        match info.contains("discovery_state:failing") {
            true => Ok(()),
            false => Err(info),
        }
    });
    setup.api.restart_warming(Duration::from_secs(3));
    wait_ok(WAIT, "the warming-up state", || {
        let info = info_slotline(&mut client);
        match info.contains("warming up") {
            true => Ok(()),
            false => Err(info),
        }
    });
    wait_ok(WAIT, "the source in sync again", || {
        let info = info_slotline(&mut client);
        match info.contains("discovery_state:synced") {
            true => Ok(()),
            false => Err(info),
        }
    });
    // The 403s were warming, never taken for a refused permission.
    let log = plain(&proxy.log());
    assert!(log.contains("reason=\"API server warming up"), "{log}");
    assert!(!log.contains("reason=\"forbidden"), "{log}");
    assert_eq!(client.cmd(&["GET", "0:user"]), Reply::bulk("0:user"));
}

/// The log without its terminal colours.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `slotline check` asks the API server what the running proxy would ask, and says the same things:
/// the missing Role rule, the ready endpoints once granted, and an API server that cannot be reached.
#[test]
fn slotline_check_reports_what_the_api_server_shows_slotline() {
    let mut setup = Setup::new(2);
    let config = setup
        ._dir
        .write("slotline.yml", &ketama_yaml(free_port(), ""));
    let kubeconfig = setup.api.write_kubeconfig(&setup._dir);
    let check = || {
        let out = Slotline::command()
            .arg("check")
            .arg("--config")
            .arg(&config)
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .expect("run slotline check");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success(), stdout)
    };

    setup.api.grant_only(&[("endpointslices", "list")]);
    let (ok, out) = check();
    assert!(!ok, "check passed with watch refused: {out}");
    assert!(
        out.contains(&format!(
            "pool cache: missing permission: watch endpointslices in namespace {NS}"
        )),
        "{out}"
    );
    assert!(!out.contains("missing permission: list"), "{out}");

    setup.api.grant_all();
    let (ok, out) = check();
    assert!(ok, "check failed with every permission granted: {out}");
    assert!(
        out.contains(&format!(
            "kubernetes service redis in namespace {NS}: 2 ready endpoint(s)"
        )),
        "{out}"
    );

    setup.api.stop();
    let (ok, out) = check();
    assert!(!ok, "check passed with the API server down: {out}");
    assert!(out.contains("API server unreachable"), "{out}");
}
