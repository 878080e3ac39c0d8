//! Client credentials: identity files (as `tctl auth sign` and tbot write them) and the
//! `client_crt`/`client_key`/`root_cas` trio, and what the client certificate says.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine;
use rustls_pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
};

use crate::calendar::rfc3339;

/// OID of the TeleportCluster attribute in a client certificate's subject.
const CLUSTER_OID: &str = "1.3.9999.1.7";

/// Loaded credentials: a key, its certificate and the cluster's Host CA certificates.
#[derive(Debug)]
pub struct Identity {
    pub key: PrivateKeyDer<'static>,
    pub cert: CertificateDer<'static>,
    pub host_cas: Vec<CertificateDer<'static>>,
    /// What the client certificate says about us.
    pub info: CertInfo,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            key: self.key.clone_key(),
            cert: self.cert.clone(),
            host_cas: self.host_cas.clone(),
            info: self.info.clone(),
        }
    }
}

/// The facts Teleport reads from a client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject CN: the Teleport user.
    pub user: String,
    /// Subject O: the user's roles.
    pub roles: Vec<String>,
    /// The TeleportCluster attribute, or the issuer's O when absent.
    pub cluster: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// Why credentials could not be used. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path}: {part}: {reason}")]
    Invalid {
        what: &'static str,
        path: PathBuf,
        part: &'static str,
        reason: String,
    },
    #[error(
        "the client certificate for {user} (issued by {issuer}) expired at {not_after}; sign a new identity (tctl auth sign) or let tbot renew it"
    )]
    Expired {
        user: String,
        issuer: String,
        not_after: String,
    },
    #[error(
        "the client certificate for {user} is not valid before {not_before}; check this machine's clock"
    )]
    NotYetValid { user: String, not_before: String },
}

const IDENTITY: &str = "identity file";

/// Reads an identity file: PEM blocks are taken by position (key, certificate, then Host CAs),
/// as Teleport's own reader does; the SSH lines are not needed and are skipped.
pub fn load_identity_file(path: &Path) -> Result<Identity, CredentialError> {
    let text = read(path, IDENTITY)?;
    let blocks = pem_blocks(&text).map_err(|reason| invalid(IDENTITY, path, "PEM data", reason))?;
    let mut blocks = blocks.into_iter();
    let (key_label, key_der) = blocks.next().ok_or_else(|| {
        invalid(
            IDENTITY,
            path,
            "private key",
            "no PEM blocks found (is this an identity file from `tctl auth sign --format=file`?)",
        )
    })?;
    let key = private_key(&key_label, key_der)
        .map_err(|r| invalid(IDENTITY, path, "private key (first PEM block)", r))?;
    let (_, cert_der) = blocks.next().ok_or_else(|| {
        invalid(
            IDENTITY,
            path,
            "TLS certificate",
            "missing (expected a second PEM block)",
        )
    })?;
    let cert = CertificateDer::from(cert_der);
    let info = cert_info(&cert)
        .map_err(|r| invalid(IDENTITY, path, "TLS certificate (second PEM block)", r))?;
    let host_cas: Vec<_> = blocks.map(|(_, der)| CertificateDer::from(der)).collect();
    if host_cas.is_empty() {
        return Err(invalid(
            IDENTITY,
            path,
            "Host CA certificates",
            "none found after the TLS certificate",
        ));
    }
    Ok(Identity {
        key,
        cert,
        host_cas,
        info,
    })
}

/// Reads the `--format=tls` trio.
pub fn load_key_pair(cert: &Path, key: &Path, cas: &Path) -> Result<Identity, CredentialError> {
    const CERT: &str = "client_crt";
    const KEY: &str = "client_key";
    const CAS: &str = "root_cas";
    let pick =
        |what: &'static str, path: &Path| -> Result<Vec<(String, Vec<u8>)>, CredentialError> {
            let blocks = pem_blocks(&read(path, what)?)
                .map_err(|reason| invalid(what, path, "PEM data", reason))?;
            if blocks.is_empty() {
                return Err(invalid(what, path, "PEM data", "no PEM blocks found"));
            }
            Ok(blocks)
        };
    let (label, der) = pick(KEY, key)?.swap_remove(0);
    let key_der = private_key(&label, der).map_err(|r| invalid(KEY, key, "private key", r))?;
    let (_, der) = pick(CERT, cert)?.swap_remove(0);
    let cert_der = CertificateDer::from(der);
    let info = cert_info(&cert_der).map_err(|r| invalid(CERT, cert, "certificate", r))?;
    let host_cas = pick(CAS, cas)?
        .into_iter()
        .map(|(_, der)| CertificateDer::from(der))
        .collect();
    Ok(Identity {
        key: key_der,
        cert: cert_der,
        host_cas,
        info,
    })
}

