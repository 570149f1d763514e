//! The Kubernetes manifests in deploy/, checked the way `kubectl apply` and a reviewer would: every
//! kustomization renders (`kubectl kustomize`, offline), every object parses into its k8s-openapi type
//! without losing a field (so a misspelt field fails), and the pieces agree with each other and with
//! slotline itself: probes, ports, the config, RBAC, the security context and the shutdown timing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, PodSpec, Probe, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::{Deserialize as _, Serialize};
use serde_yaml::Value;

mod support;
use support::METRIC_NAMES;

/// The paths the admin listener serves (src/admin/mod.rs), which probes may point at.
const ADMIN_PATHS: [&str; 3] = ["/metrics", "/healthz", "/readyz"];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Every directory under deploy/ that holds a kustomization, relative to deploy/.
fn kustomizations() -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![deploy_dir()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read deploy/").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n == "kustomization.yaml") {
                // A part of a larger kustomization (a directory below one) is checked as part of it.
                let part = dir
                    .ancestors()
                    .skip(1)
                    .take_while(|a| *a != deploy_dir())
                    .any(|a| a.join("kustomization.yaml").exists());
                if !part {
                    let rel = dir.strip_prefix(deploy_dir()).expect("under deploy/");
                    found.push(rel.display().to_string());
                }
            }
        }
    }
    found.sort();
    for expected in [
        "base",
        "examples/redis-cluster",
        "examples/twemproxy-shards",
        "examples/redis-ha",
        "examples/other-namespace",
        "examples/tls",
    ] {
        assert!(
            found.iter().any(|f| f == expected),
            "no kustomization in deploy/{expected}"
        );
    }
    found
}

/// One rendered kustomization, every object parsed into its type.
#[derive(Default)]
struct Rendered {
    name: String,
    deployments: Vec<Deployment>,
    stateful_sets: Vec<StatefulSet>,
    jobs: Vec<Job>,
    services: Vec<Service>,
    config_maps: Vec<ConfigMap>,
    secrets: Vec<Secret>,
    service_accounts: Vec<ServiceAccount>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    pdbs: Vec<PodDisruptionBudget>,
    hpas: Vec<HorizontalPodAutoscaler>,
    network_policies: Vec<NetworkPolicy>,
    /// A CRD with no k8s-openapi type: kept as YAML and checked by hand.
    service_monitors: Vec<Value>,
    /// cert-manager's Certificates and Issuers (CRDs too).
    certificates: Vec<Value>,
    issuers: Vec<Value>,
}

fn render(dir: &str) -> Rendered {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(deploy_dir().join(dir))
        .output()
        .unwrap_or_else(|e| panic!("cannot run kubectl (apt-get install kubernetes-client): {e}"));
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/{dir} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8 manifests");
    let mut r = Rendered {
        name: dir.to_string(),
        ..Rendered::default()
    };
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let doc = Value::deserialize(doc).expect("a YAML document");
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        let api = doc["apiVersion"].as_str().unwrap_or_default().to_string();
        let what = format!(
            "deploy/{dir}: {kind} {}",
            doc["metadata"]["name"].as_str().unwrap_or("?")
        );
        match (api.as_str(), kind.as_str()) {
            ("apps/v1", "Deployment") => r.deployments.push(typed(&doc, &what)),
            ("apps/v1", "StatefulSet") => r.stateful_sets.push(typed(&doc, &what)),
            ("batch/v1", "Job") => r.jobs.push(typed(&doc, &what)),
            ("v1", "Service") => r.services.push(typed(&doc, &what)),
            ("v1", "ConfigMap") => r.config_maps.push(typed(&doc, &what)),
            ("v1", "Secret") => {
                // Debian's kustomize wraps base64 at 70 columns; the API server's decoder skips the
                // line breaks, k8s-openapi's does not.
                let mut doc = doc.clone();
                if let Some(data) = doc.get_mut("data").and_then(Value::as_mapping_mut) {
                    for (_, v) in data.iter_mut() {
                        if let Some(text) = v.as_str() {
                            *v = Value::String(text.split_whitespace().collect());
                        }
                    }
                }
                r.secrets.push(typed(&doc, &what))
            }
            ("v1", "ServiceAccount") => r.service_accounts.push(typed(&doc, &what)),
            ("rbac.authorization.k8s.io/v1", "Role") => r.roles.push(typed(&doc, &what)),
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
                r.role_bindings.push(typed(&doc, &what))
            }
            ("policy/v1", "PodDisruptionBudget") => r.pdbs.push(typed(&doc, &what)),
            ("autoscaling/v2", "HorizontalPodAutoscaler") => r.hpas.push(typed(&doc, &what)),
            ("networking.k8s.io/v1", "NetworkPolicy") => {
                r.network_policies.push(typed(&doc, &what))
            }
            ("monitoring.coreos.com/v1", "ServiceMonitor") => r.service_monitors.push(doc),
            ("cert-manager.io/v1", "Certificate") => r.certificates.push(doc),
            ("cert-manager.io/v1", "Issuer") => r.issuers.push(doc),
            other => panic!("{what}: unexpected kind {other:?} (add it to the checks)"),
        }
    }
    r
}

