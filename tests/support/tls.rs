//! Certificates for TLS tests, made with the `openssl` command: a CA, server certificates for
//! loopback (IP 127.0.0.1, `localhost` and the test host names), client certificates with a common
//! name, and a second CA whose certificates slotline must refuse.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::TempDir;

/// A certificate and its key.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA and the certificates it signed, in a temp dir.
pub struct Certs {
    dir: TempDir,
    /// The CA's certificate: what clients and slotline verify against.
    pub ca: PathBuf,
    ca_key: PathBuf,
    /// For 127.0.0.1, localhost and *.slotline.test.
    pub server: Pair,
    /// A client certificate with common name `app1`.
    pub client: Pair,
    /// Another CA, which signed `stranger`: a client certificate nobody trusts.
    pub other_ca: PathBuf,
    pub stranger: Pair,
}

const SERVER_SAN: &str = "IP:127.0.0.1,DNS:localhost,DNS:*.slotline.test";

/// `openssl req` arguments for a new P-256 key, unencrypted.
const NEW_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
];

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl ({e}); is the openssl package installed?"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Certs {
    pub fn make() -> Certs {
        let dir = TempDir::new("certs");
        let ca = Certs::make_ca(dir.path(), "ca", "slotline test CA");
        let other = Certs::make_ca(dir.path(), "other-ca", "somebody else's CA");
        let mut certs = Certs {
            ca: ca.cert,
            ca_key: ca.key,
            server: Pair {
                cert: PathBuf::new(),
                key: PathBuf::new(),
            },
            client: Pair {
                cert: PathBuf::new(),
                key: PathBuf::new(),
            },
            other_ca: other.cert.clone(),
            stranger: Pair {
                cert: PathBuf::new(),
                key: PathBuf::new(),
            },
            dir,
        };
        certs.server = certs.issue("server", "redis", Some(SERVER_SAN));
        certs.client = certs.issue("client", "app1", None);
        certs.stranger = Certs::sign(certs.dir.path(), "stranger", "app1", None, &other);
        certs
    }

    fn make_ca(dir: &Path, name: &str, cn: &str) -> Pair {
        let (cert, key) = (format!("{name}.crt"), format!("{name}.key"));
        let subject = format!("/CN={cn}");
        let args = [
            &["req", "-x509"][..],
            &NEW_KEY,
            &["-keyout", &key, "-out", &cert],
        ]
        .concat()
        .into_iter()
        .chain([
            "-days",
            "3",
            "-subj",
            &subject,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ])
        .collect::<Vec<_>>();
        openssl(dir, &args);
        Pair {
            cert: dir.join(cert),
            key: dir.join(key),
        }
    }

    /// A new certificate signed by this CA: for servers with `san`, for clients without.
    pub fn issue(&self, name: &str, cn: &str, san: Option<&str>) -> Pair {
        let ca = Pair {
            cert: self.ca.clone(),
            key: self.ca_key.clone(),
        };
        Certs::sign(self.dir.path(), name, cn, san, &ca)
    }

    fn sign(dir: &Path, name: &str, cn: &str, san: Option<&str>, ca: &Pair) -> Pair {
        let (cert, key, csr, ext) = (
            format!("{name}.crt"),
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.ext"),
        );
        let subject = format!("/CN={cn}");
        let args = [
            &["req"][..],
            &NEW_KEY,
            &["-keyout", &key, "-out", &csr, "-subj", &subject],
        ]
        .concat();
        openssl(dir, &args);
        let usage = match san {
            Some(san) => format!("subjectAltName={san}\nextendedKeyUsage=serverAuth,clientAuth\n"),
            None => "extendedKeyUsage=clientAuth\n".to_string(),
        };
        std::fs::write(
            dir.join(&ext),
            format!(
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n{usage}"
            ),
        )
        .expect("write the extensions file");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca.cert.display().to_string(),
                "-CAkey",
                &ca.key.display().to_string(),
                "-CAcreateserial",
                "-out",
                &cert,
                "-days",
                "3",
                "-extfile",
                &ext,
            ],
        );
        Pair {
            cert: dir.join(cert),
            key: dir.join(key),
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `redis-server` arguments (but `--tls-port`) for TLS with the server certificate, which
    /// also serves as its client certificate (replication, the cluster bus); clients may present
    /// a certificate (and must, with `require_clients`).
    pub fn redis_args(&self, require_clients: bool) -> Vec<String> {
        let auth = if require_clients { "yes" } else { "optional" };
        [
            "--tls-cert-file",
            &self.server.cert.display().to_string(),
            "--tls-key-file",
            &self.server.key.display().to_string(),
            "--tls-ca-cert-file",
            &self.ca.display().to_string(),
            "--tls-auth-clients",
            auth,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// The certificate lines of a redis.conf or sentinel.conf (see [`redis_args`](Self::redis_args)).
    pub fn conf_lines(&self) -> String {
        self.redis_args(false)
            .chunks(2)
            .map(|kv| format!("{} {}\n", kv[0].trim_start_matches("--"), kv[1]))
            .collect()
    }

    /// `redis-cli` arguments for TLS, verified against the CA, with `client`'s certificate.
    pub fn cli_args(&self, client: Option<&Pair>) -> Vec<String> {
        let mut args = vec![
            "--tls".to_string(),
            "--cacert".to_string(),
            self.ca.display().to_string(),
        ];
        if let Some(pair) = client {
            args.extend([
                "--cert".to_string(),
                pair.cert.display().to_string(),
                "--key".to_string(),
                pair.key.display().to_string(),
            ]);
        }
        args
    }
}