impl Identity {
    /// Refuses an expired or not-yet-valid client certificate.
    pub fn check_validity(&self, now: SystemTime) -> Result<(), CredentialError> {
        if now > self.info.not_after {
            let issuer = x509_parser::parse_x509_certificate(&self.cert)
                .map(|(_, c)| c.issuer().to_string())
                .unwrap_or_default();
            return Err(CredentialError::Expired {
                user: self.info.user.clone(),
                issuer,
                not_after: rfc3339(self.info.not_after),
            });
        }
        if now < self.info.not_before {
            return Err(CredentialError::NotYetValid {
                user: self.info.user.clone(),
                not_before: rfc3339(self.info.not_before),
            });
        }
        Ok(())
    }
}

fn read(path: &Path, what: &'static str) -> Result<String, CredentialError> {
    std::fs::read_to_string(path).map_err(|source| CredentialError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn invalid(
    what: &'static str,
    path: &Path,
    part: &'static str,
    reason: impl Into<String>,
) -> CredentialError {
    CredentialError::Invalid {
        what,
        path: path.to_owned(),
        part,
        reason: reason.into(),
    }
}

/// PEM blocks in file order, as (label, DER). Lines outside blocks are ignored.
fn pem_blocks(text: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines().map(str::trim) {
        match &mut current {
            None => {
                if let Some(rest) = line.strip_prefix("-----BEGIN ") {
                    let label = rest.trim_end_matches('-').trim().to_owned();
                    current = Some((label, String::new()));
                }
            }
            Some((label, body)) => {
                if line.starts_with("-----END") {
                    let der = base64::engine::general_purpose::STANDARD
                        .decode(body.as_bytes())
                        .map_err(|_| {
                            format!("PEM block {} {label} is not valid base64", blocks.len() + 1)
                        })?;
                    blocks.push((std::mem::take(label), der));
                    current = None;
                } else if !line.contains(':') {
                    body.push_str(line);
                }
            }
        }
    }
    if let Some((label, _)) = current {
        return Err(format!("PEM block {label} has no END line"));
    }
    Ok(blocks)
}

/// A private key in PKCS#8, PKCS#1 or SEC1 DER under any PEM label, as Teleport accepts.
fn private_key(label: &str, der: Vec<u8>) -> Result<PrivateKeyDer<'static>, String> {
    let candidates: [fn(Vec<u8>) -> PrivateKeyDer<'static>; 3] = match label {
        "RSA PRIVATE KEY" => [pkcs1, pkcs8, sec1],
        "EC PRIVATE KEY" => [sec1, pkcs8, pkcs1],
        _ => [pkcs8, pkcs1, sec1],
    };
    for make in candidates {
        let key = make(der.clone());
        if rustls::crypto::ring::sign::any_supported_type(&key).is_ok() {
            return Ok(key);
        }
    }
    Err(format!(
        "the {label:?} block is not an RSA or ECDSA key in PKCS#1, PKCS#8 or SEC1 form"
    ))
}

fn pkcs1(der: Vec<u8>) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der))
}
fn pkcs8(der: Vec<u8>) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der))
}
fn sec1(der: Vec<u8>) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(der))
}

/// Reads user, roles, cluster and validity from a client certificate.
pub fn cert_info(cert: &CertificateDer<'_>) -> Result<CertInfo, String> {
    let (_, c) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let subject = c.subject();
    let user = subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    let roles = subject
        .iter_organization()
        .filter_map(|a| a.as_str().ok().map(str::to_owned))
        .collect();
    let cluster = subject
        .iter_attributes()
        .find(|a| a.attr_type().to_id_string() == CLUSTER_OID)
        .and_then(|a| a.as_str().ok().map(str::to_owned))
        .or_else(|| {
            c.issuer()
                .iter_organization()
                .next()
                .and_then(|a| a.as_str().ok().map(str::to_owned))
        })
        .unwrap_or_default();
    let validity = c.validity();
    let to_time = |t: &x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        if secs >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
        } else {
            SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
        }
    };
    Ok(CertInfo {
        user,
        roles,
        cluster,
        not_before: to_time(&validity.not_before),
        not_after: to_time(&validity.not_after),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unterminated_pem_is_an_error() {
        let e = pem_blocks("-----BEGIN PRIVATE KEY-----\nAAAA\n").unwrap_err();
        assert!(e.contains("no END line"), "{e}");
    }

    #[test]
    fn garbage_key_names_the_block_without_echoing_it() {
        let e = private_key("RSA PRIVATE KEY", b"not a key at all".to_vec()).unwrap_err();
        assert!(e.contains("RSA PRIVATE KEY"));
        assert!(!e.contains("not a key at all"));
    }
}