/// Parses `doc` into `T`, then serializes it back and fails on any field that did not survive: the
/// k8s-openapi types ignore unknown fields, so this is what catches a misspelt one.
fn typed<T: DeserializeOwned + Serialize>(doc: &Value, what: &str) -> T {
    let value: T = serde_yaml::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{what}: does not parse as its type: {e}"));
    let back = serde_yaml::to_value(&value).expect("serialize back");
    let (given, kept) = (paths(doc), paths(&back));
    let dropped: Vec<&String> = given.difference(&kept).collect();
    assert!(
        dropped.is_empty(),
        "{what}: fields the type does not know (misspelt or misplaced?): {dropped:?}"
    );
    value
}

/// Every key path in a YAML tree (`spec.template.spec.containers[0].ports[1].name`).
fn paths(value: &Value) -> BTreeSet<String> {
    fn walk(value: &Value, at: &str, out: &mut BTreeSet<String>) {
        match value {
            Value::Mapping(map) => {
                for (k, v) in map {
                    let key = match k {
                        Value::String(s) => s.clone(),
                        other => format!("{other:?}"),
                    };
                    let path = format!("{at}.{key}");
                    out.insert(path.clone());
                    walk(v, &path, out);
                }
            }
            Value::Sequence(items) => {
                for (i, v) in items.iter().enumerate() {
                    let path = format!("{at}[{i}]");
                    out.insert(path.clone());
                    walk(v, &path, out);
                }
            }
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk(value, "", &mut out);
    out
}

impl Rendered {
    /// Whether a label selector picks the slotline pods (and is not empty).
    fn selects_proxy(&self, selector: Option<&BTreeMap<String, String>>) -> bool {
        let pod = slotline(self)
            .0
            .spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        selector.is_some_and(|l| !l.is_empty() && l.iter().all(|(k, v)| pod.get(k) == Some(v)))
    }

    fn proxy_service(&self) -> &Service {
        self.services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some("slotline"))
            .unwrap_or_else(|| panic!("deploy/{}: no Service named slotline", self.name))
    }
}

/// The slotline Deployment of a rendering, its pod spec and its container.
fn slotline(r: &Rendered) -> (&Deployment, &PodSpec, &Container) {
    let d = r
        .deployments
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some("slotline"))
        .unwrap_or_else(|| panic!("deploy/{}: no Deployment named slotline", r.name));
    let pod = d.spec.template.spec.as_ref().expect("pod spec");
    let c = pod
        .containers
        .iter()
        .find(|c| c.name == "slotline")
        .expect("container named slotline");
    (d, pod, c)
}

fn container_port(c: &Container, name: &str) -> i32 {
    c.ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("container {} has no port named {name}", c.name))
        .container_port
}

/// A named or numbered port of a container, as a number.
fn resolve(c: &Container, port: &IntOrString) -> i32 {
    match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => container_port(c, name),
    }
}

/// (path, port number) of an HTTP probe.
fn http_probe(c: &Container, probe: Option<&Probe>, what: &str) -> (String, i32) {
    let get = probe
        .and_then(|p| p.http_get.as_ref())
        .unwrap_or_else(|| panic!("{} has no HTTP {what} probe", c.name));
    (get.path.clone().unwrap_or_default(), resolve(c, &get.port))
}

/// The slotline config the Deployment mounts: (ConfigMap key's text, file path given to --config).
fn mounted_config(r: &Rendered) -> String {
    let (_, pod, c) = slotline(r);
    let args = c.args.clone().unwrap_or_default();
    let config_path = args
        .iter()
        .position(|a| a == "--config" || a == "-c")
        .and_then(|i| args.get(i + 1))
        .unwrap_or_else(|| panic!("deploy/{}: slotline runs without --config", r.name));
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| config_path.starts_with(&format!("{}/", m.mount_path)))
        .unwrap_or_else(|| panic!("deploy/{}: {config_path} is on no volume", r.name));
    let key = &config_path[mount.mount_path.len() + 1..];
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .expect("the mounted volume");
    let cm_name = volume
        .config_map
        .as_ref()
        .map(|c| c.name.clone())
        .unwrap_or_else(|| panic!("deploy/{}: the config volume is not a ConfigMap", r.name));
    let cm = r
        .config_maps
        .iter()
        .find(|m| m.metadata.name.as_deref() == Some(cm_name.as_str()))
        .unwrap_or_else(|| panic!("deploy/{}: no ConfigMap {cm_name}", r.name));
    cm.data
        .as_ref()
        .and_then(|d| d.get(key))
        .unwrap_or_else(|| panic!("deploy/{}: ConfigMap {cm_name} has no key {key}", r.name))
        .clone()
}

