//! A throw-away web PKI for the loopback peers: one CA and server certificates it signs.
//!
//! Teleport's proxy and the nginx balancer each get a certificate from this CA (not Teleport's
//! own self-signed fallback), so a test can verify the web endpoints properly by trusting
//! [`WebPki::ca_pem`] instead of switching verification off.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// A CA whose certificate tests trust for every web endpoint of the harness.
pub struct WebPki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// Paths of a PEM certificate and its PKCS#8 key.
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl WebPki {
    /// Generates a fresh CA (ECDSA P-256).
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} web CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA cert");
        WebPki {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate (PEM), to trust in clients.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Issues a server certificate for `127.0.0.1` and `localhost` and writes it, with its key,
    /// as `<dir>/<stem>.crt` and `<dir>/<stem>.key`.
    pub fn issue_loopback(&self, dir: &Path, stem: &str) -> CertFiles {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &self.issuer).expect("server cert");
        let files = CertFiles {
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
        };
        fs::write(&files.cert, cert.pem()).expect("write cert");
        fs::write(&files.key, key.serialize_pem()).expect("write key");
        files
    }
}
