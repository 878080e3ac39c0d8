//! TLS setup for SMTP: how `smtp.starttls_policy` and `smtp.implicit_tls` map to a
//! [`Security`], and the trust roots (the OS store, honouring `SSL_CERT_FILE` and
//! `SSL_CERT_DIR`, plus any extra test CAs).

use std::sync::Arc;

use lettre::transport::smtp::Error as SmtpError;
use lettre::transport::smtp::client::{Certificate, TlsParameters};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::dial::Security;
use crate::config::{SmtpConfig, StartTlsPolicy};

/// The encryption `config` asks for, trusting the OS store plus `extra_pem`.
pub(super) fn security(config: &SmtpConfig, extra_pem: &[Vec<u8>]) -> Result<Security, String> {
    if config.implicit_tls {
        return implicit_tls_config(extra_pem).map(Security::Implicit);
    }
    let params = || tls_parameters(&config.host, extra_pem).map_err(|e| e.to_string());
    Ok(match config.starttls {
        StartTlsPolicy::Mandatory => Security::Required(params()?),
        StartTlsPolicy::Opportunistic => Security::Opportunistic(params()?),
        StartTlsPolicy::Disabled => Security::None,
    })
}

/// STARTTLS parameters: the OS trust store (lettre reads it) plus `extra_pem`.
fn tls_parameters(host: &str, extra_pem: &[Vec<u8>]) -> Result<TlsParameters, SmtpError> {
    let mut builder = TlsParameters::builder(host.to_owned());
    for pem in extra_pem {
        builder = builder.add_root_certificate(Certificate::from_pem(pem)?);
    }
    builder.build_rustls()
}

/// The rustls config for implicit TLS: the OS trust store plus `extra_pem`, as for STARTTLS.
fn implicit_tls_config(extra_pem: &[Vec<u8>]) -> Result<Arc<rustls::ClientConfig>, String> {
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