/// The ACL file (`aclfile` in the Redis config) the Redis pods mount from a Secret, if any.
fn redis_acl(r: &Rendered) -> Option<String> {
    let path = r
        .config_maps
        .iter()
        .filter_map(|m| m.data.as_ref())
        .flat_map(|d| d.values())
        .flat_map(|text| text.lines())
        .find_map(|l| l.strip_prefix("aclfile "))?
        .trim()
        .to_string();
    let set = r.stateful_sets.first()?;
    let pod = set.spec.template.spec.as_ref()?;
    let mount = pod
        .containers
        .iter()
        .flat_map(|c| c.volume_mounts.iter().flatten())
        .find(|m| path.starts_with(&format!("{}/", m.mount_path)))?;
    let key = &path[mount.mount_path.len() + 1..];
    let name = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)?
        .secret
        .as_ref()?
        .secret_name
        .clone()?;
    let secret = r
        .secrets
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(name.as_str()))?;
    let bytes = secret.data.as_ref()?.get(key)?;
    Some(String::from_utf8_lossy(&bytes.0).into_owned())
}

/// The file at `path` in the slotline container, from the Secret mounted over it.
fn mounted_secret(r: &Rendered, path: &str) -> Vec<u8> {
    let (_, pod, c) = slotline(r);
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| path.starts_with(&format!("{}/", m.mount_path)))
        .unwrap_or_else(|| panic!("deploy/{}: {path} is on no volume", r.name));
    let key = &path[mount.mount_path.len() + 1..];
    let name = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .and_then(|v| v.secret.as_ref())
        .and_then(|s| s.secret_name.clone())
        .unwrap_or_else(|| panic!("deploy/{}: {path} is not on a Secret volume", r.name));
    let secret = r
        .secrets
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(name.as_str()))
        .unwrap_or_else(|| panic!("deploy/{}: no Secret {name}", r.name));
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .unwrap_or_else(|| panic!("deploy/{}: Secret {name} has no key {key}", r.name))
}

/// The config as slotline reads it in the pod: a `redis_auth_file` is read from its Secret (copied
/// to a temporary file here), so the file exists where the config says.
fn config_in_pod(r: &Rendered) -> String {
    let mut text = mounted_config(r);
    let files: Vec<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("redis_auth_file:"))
        .map(|p| p.trim().to_string())
        .collect();
    for (i, path) in files.iter().enumerate() {
        let local = std::env::temp_dir().join(format!(
            "slotline-deploy-{}-{}-{i}",
            std::process::id(),
            r.name.replace('/', "-")
        ));
        std::fs::write(&local, mounted_secret(r, path)).expect("write the secret");
        text = text.replace(path.as_str(), &local.display().to_string());
    }
    text
}

fn port_of(listen: &str) -> i32 {
    listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {listen:?}"))
}

#[test]
fn every_kustomization_renders_into_typed_objects() {
    for dir in kustomizations() {
        let r = render(&dir);
        slotline(&r);
        assert!(!r.services.is_empty() && !r.config_maps.is_empty());
    }
}

#[test]
fn a_misspelt_field_is_caught() {
    let doc: Value = serde_yaml::from_str(
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  selectr: {a: b}\n  ports: [{port: 1}]\n",
    )
    .unwrap();
    let caught = std::panic::catch_unwind(|| typed::<Service>(&doc, "typo"));
    assert!(caught.is_err(), "spec.selectr must be refused");
}

