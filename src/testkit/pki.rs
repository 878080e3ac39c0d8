//! A cluster's certificate authorities for tests, minted like Teleport's: Host and User CAs with
//! CN = O = cluster name, an Auth server certificate for `teleport.cluster.local`, client
//! certificates carrying user, roles and the cluster attribute, and identity files in Teleport's
//! layout.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use time::OffsetDateTime;

const RSA_PKCS1: &str = include_str!("fixtures/rsa2048-pkcs1.pem");
const RSA_PKCS8: &str = include_str!("fixtures/rsa2048-pkcs8.pem");
/// The TeleportCluster subject attribute.
const CLUSTER_OID: &[u64] = &[1, 3, 9999, 1, 7];

/// Which key a client identity uses: the legacy suite's RSA or the newer suites' ECDSA P-256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Ecdsa,
    Rsa,
}

/// The CAs of one fake cluster.
pub struct ClusterPki {
    cluster: String,
    host_ca: CertifiedIssuer<'static, KeyPair>,
    user_ca: CertifiedIssuer<'static, KeyPair>,
}

/// A client key and certificate, PEM-encoded.
#[derive(Clone)]
pub struct ClientCreds {
    pub key_pem: String,
    pub cert_pem: String,
}

/// Validity of a minted client certificate, relative to now.
#[derive(Debug, Clone, Copy)]
pub enum Validity {
    /// From a minute ago for `Duration`.
    For(Duration),
    /// Expired `Duration` ago.
    ExpiredAgo(Duration),
    /// Valid only from `Duration` in the future.
    StartsIn(Duration),
}

fn ca(cluster: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cluster);
    dn.push(DnType::OrganizationName, cluster);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = OffsetDateTime::now_utc() + time::Duration::days(3650);
    let key = KeyPair::generate().expect("ECDSA key generation");
    CertifiedIssuer::self_signed(params, key).expect("self-signed CA")
}

fn serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

impl ClusterPki {
    /// New Host and User CAs for `cluster`.
    pub fn new(cluster: &str) -> Self {
        Self {
            cluster: cluster.to_owned(),
            host_ca: ca(cluster),
            user_ca: ca(cluster),
        }
    }

    /// The cluster name the CAs were made for.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The Host CA certificate, PEM.
    pub fn host_ca_pem(&self) -> String {
        self.host_ca.pem()
    }

