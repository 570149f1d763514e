//! Which endpoints of a Service's EndpointSlices (or core/v1 Endpoints) are backends, at which port and
//! under which stable name. Pure functions of the objects, so the rules are tested without an API server.
//!
//! Rules: all slices of the service are joined and de-duplicated; only ready endpoints count
//! (`conditions.ready` absent means ready) and terminating ones never do, so they get no new requests;
//! the port is the one named in the config (or the only one); the name is the config's `names:` entry
//! for the pod, else the endpoint's `hostname`, else its pod (`targetRef.name`), else `ip:port`.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{EndpointPort as CorePort, Endpoints, ObjectReference};
use k8s_openapi::api::discovery::v1::{EndpointPort, EndpointSlice};

use super::Endpoint;
use crate::config::{join_host_port, KubernetesConfig, PortRef};

/// The backends listed by `slices` (all slices of one service).
pub(super) fn from_slices<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    config: &KubernetesConfig,
) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for slice in slices {
        let ports = slice.ports.as_deref().unwrap_or(&[]);
        let Some(port) = pick_port(
            ports
                .iter()
                .map(|p: &EndpointPort| (p.name.as_deref(), p.port)),
            config,
        ) else {
            continue;
        };
        for endpoint in slice.endpoints.iter().flatten() {
            let conditions = endpoint.conditions.as_ref();
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            if !ready || terminating {
                continue;
            }
            let Some(ip) = endpoint.addresses.first() else {
                continue;
            };
            let mut at = endpoint_at(
                ip,
                port,
                endpoint.hostname.as_deref(),
                endpoint.target_ref.as_ref(),
                config,
            );
            // The zone, for reads that prefer nodes in slotline's own (`nearest*` policies).
            at.zone = endpoint.zone.as_deref().map(Arc::from);
            out.push(at);
        }
    }
    dedupe(out)
}

/// The backends listed by a core/v1 Endpoints object (its ready `addresses`, never `notReadyAddresses`).
pub(super) fn from_endpoints<'a>(
    objects: impl IntoIterator<Item = &'a Endpoints>,
    config: &KubernetesConfig,
) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for subset in objects.into_iter().flat_map(|o| o.subsets.iter().flatten()) {
        let ports = subset.ports.as_deref().unwrap_or(&[]);
        let Some(port) = pick_port(
            ports
                .iter()
                .map(|p: &CorePort| (p.name.as_deref(), Some(p.port))),
            config,
        ) else {
            continue;
        };
        for address in subset.addresses.iter().flatten() {
            out.push(endpoint_at(
                &address.ip,
                port,
                address.hostname.as_deref(),
                address.target_ref.as_ref(),
                config,
            ));
        }
    }
    dedupe(out)
}

/// The backend port among a slice's `(name, port)` pairs: the configured number as is, the port of
/// the configured name, or the only port when none is configured.
fn pick_port<'a>(
    mut ports: impl Iterator<Item = (Option<&'a str>, Option<i32>)>,
    config: &KubernetesConfig,
) -> Option<u16> {
    let port = match &config.port {
        Some(PortRef::Number(n)) => return Some(*n),
        Some(PortRef::Name(name)) => ports.find(|(n, _)| *n == Some(name.as_str()))?.1,
        None => {
            let first = ports.next()?;
            if ports.next().is_some() {
                return None; // ambiguous; validation cannot know, the log of the pool says so
            }
            first.1
        }
    };
    port.and_then(|p| u16::try_from(p).ok()).filter(|&p| p > 0)
}

fn endpoint_at(
    ip: &str,
    port: u16,
    hostname: Option<&str>,
    target: Option<&ObjectReference>,
    config: &KubernetesConfig,
) -> Endpoint {
    let addr = join_host_port(ip, port);
    let pod = target.and_then(|t| t.name.as_deref());
    let mapped = pod
        .or(hostname)
        .and_then(|p| config.names.get(p))
        .or_else(|| hostname.and_then(|h| config.names.get(h)));
    let name = match (mapped, hostname, pod) {
        (Some(name), _, _) => name.clone(),
        (None, Some(h), _) if !h.is_empty() => h.to_string(),
        (None, _, Some(p)) if !p.is_empty() => p.to_string(),
        _ => addr.clone(),
    };
    Endpoint {
        name: Arc::from(name),
        addr: Arc::from(addr),
        weight: config.weight,
        zone: None,
    }
}