#[test]
fn probes_ports_and_config_agree() {
    for dir in kustomizations() {
        let r = render(&dir);
        let (_, _, c) = slotline(&r);
        let text = config_in_pod(&r);

        // slotline's own validation, exactly as `slotline check` does it.
        let parsed = match slotline::config::Config::from_yaml(&text) {
            Ok(config) => config,
            Err(e) => panic!("deploy/{dir}: the ConfigMap's config is invalid: {e}"),
        };
        // A backend user is restricted on the nodes (config/redis-users.acl): Redis itself refuses
        // the dangerous commands, scripts included, and its password is the one slotline uses.
        for pool in parsed.pools.values() {
            if let Some(user) = &pool.redis_username {
                let acl = redis_acl(&r).unwrap_or_else(|| {
                    panic!("deploy/{dir}: redis_username {user}, but no Redis ACL file")
                });
                let line = acl
                    .lines()
                    .find(|l| l.starts_with(&format!("user {user} ")))
                    .unwrap_or_else(|| panic!("deploy/{dir}: no user {user} in the ACL:\n{acl}"));
                assert!(line.contains("-@dangerous"), "deploy/{dir}: {line}");
                let password = pool.redis_auth.as_deref().expect("a password");
                assert!(
                    line.split_whitespace().any(|w| w == format!(">{password}")),
                    "deploy/{dir}: {user}'s password differs from slotline's"
                );
            }
        }
        let config: Value = serde_yaml::from_str(&text).expect("config YAML");
        let admin_port = port_of(config["admin"]["listen"].as_str().unwrap_or_else(|| {
            panic!("deploy/{dir}: no admin.listen, so the probes have nothing to reach")
        }));
        let pools = config["pools"].as_mapping().expect("pools");
        assert_eq!(pools.len(), 1, "deploy/{dir}: one pool behind the Service");
        let (_, pool) = pools.iter().next().expect("a pool");
        let redis_port = port_of(pool["listen"].as_str().expect("pool listen"));

        assert_eq!(container_port(c, "admin"), admin_port, "deploy/{dir}");
        assert_eq!(container_port(c, "redis"), redis_port, "deploy/{dir}");
        let (ready_path, ready_port) = http_probe(c, c.readiness_probe.as_ref(), "readiness");
        let (live_path, live_port) = http_probe(c, c.liveness_probe.as_ref(), "liveness");
        assert_eq!((ready_path.as_str(), ready_port), ("/readyz", admin_port));
        assert_eq!((live_path.as_str(), live_port), ("/healthz", admin_port));
        assert!(
            ADMIN_PATHS.contains(&ready_path.as_str()) && ADMIN_PATHS.contains(&live_path.as_str())
        );

        let spec = r.proxy_service().spec.as_ref().expect("service spec");
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"), "deploy/{dir}");
        assert!(
            r.selects_proxy(spec.selector.as_ref()),
            "deploy/{dir}: the Service selects the pods"
        );
        let svc_port = |name: &str| {
            spec.ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("deploy/{dir}: Service has no port {name}"))
        };
        let redis = svc_port("redis");
        assert_eq!(redis.port, 6379, "clients use the usual Redis port");
        assert_eq!(
            resolve(c, redis.target_port.as_ref().expect("target")),
            redis_port
        );
        let metrics = svc_port("metrics");
        assert_eq!(metrics.port, 9121);
        assert_eq!(
            resolve(c, metrics.target_port.as_ref().expect("target")),
            admin_port
        );

        // Every backend named by a pod DNS name is a pod the example creates.
        let mut hosts: Vec<String> = Vec::new();
        let servers = pool["servers"]
            .as_sequence()
            .or_else(|| pool["sentinel"]["servers"].as_sequence());
        for line in servers.into_iter().flatten() {
            let line = line.as_str().expect("server line");
            hosts.push(line.split(':').next().unwrap_or_default().to_string());
        }
        if dir.starts_with("examples/") {
            for host in &hosts {
                let (pod, service) = host
                    .split_once('.')
                    .unwrap_or_else(|| panic!("deploy/{dir}: {host} is not pod.service"));
                let found = r.stateful_sets.iter().any(|s| {
                    let spec = &s.spec;
                    let name = s.metadata.name.clone().unwrap_or_default();
                    spec.service_name.as_deref() == Some(service)
                        && pod
                            .strip_prefix(&format!("{name}-"))
                            .and_then(|i| i.parse::<i32>().ok())
                            .is_some_and(|i| i < spec.replicas.unwrap_or(1))
                });
                assert!(
                    found,
                    "deploy/{dir}: {host} is no pod of a StatefulSet here"
                );
                assert!(
                    r.services
                        .iter()
                        .any(|s| s.metadata.name.as_deref() == Some(service)
                            && s.spec.as_ref().and_then(|s| s.cluster_ip.as_deref())
                                == Some("None")),
                    "deploy/{dir}: {service} is not a headless Service here"
                );
            }
        }
    }
}

#[test]
fn rbac_grants_nothing_beyond_discovery_reads() {
    for dir in kustomizations() {
        let r = render(&dir);
        let (_, pod, _) = slotline(&r);
        let sa = pod
            .service_account_name
            .clone()
            .expect("serviceAccountName");
        assert!(
            r.service_accounts
                .iter()
                .any(|s| s.metadata.name.as_deref() == Some(sa.as_str())),
            "deploy/{dir}: the ServiceAccount {sa} exists"
        );
        let allowed: BTreeMap<&str, &str> =
            [("endpointslices", "discovery.k8s.io"), ("endpoints", "")].into();
        for role in &r.roles {
            for rule in role.rules.iter().flatten() {
                for verb in &rule.verbs {
                    assert!(
                        ["get", "list", "watch"].contains(&verb.as_str()),
                        "deploy/{dir}: verb {verb} granted"
                    );
                }
                assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
                let groups = rule.api_groups.clone().unwrap_or_default();
                for resource in rule.resources.iter().flatten() {
                    let group = allowed
                        .get(resource.as_str())
                        .unwrap_or_else(|| panic!("deploy/{dir}: access to {resource} granted"));
                    assert_eq!(groups, [group.to_string()], "deploy/{dir}: {resource}");
                }
            }
        }
        for binding in &r.role_bindings {
            assert_eq!(binding.role_ref.kind, "Role", "namespaced only");
            assert!(r
                .roles
                .iter()
                .any(|role| role.metadata.name.as_deref() == Some(binding.role_ref.name.as_str())));
            for subject in binding.subjects.iter().flatten() {
                assert_eq!(
                    (subject.kind.as_str(), subject.name.as_str()),
                    ("ServiceAccount", sa.as_str()),
                    "deploy/{dir}: only slotline's account is bound"
                );
                assert_eq!(
                    subject.namespace,
                    slotline(&r).0.metadata.namespace,
                    "deploy/{dir}: bound in the proxy's namespace"
                );
            }
        }
    }
}