    /// The Host CA certificate, DER.
    pub fn host_ca_der(&self) -> CertificateDer<'static> {
        self.host_ca.der().clone()
    }

    /// The User CA certificate, DER.
    pub fn user_ca_der(&self) -> CertificateDer<'static> {
        self.user_ca.der().clone()
    }

    /// An Auth server certificate (signed by the Host CA) with Teleport's SANs.
    pub fn auth_server_cert(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let mut params = CertificateParams::new(vec![
            "teleport.cluster.local".to_owned(),
            "*.teleport.cluster.local".to_owned(),
            "localhost".to_owned(),
        ])
        .expect("valid SANs");
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("6a8f0c1e-auth.{}", self.cluster),
        );
        dn.push(DnType::OrganizationName, "Admin");
        dn.push(
            DnType::CustomDnType(CLUSTER_OID.to_vec()),
            self.cluster.as_str(),
        );
        params.distinguished_name = dn;
        params.serial_number = Some(serial());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = OffsetDateTime::now_utc() - time::Duration::minutes(1);
        params.not_after = OffsetDateTime::now_utc() + time::Duration::days(365);
        let key = KeyPair::generate().expect("ECDSA key generation");
        let cert = params
            .signed_by(&key, &self.host_ca)
            .expect("server certificate");
        let key_der = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())
            .expect("rcgen writes valid PEM");
        (vec![cert.der().clone()], key_der)
    }

    /// A client certificate for `user` with `roles`, signed by the User CA.
    pub fn client(
        &self,
        user: &str,
        roles: &[&str],
        kind: KeyKind,
        validity: Validity,
    ) -> ClientCreds {
        let (key, key_pem) = match kind {
            KeyKind::Ecdsa => {
                let key = KeyPair::generate().expect("ECDSA key generation");
                let pem = key.serialize_pem();
                (key, pem)
            }
            KeyKind::Rsa => (
                KeyPair::from_pem(RSA_PKCS8).expect("the RSA fixture loads"),
                RSA_PKCS1.to_owned(),
            ),
        };
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, user);
        for role in roles {
            dn.push(DnType::OrganizationName, *role);
        }
        dn.push(
            DnType::CustomDnType(CLUSTER_OID.to_vec()),
            self.cluster.as_str(),
        );
        params.distinguished_name = dn;
        params.serial_number = Some(serial());
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = OffsetDateTime::now_utc();
        let d = |d: Duration| time::Duration::seconds(d.as_secs() as i64);
        (params.not_before, params.not_after) = match validity {
            Validity::For(v) => (now - time::Duration::minutes(1), now + d(v)),
            Validity::ExpiredAgo(v) => (now - d(v) - time::Duration::hours(1), now - d(v)),
            Validity::StartsIn(v) => (now + d(v), now + d(v) + time::Duration::hours(1)),
        };
        let cert = params
            .signed_by(&key, &self.user_ca)
            .expect("client certificate");
        ClientCreds {
            key_pem,
            cert_pem: cert.pem(),
        }
    }

    /// An identity file as `tctl auth sign --format=file` writes it: key, SSH certificate line,
    /// TLS certificate, `@cert-authority` line, Host CA certificates.
    pub fn identity_file(&self, creds: &ClientCreds) -> String {
        let ssh_blob: String = (0..96).map(|i| (b'A' + (i % 26) as u8) as char).collect();
        let mut out = String::new();
        out.push_str(creds.key_pem.trim_end());
        out.push('\n');
        out.push_str(&format!(
            "ecdsa-sha2-nistp256-cert-v01@openssh.com {ssh_blob}\n"
        ));
        out.push_str(creds.cert_pem.trim_end());
        out.push('\n');
        out.push_str(&format!(
            "@cert-authority {c},*.{c} ecdsa-sha2-nistp256 {ssh_blob} type=host\n",
            c = self.cluster
        ));
        out.push_str(self.host_ca.pem().trim_end());
        out.push('\n');
        out
    }

    /// Writes an identity file for `user` (mode 0600) and returns its path.
    pub fn write_identity(
        &self,
        path: &Path,
        user: &str,
        roles: &[&str],
        kind: KeyKind,
    ) -> PathBuf {
        let creds = self.client(
            user,
            roles,
            kind,
            Validity::For(Duration::from_secs(12 * 3600)),
        );
        write_private(path, &self.identity_file(&creds));
        path.to_owned()
    }

    /// Writes the `--format=tls` trio `<base>.crt`, `<base>.key`, `<base>.cas`.
    pub fn write_tls_trio(
        &self,
        base: &Path,
        user: &str,
        roles: &[&str],
    ) -> (PathBuf, PathBuf, PathBuf) {
        let creds = self.client(
            user,
            roles,
            KeyKind::Ecdsa,
            Validity::For(Duration::from_secs(12 * 3600)),
        );
        let with = |ext: &str| PathBuf::from(format!("{}.{ext}", base.display()));
        let (crt, key, cas) = (with("crt"), with("key"), with("cas"));
        write_private(&crt, &creds.cert_pem);
        write_private(&key, &creds.key_pem);
        write_private(&cas, &self.host_ca.pem());
        (crt, key, cas)
    }

    /// The rustls server config of an Auth Service: our server cert, client certs checked against
    /// both CAs when given (Teleport's VerifyClientCertIfGiven), ALPN as given (Teleport: `h2`).
    pub fn auth_server_tls(&self, alpn: &[&str]) -> Arc<rustls::ServerConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.user_ca_der()).expect("user CA");
        roots.add(self.host_ca_der()).expect("host CA");
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
            .allow_unauthenticated()
            .build()
            .expect("client verifier");
        let (chain, key) = self.auth_server_cert();
        let mut config = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .expect("server certificate and key match");
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Arc::new(config)
    }
}

/// A self-signed web certificate for a fake proxy's HTTPS (not signed by the cluster CAs).
pub fn web_server_tls(names: &[&str]) -> (Arc<rustls::ServerConfig>, String) {
    let key = KeyPair::generate().expect("ECDSA key generation");
    let params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("valid names");
    let cert = params
        .self_signed(&key)
        .expect("self-signed web certificate");
    let key_der = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())
        .expect("rcgen writes valid PEM");
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key_der)
        .expect("web certificate and key match");
    (Arc::new(config), cert.pem())
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("test files are writable");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .expect("test files can be chmodded");
}
