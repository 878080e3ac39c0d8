//! Throwaway TLS material: a CA and a server certificate for `localhost` / `127.0.0.1`.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A test CA and one server certificate it signed, all PEM.
#[derive(Clone)]
pub struct TestPki {
    /// The CA certificate: what clients must trust.
    pub ca_pem: String,
    /// The server certificate (for `localhost` and `127.0.0.1`).
    pub server_cert_pem: String,
    /// The server's private key.
    pub server_key_pem: String,
}

/// Paths of [`TestPki`] written to disk.
#[derive(Debug, Clone)]
pub struct PkiFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl TestPki {
    /// A fresh CA and a server certificate for `localhost` and `127.0.0.1`.
    pub fn generate() -> Result<Self, rcgen::Error> {
        Self::generate_for(&["localhost", "127.0.0.1"])
    }

    /// A fresh CA and a server certificate for `names` (DNS names or IP addresses).
    pub fn generate_for(names: &[&str]) -> Result<Self, rcgen::Error> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "teleport-email test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut server_params = CertificateParams::new(names)?;
        server_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let server_key = KeyPair::generate()?;
        let server_cert = server_params.signed_by(&server_key, &ca)?;
        Ok(Self {
            ca_pem: ca.pem(),
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
        })
    }

    /// A rustls server config presenting the server certificate (ring provider).
    pub fn server_config(&self) -> io::Result<Arc<rustls::ServerConfig>> {
        let certs = CertificateDer::pem_slice_iter(self.server_cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(io::Error::other)?;
        let key = PrivateKeyDer::from_pem_slice(self.server_key_pem.as_bytes())
            .map_err(io::Error::other)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(io::Error::other)?;
        Ok(Arc::new(config))
    }

    /// The CA as DER, for a client's root store.
    pub fn ca_der(&self) -> io::Result<CertificateDer<'static>> {
        CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).map_err(io::Error::other)
    }

    /// Writes `ca.pem`, `server.pem` and `server.key` into `dir`.
    pub fn write_to(&self, dir: &Path) -> io::Result<PkiFiles> {
        let files = PkiFiles {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        };
        std::fs::write(&files.ca, &self.ca_pem)?;
        std::fs::write(&files.server_cert, &self.server_cert_pem)?;
        std::fs::write(&files.server_key, &self.server_key_pem)?;
        Ok(files)
    }
}