/// Every namespace a rendered config follows a Service in (its pools' and their sentinels'
/// `kubernetes:`, the proxy's own namespace when none is named) holds a Role that lets slotline's
/// ServiceAccount list and watch what it reads there, and a RoleBinding that binds it.
#[test]
fn every_watched_namespace_has_the_rules() {
    for dir in kustomizations() {
        let r = render(&dir);
        let (deployment, pod, _) = slotline(&r);
        let own_ns = deployment.metadata.namespace.clone().unwrap_or_default();
        let sa = pod
            .service_account_name
            .clone()
            .expect("serviceAccountName");
        let config = slotline::config::Config::from_yaml(&config_in_pod(&r)).expect("config");
        let watched = config.pools.values().flat_map(|p| {
            p.kubernetes
                .iter()
                .chain(p.sentinel.iter().flat_map(|s| s.kubernetes.iter()))
        });
        for k8s in watched {
            let ns = k8s.namespace.clone().unwrap_or_else(|| own_ns.clone());
            let (group, resource) = match k8s.api {
                Some(slotline::config::EndpointsApi::Endpoints) => ("", "endpoints"),
                _ => ("discovery.k8s.io", "endpointslices"),
            };
            let grants = |role: &Role| {
                role.metadata.namespace.as_deref() == Some(ns.as_str())
                    && ["list", "watch"].iter().all(|verb| {
                        role.rules.iter().flatten().any(|rule| {
                            rule.verbs.iter().any(|v| v == verb)
                                && rule.resources.iter().flatten().any(|r| r == resource)
                                && rule.api_groups.iter().flatten().any(|g| g == group)
                        })
                    })
            };
            let bound = r.role_bindings.iter().any(|b| {
                b.metadata.namespace.as_deref() == Some(ns.as_str())
                    && r.roles.iter().any(|role| {
                        role.metadata.name.as_deref() == Some(b.role_ref.name.as_str())
                            && grants(role)
                    })
                    && b.subjects.iter().flatten().any(|s| {
                        s.kind == "ServiceAccount"
                            && s.name == sa
                            && s.namespace.as_deref() == Some(own_ns.as_str())
                    })
            });
            assert!(
                bound,
                "deploy/{dir}: slotline follows service {} in namespace {ns}, but no Role there lets \
                 ServiceAccount {own_ns}/{sa} list and watch {resource}",
                k8s.service
            );
        }
    }
}