/// One endpoint per name (a pod listed by two slices while they are rebalanced), sorted by name.
fn dedupe(endpoints: Vec<Endpoint>) -> Vec<Endpoint> {
    let mut by_name = BTreeMap::new();
    for e in endpoints {
        by_name.entry(e.name.clone()).or_insert(e);
    }
    by_name.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EndpointAddress, EndpointSubset};
    use k8s_openapi::api::discovery::v1::{Endpoint as SliceEndpoint, EndpointConditions};

    fn config(port: Option<PortRef>) -> KubernetesConfig {
        KubernetesConfig {
            service: "redis".into(),
            namespace: None,
            port,
            api: None,
            names: BTreeMap::new(),
            weight: 1,
        }
    }

    fn endpoint(
        ip: &str,
        pod: &str,
        ready: Option<bool>,
        terminating: Option<bool>,
    ) -> SliceEndpoint {
        SliceEndpoint {
            addresses: vec![ip.to_string()],
            conditions: Some(EndpointConditions {
                ready,
                serving: None,
                terminating,
            }),
            hostname: None,
            target_ref: Some(ObjectReference {
                name: Some(pod.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn slice(ports: &[(&str, i32)], endpoints: Vec<SliceEndpoint>) -> EndpointSlice {
        EndpointSlice {
            address_type: "IPv4".into(),
            endpoints: Some(endpoints),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p)| EndpointPort {
                        name: Some(n.to_string()),
                        port: Some(*p),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn names(endpoints: &[Endpoint]) -> Vec<(String, String)> {
        endpoints
            .iter()
            .map(|e| (e.name.to_string(), e.addr.to_string()))
            .collect()
    }

    #[test]
    fn joins_slices_dedupes_and_keeps_ready_ones_only() {
        let a = slice(
            &[("redis", 6379), ("metrics", 9121)],
            vec![
                endpoint("10.0.0.1", "redis-0", Some(true), Some(false)),
                endpoint("10.0.0.2", "redis-1", None, None),
                endpoint("10.0.0.3", "redis-2", Some(false), None),
            ],
        );
        let b = slice(
            &[("redis", 6379)],
            vec![
                endpoint("10.0.0.4", "redis-3", Some(false), Some(true)),
                endpoint("10.0.0.1", "redis-0", Some(true), None),
                endpoint("10.0.0.5", "redis-4", Some(true), None),
            ],
        );
        let got = from_slices([&a, &b], &config(Some(PortRef::Name("redis".into()))));
        assert_eq!(
            names(&got),
            [
                ("redis-0".to_string(), "10.0.0.1:6379".to_string()),
                ("redis-1".into(), "10.0.0.2:6379".into()),
                ("redis-4".into(), "10.0.0.5:6379".into()),
            ]
        );
        // Two ports and none configured: which one is meant cannot be known.
        assert_eq!(from_slices([&a], &config(None)).len(), 0);
        assert_eq!(from_slices([&b], &config(None)).len(), 2);
        let numbered = from_slices([&b], &config(Some(PortRef::Number(7000))));
        assert_eq!(&*numbered[1].addr, "10.0.0.5:7000");
    }

    #[test]
    fn names_prefer_the_mapping_then_hostname_then_pod_then_address() {
        let mut e = endpoint("10.0.0.1", "redis-0", None, None);
        let s = slice(&[("redis", 6379)], vec![e.clone()]);
        let mut c = config(None);
        assert_eq!(&*from_slices([&s], &c)[0].name, "redis-0");
        e.hostname = Some("host-0".into());
        let s = slice(&[("redis", 6379)], vec![e.clone()]);
        assert_eq!(&*from_slices([&s], &c)[0].name, "host-0");
        c.names.insert("redis-0".into(), "shard-a".into());
        assert_eq!(&*from_slices([&s], &c)[0].name, "shard-a");
        e.hostname = None;
        e.target_ref = None;
        let s = slice(&[("redis", 6379)], vec![e]);
        assert_eq!(&*from_slices([&s], &c)[0].name, "10.0.0.1:6379");
    }

    #[test]
    fn core_endpoints_use_ready_addresses_only() {
        let address = |ip: &str, pod: &str| EndpointAddress {
            ip: ip.into(),
            hostname: Some(pod.into()),
            ..Default::default()
        };
        let object = Endpoints {
            subsets: Some(vec![EndpointSubset {
                addresses: Some(vec![address("10.0.0.1", "redis-0")]),
                not_ready_addresses: Some(vec![address("10.0.0.2", "redis-1")]),
                ports: Some(vec![CorePort {
                    name: Some("redis".into()),
                    port: 6379,
                    ..Default::default()
                }]),
            }]),
            ..Default::default()
        };
        let got = from_endpoints([&object], &config(Some(PortRef::Name("redis".into()))));
        assert_eq!(
            names(&got),
            [("redis-0".to_string(), "10.0.0.1:6379".to_string())]
        );
    }
}
