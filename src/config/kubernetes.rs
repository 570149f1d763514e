//! Where a pool's backends come from when Kubernetes names them: a Service's endpoints.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::defaults;

/// A pool's backends taken from a Kubernetes Service's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// The Service whose endpoints are the backends.
    pub service: String,
    /// Its namespace; default: the namespace of the kubeconfig context, or the pod's own in-cluster.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The Service port, by name or number; may be left out when the Service has one port.
    #[serde(default)]
    pub port: Option<PortRef>,
    /// Which API to read; default: chosen from API discovery (`endpointslices` when the API server
    /// serves discovery.k8s.io/v1, else `endpoints`).
    #[serde(default)]
    pub api: Option<EndpointsApi>,
    /// Pod name -> the name the server has on the ketama ring (default: the pod's hostname or name).
    #[serde(default)]
    pub names: BTreeMap<String, String>,
    /// Sharded modes: the weight of every endpoint.
    #[serde(default = "defaults::weight")]
    pub weight: u32,
}

/// A Service port, by name or number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRef {
    Name(String),
    Number(u16),
}

impl<'de> Deserialize<'de> for PortRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<PortRef, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Name(String),
        }
        let number = |n: u64| match u16::try_from(n) {
            Ok(n) if n > 0 => Ok(PortRef::Number(n)),
            _ => Err(serde::de::Error::custom(format!(
                "port {n} is not between 1 and 65535"
            ))),
        };
        match Raw::deserialize(d)? {
            Raw::Number(n) => number(n),
            Raw::Name(name) => match name.parse::<u64>() {
                Ok(n) => number(n),
                Err(_) => Ok(PortRef::Name(name)),
            },
        }
    }
}

/// The Kubernetes API endpoints are read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointsApi {
    /// discovery.k8s.io/v1 EndpointSlices (GA since Kubernetes 1.21).
    Endpointslices,
    /// core/v1 Endpoints (deprecated since Kubernetes 1.33).
    Endpoints,
}