#[test]
fn the_proxy_runs_locked_down_and_spread_with_a_drain_that_fits() {
    for dir in kustomizations() {
        let r = render(&dir);
        let (d, pod, c) = slotline(&r);
        let spec = &d.spec;
        assert!(spec.replicas.unwrap_or(1) >= 2, "deploy/{dir}: replicas");

        let pod_sc = pod.security_context.as_ref().expect("pod securityContext");
        assert_eq!(pod_sc.run_as_non_root, Some(true), "deploy/{dir}");
        assert!(pod_sc.run_as_user.is_some_and(|u| u != 0));
        let sc = c
            .security_context
            .as_ref()
            .expect("container securityContext");
        assert_eq!(sc.run_as_non_root, Some(true), "deploy/{dir}");
        assert_eq!(sc.read_only_root_filesystem, Some(true), "deploy/{dir}");
        assert_eq!(sc.allow_privilege_escalation, Some(false), "deploy/{dir}");
        assert_ne!(sc.privileged, Some(true));
        let caps = sc.capabilities.as_ref().expect("capabilities");
        assert_eq!(
            caps.drop.clone().unwrap_or_default(),
            ["ALL"],
            "deploy/{dir}"
        );
        assert!(caps.add.as_ref().is_none_or(|a| a.is_empty()));

        let resources = c.resources.as_ref().expect("resources");
        for what in ["cpu", "memory"] {
            assert!(
                resources
                    .requests
                    .as_ref()
                    .is_some_and(|r| r.contains_key(what)),
                "deploy/{dir}: {what} request"
            );
        }
        assert!(resources
            .limits
            .as_ref()
            .is_some_and(|l| l.contains_key("memory")));

        let spread = pod.topology_spread_constraints.clone().unwrap_or_default();
        assert!(
            spread
                .iter()
                .any(|t| t.topology_key == "kubernetes.io/hostname"),
            "deploy/{dir}: spread over nodes"
        );
        for t in &spread {
            let labels = t
                .label_selector
                .as_ref()
                .and_then(|s| s.match_labels.as_ref());
            assert!(
                r.selects_proxy(labels),
                "deploy/{dir}: spread counts the proxy's pods"
            );
        }

        // Kubernetes waits terminationGracePeriodSeconds in all, preStop included; slotline's drain
        // starts after preStop and takes up to shutdown_grace.
        let config: Value = serde_yaml::from_str(&mounted_config(&r)).expect("config");
        let grace_ms = config["shutdown_grace"].as_u64().unwrap_or(10_000);
        let pre_stop = c
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .expect("preStop");
        let sleep_s = pre_stop
            .sleep
            .as_ref()
            .map(|s| s.seconds)
            .expect("preStop sleep (the image has no shell)");
        assert!(sleep_s > 0);
        let termination = pod
            .termination_grace_period_seconds
            .expect("terminationGracePeriodSeconds");
        assert!(
            termination * 1000 >= sleep_s * 1000 + grace_ms as i64,
            "deploy/{dir}: terminationGracePeriodSeconds {termination} < preStop {sleep_s} s + shutdown_grace {grace_ms} ms"
        );
        assert!(
            termination * 1000 <= sleep_s * 1000 + grace_ms as i64 + 10_000,
            "deploy/{dir}: terminationGracePeriodSeconds {termination} is far above what the drain uses"
        );
    }
}

#[test]
fn pdb_hpa_service_monitor_and_network_policy_point_at_the_proxy() {
    for dir in kustomizations() {
        let r = render(&dir);
        let (_, _, c) = slotline(&r);
        let selects = |labels| r.selects_proxy(labels);

        let pdb = r
            .pdbs
            .first()
            .unwrap_or_else(|| panic!("deploy/{dir}: no PodDisruptionBudget"));
        let pdb_spec = pdb.spec.as_ref().expect("pdb spec");
        assert!(selects(
            pdb_spec
                .selector
                .as_ref()
                .and_then(|s| s.match_labels.as_ref())
        ));
        assert!(pdb_spec.min_available.is_some() || pdb_spec.max_unavailable.is_some());

        let hpa = r
            .hpas
            .first()
            .unwrap_or_else(|| panic!("deploy/{dir}: no HPA"));
        let hpa_spec = &hpa.spec;
        assert_eq!(
            (
                hpa_spec.scale_target_ref.kind.as_str(),
                hpa_spec.scale_target_ref.name.as_str()
            ),
            ("Deployment", "slotline")
        );
        assert!(
            hpa_spec.min_replicas.unwrap_or(1) >= 2,
            "never below two replicas"
        );
        assert!(hpa_spec.max_replicas >= hpa_spec.min_replicas.unwrap_or(1));

        let svc = r.proxy_service();
        let svc_labels = svc.metadata.labels.clone().unwrap_or_default();
        let svc_ports: Vec<String> = svc
            .spec
            .iter()
            .flat_map(|s| s.ports.iter().flatten())
            .filter_map(|p| p.name.clone())
            .collect();
        for sm in &r.service_monitors {
            let known = ["apiVersion", "kind", "metadata", "spec"];
            for key in sm.as_mapping().expect("object").keys() {
                assert!(
                    known.contains(&key.as_str().unwrap_or("")),
                    "ServiceMonitor key {key:?}"
                );
            }
            for key in sm["spec"].as_mapping().expect("spec").keys() {
                assert!(
                    ["selector", "endpoints", "namespaceSelector", "jobLabel"]
                        .contains(&key.as_str().unwrap_or("")),
                    "deploy/{dir}: ServiceMonitor spec.{key:?}"
                );
            }
            let wanted = sm["spec"]["selector"]["matchLabels"]
                .as_mapping()
                .expect("matchLabels");
            for (k, v) in wanted {
                assert_eq!(
                    svc_labels.get(k.as_str().unwrap_or("")).map(String::as_str),
                    v.as_str()
                );
            }
            let endpoints = sm["spec"]["endpoints"].as_sequence().expect("endpoints");
            assert!(!endpoints.is_empty());
            for e in endpoints {
                for key in e.as_mapping().expect("endpoint").keys() {
                    assert!(
                        ["port", "path", "interval", "scrapeTimeout", "scheme"]
                            .contains(&key.as_str().unwrap_or("")),
                        "deploy/{dir}: ServiceMonitor endpoint key {key:?}"
                    );
                }
                let port = e["port"].as_str().expect("endpoint port name");
                assert!(
                    svc_ports.iter().any(|p| p == port),
                    "deploy/{dir}: port {port}"
                );
                assert_eq!(e["path"].as_str(), Some("/metrics"));
            }
        }
        assert_eq!(
            r.service_monitors.len(),
            1,
            "deploy/{dir}: one ServiceMonitor"
        );

        let np = r
            .network_policies
            .first()
            .unwrap_or_else(|| panic!("deploy/{dir}: no NetworkPolicy"));
        let np_spec = np.spec.as_ref().expect("np spec");
        assert!(selects(
            np_spec
                .pod_selector
                .as_ref()
                .and_then(|s| s.match_labels.as_ref())
        ));
        let open: Vec<i32> = np_spec
            .ingress
            .iter()
            .flatten()
            .flat_map(|rule| rule.ports.iter().flatten())
            .filter_map(|p| p.port.as_ref().map(|port| resolve(c, port)))
            .collect();
        for port in [container_port(c, "redis"), container_port(c, "admin")] {
            assert!(
                open.contains(&port),
                "deploy/{dir}: ingress to {port} allowed"
            );
        }
    }
}

