//! Reading PEM files into what rustls takes, each error naming the file and what is wrong with it.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

/// A certificate chain, leaf first.
pub(super) fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

pub(super) fn key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The CAs in a PEM file, as roots to verify against.
pub(super) fn roots(path: &Path) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for cert in certs(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a CA certificate: {e}", path.display()))?;
    }
    Ok(Arc::new(roots))
}

/// The system's CA roots (what `ca-certificates` installs).
pub(super) fn system_roots() -> Result<Arc<RootCertStore>, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map(|e| e.to_string())
            .unwrap_or_default();
        return Err(format!(
            "no system CA certificates found ({why}): give backend_tls.ca_file"
        ));
    }
    Ok(Arc::new(roots))
}

/// The subject's common name (OID 2.5.4.3) of a DER certificate: the user a client certificate
/// names. Only reads a certificate the handshake has verified; anything unexpected is None.
pub(super) fn common_name(cert: &[u8]) -> Option<String> {
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    let (_, cert, _) = tlv(cert)?; // Certificate
    let (_, mut tbs, _) = tlv(cert)?; // TBSCertificate
                                      // version [0] (optional), serialNumber, signature, issuer, validity, subject
    let (tag, _, rest) = tlv(tbs)?;
    if tag == 0xa0 {
        tbs = rest;
    }
    for _ in 0..4 {
        tbs = tlv(tbs)?.2;
    }
    let (_, mut subject, _) = tlv(tbs)?;
    let mut name = None;
    while !subject.is_empty() {
        let (_, set, rest) = tlv(subject)?; // RelativeDistinguishedName (SET)
        subject = rest;
        let mut set = set;
        while !set.is_empty() {
            let (_, pair, rest) = tlv(set)?; // AttributeTypeAndValue (SEQUENCE)
            set = rest;
            let (_, oid, value) = tlv(pair)?;
            let (_, value, _) = tlv(value)?;
            if oid == CN {
                // The most specific (last) CN, as OpenSSL's tools show it.
                name = Some(String::from_utf8_lossy(value).into_owned());
            }
        }
    }
    name
}

/// One DER element: its tag, its content, and what follows it.
fn tlv(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |len, &b| (len << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}
