//! TLS setup for SMTP: how `smtp.starttls_policy` and `smtp.implicit_tls` map to a
//! [`Security`], and the trust roots (the OS store, honouring `SSL_CERT_FILE` and
//! `SSL_CERT_DIR`, plus any extra test CAs).

use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::dial::Security;
use crate::config::{SmtpConfig, StartTlsPolicy};

/// The encryption `config` asks for, trusting the OS store plus `extra_pem`.
pub(super) fn security(config: &SmtpConfig, extra_pem: &[Vec<u8>]) -> Result<Security, String> {
    let tls = || client_config(extra_pem);
    if config.implicit_tls {
        return tls().map(Security::Implicit);
    }
    Ok(match config.starttls {
        StartTlsPolicy::Mandatory => Security::Required(tls()?),
        StartTlsPolicy::Opportunistic => Security::Opportunistic(tls()?),
        StartTlsPolicy::Disabled => Security::None,
    })
}

/// The rustls config for implicit TLS and STARTTLS: the OS trust store plus `extra_pem`.
fn client_config(extra_pem: &[Vec<u8>]) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    for pem in extra_pem {
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("extra root certificate: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("extra root certificate: {e}"))?;
        }
    }
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