#[test]
fn dockerfile_is_multi_stage_small_and_non_root() {
    let text = std::fs::read_to_string(deploy_dir().join("Dockerfile")).expect("deploy/Dockerfile");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    let froms: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("FROM "))
        .collect();
    assert!(froms.len() >= 2, "a build stage and a final stage");
    let last = &lines[*froms.last().expect("a FROM")..];
    let base = last[0];
    assert!(
        ["distroless", "-slim", "scratch", "alpine"]
            .iter()
            .any(|s| base.contains(s)),
        "a small final image: {base}"
    );
    assert!(!base.contains("rust:"), "no toolchain in the final image");
    let user = last
        .iter()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the final stage sets USER");
    let uid = user.split(':').next().unwrap_or("0");
    assert!(uid != "0" && uid != "root", "non-root user: {user}");
    assert!(last
        .iter()
        .any(|l| l.starts_with("COPY --from=") && l.contains("slotline")));
    assert!(last
        .iter()
        .any(|l| l.starts_with("ENTRYPOINT") && l.contains("slotline")));
}

/// The base runs the image deploy/image.sh builds: `slotline:VERSION` (pushed as
/// REGISTRY/slotline:VERSION), the same user as the Dockerfile's, at this crate's version.
#[test]
fn the_base_runs_the_image_the_script_builds() {
    let script = std::fs::read_to_string(deploy_dir().join("image.sh")).expect("deploy/image.sh");
    assert!(
        script.contains("oci-archive:$out:slotline:$version"),
        "the image's name and tag"
    );
    assert!(script.contains("--user 65532:65532"));
    let r = render("base");
    let (_, _, c) = slotline(&r);
    let image = c.image.clone().expect("an image");
    let (name, tag) = image.rsplit_once(':').expect("a tagged image");
    assert!(name == "slotline" || name.ends_with("/slotline"), "{image}");
    assert_eq!(tag, env!("CARGO_PKG_VERSION"), "the base's image tag");
}

#[test]
fn grafana_dashboard_uses_exported_metric_names() {
    // The metrics contract (src/metrics): every name a dashboard may use.
    const NAMES: &[&str] = METRIC_NAMES;
    let path = deploy_dir().join("grafana/slotline-dashboard.json");
    let text = std::fs::read_to_string(&path).expect("the dashboard");
    // JSON is YAML, so the YAML parser reads it.
    let dash: Value = serde_yaml::from_str(&text).expect("dashboard JSON");
    let panels = dash["panels"].as_sequence().expect("panels");
    let mut used = BTreeSet::new();
    for panel in panels {
        for target in panel["targets"].as_sequence().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for (i, _) in expr.match_indices("slotline_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .filter(|b| NAMES.contains(b))
                    .unwrap_or(&name)
                    .to_string();
                assert!(
                    NAMES.contains(&base.as_str()),
                    "panel {:?} uses {name}",
                    panel["title"]
                );
                used.insert(base);
            }
        }
    }
    for needed in [
        "slotline_requests_total",
        "slotline_errors_total",
        "slotline_request_duration_seconds",
        "slotline_client_connections",
        "slotline_backend_queued_requests",
        "slotline_redirects_total",
        "slotline_backend_ejections_total",
        "slotline_topology_refreshes_total",
    ] {
        assert!(used.contains(needed), "the dashboard shows {needed}");
    }
}

