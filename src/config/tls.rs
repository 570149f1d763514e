//! The TLS settings of a pool: what its clients speak to it (`tls`), and what it speaks to its nodes
//! and sentinels (`backend_tls`). The files are read and checked by [`crate::tls`].

use std::path::PathBuf;

use serde::Deserialize;

/// Clients speak TLS to the pool.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenTls {
    /// A second listener, for TLS only: `listen` (and `replica_listen`) then stay plaintext. Without
    /// it, every listener of the pool speaks TLS.
    #[serde(default)]
    pub listen: Option<String>,
    /// The certificate chain slotline presents (PEM, leaf first).
    pub cert_file: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// When given, clients must present a certificate signed by one of these CAs (PEM).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: the client's certificate's common name is the user it is logged in as
    /// (CLIENT LIST's `user`), and it needs no AUTH.
    #[serde(default)]
    pub tls_user_from_cert: bool,
    /// Milliseconds a client has to complete its handshake.
    #[serde(default = "handshake_timeout")]
    pub handshake_timeout: u64,
}

/// slotline speaks TLS to the pool's nodes (and to its sentinels).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendTls {
    /// The CAs the nodes' certificates are verified against (PEM); default: the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A client certificate for nodes that ask for one (`tls-auth-clients yes`), with `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The name the nodes' certificates are checked for; default: the host of each node's address
    /// (a host name, or an IP for the certificate's IP SANs).
    #[serde(default)]
    pub server_name: Option<String>,
    /// Accept any certificate the nodes present: encryption without authentication, for tests. Said
    /// in a warning at start and in INFO.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

fn handshake_timeout() -> u64 {
    10_000
}

impl ListenTls {
    /// The error names the field below `tls.`.
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        if self.tls_user_from_cert && self.client_ca_file.is_none() {
            return Err((
                "tls_user_from_cert".into(),
                "needs client_ca_file: only a verified certificate names a user".into(),
            ));
        }
        if self.handshake_timeout == 0 || self.handshake_timeout > 600_000 {
            return Err((
                "handshake_timeout".into(),
                "must be between 1 ms and 10 minutes".into(),
            ));
        }
        if let Some(listen) = &self.listen {
            super::split_host_port(listen).map_err(|e| ("listen".to_string(), e))?;
        }
        Ok(())
    }
}

impl BackendTls {
    /// The error names the field below `backend_tls.`.
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err((
                "cert_file".into(),
                "cert_file and key_file go together".into(),
            ));
        }
        if self.insecure_skip_verify && self.ca_file.is_some() {
            return Err((
                "insecure_skip_verify".into(),
                "verifies nothing, so ca_file would be ignored: give one or the other".into(),
            ));
        }
        if let Some(name) = &self.server_name {
            if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
                return Err((
                    "server_name".into(),
                    format!("{name:?} is not a host name or IP"),
                ));
            }
        }
        Ok(())
    }
}
