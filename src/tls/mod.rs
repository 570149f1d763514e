//! TLS with rustls: what a pool's clients speak to it ([`Acceptor`]) and what it speaks to its nodes
//! and sentinels ([`Connector`]).
//!
//! Both read their PEM files at start (a bad file stops the start) and again whenever a file changes
//! (a Kubernetes Secret update swaps them): new handshakes then use the new certificates, connections
//! already up keep theirs, and a bad new file is reported while the old configuration stays.

mod files;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use tokio::net::TcpStream;

use crate::config::{BackendTls, ListenTls};

pub use tokio_rustls::client::TlsStream as ClientStream;
pub use tokio_rustls::server::TlsStream as ServerStream;

/// What is wrong with a pool's certificate files, as its start would find it (`slotline check`).
pub fn check(pool: &crate::config::PoolConfig) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(Err(e)) = pool.tls.as_ref().map(server_config) {
        problems.push(format!("tls: {e}"));
    }
    if let Some(Err(e)) = pool.backend_tls.as_ref().map(client_config) {
        problems.push(format!("backend_tls: {e}"));
    }
    problems
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS side of a pool's listeners.
pub struct Acceptor {
    config: ArcSwap<ServerConfig>,
    handshake_timeout: Duration,
    user_from_cert: bool,
}

/// A client after its handshake, and who its certificate says it is (with `tls_user_from_cert`).
pub struct Accepted {
    pub stream: ServerStream<TcpStream>,
    pub user: Option<String>,
}

impl Acceptor {
    /// Reads the files and keeps following them for as long as the acceptor lives.
    pub fn new(settings: &ListenTls) -> Result<Arc<Acceptor>, String> {
        let config = server_config(settings)?;
        let acceptor = Arc::new(Acceptor {
            config: ArcSwap::from_pointee(config),
            handshake_timeout: Duration::from_millis(settings.handshake_timeout),
            user_from_cert: settings.tls_user_from_cert,
        });
        let files = [
            Some(&settings.cert_file),
            Some(&settings.key_file),
            settings.client_ca_file.as_ref(),
        ];
        let settings = settings.clone();
        crate::follow::follow(
            "tls",
            files.into_iter().flatten().cloned().collect(),
            Arc::downgrade(&acceptor),
            move || server_config(&settings),
            |acceptor: &Acceptor, config| acceptor.config.store(Arc::new(config)),
        );
        Ok(acceptor)
    }

    /// The handshake, within `handshake_timeout`: a client that stalls, speaks plaintext or sends
    /// garbage costs only its own connection.
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<Accepted> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.load_full());
        let stream = tokio::time::timeout(self.handshake_timeout, acceptor.accept(tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        let user = match self.user_from_cert {
            true => stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| files::common_name(leaf)),
            false => None,
        };
        Ok(Accepted { stream, user })
    }
}

fn server_config(settings: &ListenTls) -> Result<ServerConfig, String> {
    let certs = files::certs(&settings.cert_file)?;
    let key = files::key(&settings.key_file)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &settings.client_ca_file {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(files::roots(ca)?, provider())
                    .build()
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "{} and {}: {e}",
            settings.cert_file.display(),
            settings.key_file.display()
        )
    })
}

/// The TLS side of a pool's backend connections.
pub struct Connector {
    config: ArcSwap<ClientConfig>,
    server_name: Option<ServerName<'static>>,
    insecure: bool,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("server_name", &self.server_name)
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl Connector {
    pub fn new(settings: &BackendTls) -> Result<Arc<Connector>, String> {
        let config = client_config(settings)?;
        let server_name = match &settings.server_name {
            Some(name) => Some(
                ServerName::try_from(name.clone())
                    .map_err(|_| format!("server_name {name:?} is not a host name or IP"))?,
            ),
            None => None,
        };
        let connector = Arc::new(Connector {
            config: ArcSwap::from_pointee(config),
            server_name,
            insecure: settings.insecure_skip_verify,
        });
        let files = [&settings.ca_file, &settings.cert_file, &settings.key_file];
        let settings = settings.clone();
        crate::follow::follow(
            "backend_tls",
            files.into_iter().flatten().cloned().collect(),
            Arc::downgrade(&connector),
            move || client_config(&settings),
            |connector: &Connector, config| connector.config.store(Arc::new(config)),
        );
        Ok(connector)
    }

    /// Whether the nodes' certificates go unverified (`insecure_skip_verify`).
    pub fn insecure(&self) -> bool {
        self.insecure
    }

    /// The handshake with the node at `host` (a host name or an IP, as its address names it).
    pub async fn connect(&self, host: &str, tcp: TcpStream) -> io::Result<ClientStream<TcpStream>> {
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => {
                let host = host.trim_start_matches('[').trim_end_matches(']');
                ServerName::try_from(host.to_string()).map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{host:?} cannot be verified: not a host name or IP"),
                    )
                })?
            }
        };
        tokio_rustls::TlsConnector::from(self.config.load_full())
            .connect(name, tcp)
            .await
    }
}

fn client_config(settings: &BackendTls) -> Result<ClientConfig, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if settings.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
    } else {
        let roots = match &settings.ca_file {
            Some(ca) => files::roots(ca)?,
            None => files::system_roots()?,
        };
        builder.with_root_certificates(roots)
    };
    match (&settings.cert_file, &settings.key_file) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(files::certs(cert)?, files::key(key)?)
            .map_err(|e| format!("{} and {}: {e}", cert.display(), key.display())),
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// `insecure_skip_verify`: any certificate is accepted; the handshake's signatures are still
/// checked, so the session is at least encrypted to whoever holds the presented key.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