/// The Secret (and its key) a file at `path` comes from in `pod`'s container `c`, if it is on a
/// Secret volume (`items` mapping paths back to keys).
fn secret_file(pod: &PodSpec, c: &Container, path: &str) -> Option<(String, String)> {
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| path.starts_with(&format!("{}/", m.mount_path)))?;
    let file = &path[mount.mount_path.len() + 1..];
    let secret = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)?
        .secret
        .clone()?;
    let key = match &secret.items {
        Some(items) => items.iter().find(|i| i.path == file)?.key.clone(),
        None => file.to_string(),
    };
    Some((secret.secret_name?, key))
}

/// Whether a certificate for DNS name `pattern` (one leading `*.` label at most) covers `host`.
fn covers(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(rest) => host
            .split_once('.')
            .is_some_and(|(label, domain)| !label.is_empty() && domain == rest),
        None => pattern == host,
    }
}

/// In a kustomization with TLS, every certificate file slotline and the nodes read is a key
/// cert-manager writes into a Secret a Certificate names, each Certificate's issuer is there, and
/// the nodes' certificate covers the host names slotline verifies them by.
#[test]
fn tls_files_come_from_certificates_that_cover_the_names_used() {
    let mut checked = 0;
    for dir in kustomizations() {
        let r = render(&dir);
        let config = slotline::config::Config::from_yaml(&config_in_pod(&r)).expect("config");
        let (_, pod, c) = slotline(&r);
        let secret_of_certificate = |secret: &str| {
            r.certificates
                .iter()
                .find(|cert| cert["spec"]["secretName"].as_str() == Some(secret))
        };
        for (name, pool) in &config.pools {
            let mut files = Vec::new();
            if let Some(tls) = &pool.tls {
                files.extend([&tls.cert_file, &tls.key_file]);
                files.extend(tls.client_ca_file.as_ref());
            }
            if let Some(tls) = &pool.backend_tls {
                files.extend(
                    [&tls.ca_file, &tls.cert_file, &tls.key_file]
                        .into_iter()
                        .flatten(),
                );
            }
            for file in files {
                let file = file.display().to_string();
                let (secret, key) = secret_file(pod, c, &file).unwrap_or_else(|| {
                    panic!("deploy/{dir}: pool {name} reads {file}, which is on no Secret volume")
                });
                assert!(
                    secret_of_certificate(&secret).is_some(),
                    "deploy/{dir}: {file} comes from Secret {secret}, which no Certificate keeps"
                );
                assert!(
                    ["tls.crt", "tls.key", "ca.crt"].contains(&key.as_str()),
                    "deploy/{dir}: {file} is key {key} of {secret}, which cert-manager does not write"
                );
                checked += 1;
            }
            let Some(backend) = &pool.backend_tls else {
                continue;
            };
            assert!(
                !backend.insecure_skip_verify,
                "deploy/{dir}: an example verifies its nodes"
            );
            // The nodes present the certificate of the Secret their StatefulSet mounts on the
            // redis.conf's tls-cert-file: it must cover every host slotline connects to.
            let conf: String = r
                .config_maps
                .iter()
                .filter_map(|m| m.data.as_ref())
                .flat_map(|d| d.values())
                .cloned()
                .collect();
            let cert_file = conf
                .lines()
                .find_map(|l| l.strip_prefix("tls-cert-file "))
                .unwrap_or_else(|| {
                    panic!("deploy/{dir}: backend_tls, but no node has tls-cert-file")
                })
                .trim()
                .to_string();
            let set = r.stateful_sets.first().expect("the nodes' StatefulSet");
            let node_pod = set.spec.template.spec.as_ref().expect("pod");
            let node = &node_pod.containers[0];
            let (secret, _) = secret_file(node_pod, node, &cert_file)
                .unwrap_or_else(|| panic!("deploy/{dir}: {cert_file} is on no Secret volume"));
            let cert = secret_of_certificate(&secret)
                .unwrap_or_else(|| panic!("deploy/{dir}: no Certificate keeps {secret}"));
            let names: Vec<&str> = cert["spec"]["dnsNames"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            for server in &pool.servers {
                let host = server.rsplit_once(':').map_or(server.as_str(), |(h, _)| h);
                let host = backend.server_name.as_deref().unwrap_or(host);
                assert!(
                    names.iter().any(|n| covers(n, host)),
                    "deploy/{dir}: the nodes' certificate ({names:?}) does not cover {host}"
                );
            }
        }
        for cert in &r.certificates {
            let issuer = cert["spec"]["issuerRef"]["name"]
                .as_str()
                .unwrap_or_default();
            assert!(
                r.issuers
                    .iter()
                    .any(|i| i["metadata"]["name"].as_str() == Some(issuer)),
                "deploy/{dir}: Certificate {:?} names Issuer {issuer}, which is not here",
                cert["metadata"]["name"]
            );
        }
    }
    assert!(checked >= 3, "no kustomization has TLS to check");
}
