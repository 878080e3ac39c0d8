//! Reaching the Auth Service: straight to it, through a Proxy with TLS routing (ALPN
//! `teleport-auth@…` pass-through), or through the ALPN connection upgrade when the Proxy sits
//! behind an L7 load balancer. The paths are tried together; the first ready one wins, and when
//! all fail one error lists every attempt and why.

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::credentials::CredentialStore;
use super::identity::Identity;
use super::websocket;

/// The SNI and certificate name of every Teleport API server.
pub const API_DOMAIN: &str = "teleport.cluster.local";
/// The ALPN prefix that asks a Proxy to pass the TLS connection through to Auth.
pub const AUTH_ALPN_PREFIX: &str = "teleport-auth@";
/// The ALPN used to find out whether something in front of the Proxy strips ALPN.
pub const REVERSE_TUNNEL_ALPN: &str = "teleport-reversetunnel";
/// The environment variable that forces the connection upgrade on or off.
pub const CONN_UPGRADE_ENV: &str = "TELEPORT_TLS_ROUTING_CONN_UPGRADE";

/// Anything that carries bytes both ways.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A TLS connection to the Auth Service with `h2` negotiated, ready for gRPC.
pub type AuthConn = tokio_rustls::client::TlsStream<Box<dyn Io>>;

/// How a connection reached the Auth Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialPath {
    /// Straight to the Auth Service.
    Direct,
    /// Through the Proxy's TLS routing (ALPN pass-through to Auth).
    TlsRouting,
    /// Through the Proxy's WebSocket connection upgrade (behind an L7 load balancer).
    ConnUpgrade,
}

impl fmt::Display for DialPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DialPath::Direct => "direct to the Auth Service",
            DialPath::TlsRouting => "through the Proxy (TLS routing)",
            DialPath::ConnUpgrade => "through the Proxy (ALPN connection upgrade)",
        })
    }
}

/// Every path failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach the Teleport Auth Service at {addr}:{}", attempts.iter().map(|(p, e)| format!("\n  - {p}: {e}")).collect::<String>())]
pub struct DialError {
    pub addr: String,
    pub attempts: Vec<(DialPath, String)>,
}

/// Whether to use the connection upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeMode {
    /// Detect it, as Teleport's clients do.
    Auto,
    Always,
    Never,
}

impl UpgradeMode {
    /// Reads `TELEPORT_TLS_ROUTING_CONN_UPGRADE`: `true`/`false`, or `addr=bool` items separated by
    /// `,` or `;`.
    pub fn from_env(addr: &str) -> Self {
        Self::parse(std::env::var(CONN_UPGRADE_ENV).ok().as_deref(), addr)
    }

    fn parse(value: Option<&str>, addr: &str) -> Self {
        let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
            return Self::Auto;
        };
        let as_mode = |v: &str| match v.trim().to_ascii_lowercase().as_str() {
            "1" | "t" | "true" | "yes" => Some(Self::Always),
            "0" | "f" | "false" | "no" => Some(Self::Never),
            _ => None,
        };
        if let Some(mode) = as_mode(value) {
            return mode;
        }
        value
            .split([',', ';'])
            .filter_map(|item| item.split_once('='))
            .find(|(a, _)| a.trim() == addr)
            .and_then(|(_, v)| as_mode(v))
            .unwrap_or(Self::Auto)
    }
}

/// What the dialer needs besides credentials.
#[derive(Clone)]
pub struct DialOptions {
    /// `host:port` from `teleport.addr`.
    pub addr: String,
    pub upgrade: UpgradeMode,
    /// Trust for the Proxy's web certificate (the connection-upgrade path); the system's by default.
    pub web_roots: Option<Arc<RootCertStore>>,
    /// Per attempt.
    pub timeout: Duration,
}

impl DialOptions {
    /// Defaults for `addr`, with the upgrade mode from the environment.
    pub fn new(addr: &str) -> Self {
        Self {
            addr: addr.to_owned(),
            upgrade: UpgradeMode::from_env(addr),
            web_roots: None,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Opens connections to the Auth Service, remembering the path that worked last.
pub struct Dialer {
    options: DialOptions,
    credentials: Arc<CredentialStore>,
    last_path: Mutex<Option<DialPath>>,
}

impl Dialer {
    pub fn new(options: DialOptions, credentials: Arc<CredentialStore>) -> Self {
        Self {
            options,
            credentials,
            last_path: Mutex::new(None),
        }
    }

    /// The path of the last successful connection.
    pub fn last_path(&self) -> Option<DialPath> {
        *self.last_path.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new connection: the last good path first, then every path at once.
    pub async fn connect(&self) -> Result<(AuthConn, DialPath), DialError> {
        let identity = self.credentials.current();
        if let Some(path) = self.last_path()
            && let Ok(conn) = self.attempt(path, &identity).await
        {
            return Ok((conn, path));
        }
        let paths = [
            DialPath::Direct,
            DialPath::TlsRouting,
            DialPath::ConnUpgrade,
        ];
        let mut racing: FuturesUnordered<_> = paths
            .iter()
            .map(|&p| {
                let identity = identity.clone();
                async move { (p, self.attempt(p, &identity).await) }
            })
            .collect();
        let mut attempts = Vec::new();
        // The Auth Service's own port also accepts the routing ALPN (it picks the `h2` after
        // it), so on an Auth address both Direct and TlsRouting succeed and the faster one would
        // win at random. A routed connection is therefore held until Direct has finished: if
        // Direct works, the address is the Auth Service, and that is the path reported.
        let mut held = None;
        let mut direct_done = false;
        while let Some((path, result)) = racing.next().await {
            direct_done |= path == DialPath::Direct;
            match result {
                Ok(conn) if path == DialPath::TlsRouting && !direct_done => held = Some(conn),
                Ok(conn) => return Ok(self.chose(conn, path)),
                Err(e) => attempts.push((path, e)),
            }
            if direct_done && let Some(conn) = held.take() {
                return Ok(self.chose(conn, DialPath::TlsRouting));
            }
        }
        attempts.sort_by_key(|(p, _)| *p as u8);
        Err(DialError {
            addr: self.options.addr.clone(),
            attempts,
        })
    }

    fn chose(&self, conn: AuthConn, path: DialPath) -> (AuthConn, DialPath) {
        *self.last_path.lock().unwrap_or_else(|e| e.into_inner()) = Some(path);
        (conn, path)
    }

    async fn attempt(&self, path: DialPath, identity: &Identity) -> Result<AuthConn, String> {
        let work = async {
            match path {
                DialPath::Direct => {
                    let tcp = self.tcp().await?;
                    auth_handshake(Box::new(tcp), identity, false).await
                }
                DialPath::TlsRouting if self.options.upgrade == UpgradeMode::Always => {
                    Err(format!(
                        "not tried ({CONN_UPGRADE_ENV} is true: TLS routing only through the connection upgrade)"
                    ))
                }
                DialPath::TlsRouting => {
                    let tcp = self.tcp().await?;
                    auth_handshake(Box::new(tcp), identity, true).await
                }
                DialPath::ConnUpgrade => self.via_upgrade(identity).await,
            }
        };
        tokio::time::timeout(self.options.timeout, work)
            .await
            .unwrap_or_else(|_| Err(format!("timed out after {:?}", self.options.timeout)))
    }

    async fn tcp(&self) -> Result<TcpStream, String> {
        let tcp = TcpStream::connect(&self.options.addr)
            .await
            .map_err(|e| format!("TCP connection failed: {e}"))?;
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    fn host(&self) -> &str {
        let addr = self.options.addr.as_str();
        match addr.rsplit_once(':') {
            Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => {
                host.trim_start_matches('[').trim_end_matches(']')
            }
            _ => addr,
        }
    }

    fn web_tls(&self, alpn: &[&str]) -> Result<TlsConnector, String> {
        let roots = match &self.options.web_roots {
            Some(r) => r.clone(),
            None => system_roots(),
        };
        let mut config = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Ok(TlsConnector::from(Arc::new(config)))
    }

    async fn web_handshake(
        &self,
        alpn: &[&str],
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        let name = ServerName::try_from(self.host().to_owned())
            .map_err(|_| format!("{:?} is not a valid host name", self.host()))?;
        let tcp = self.tcp().await?;
        self.web_tls(alpn)?
            .connect(name, tcp)
            .await
            .map_err(|e| tls_failure(&e, false))
    }

    async fn via_upgrade(&self, identity: &Identity) -> Result<AuthConn, String> {
        match self.options.upgrade {
            UpgradeMode::Never => {
                return Err(format!("not tried ({CONN_UPGRADE_ENV} is false)"));
            }
            UpgradeMode::Auto => {
                // The proxy answers teleport ALPN itself unless something in front strips it.
                let probe = self.web_handshake(&[REVERSE_TUNNEL_ALPN]).await;
                match probe {
                    Ok(tls) if tls.get_ref().1.alpn_protocol().is_some() => {
                        return Err(
                            "not needed: the Proxy negotiates ALPN itself (no L7 load balancer in front)"
                                .into(),
                        );
                    }
                    Ok(_) => {}
                    Err(e) if e.contains("no common application protocol") => {}
                    Err(e) => return Err(format!("probing for a load balancer: {e}")),
                }
            }
            UpgradeMode::Always => {}
        }
        let outer = self
            .web_handshake(&["http/1.1"])
            .await
            .map_err(|e| format!("HTTPS to the Proxy for the upgrade: {e}"))?;
        let tunnel = websocket::upgrade(outer, self.host()).await?;
        auth_handshake(Box::new(tunnel), identity, true).await
    }
}

fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut store = RootCertStore::empty();
            // rustls-native-certs honours SSL_CERT_FILE and SSL_CERT_DIR, as Go does.
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = store.add(cert);
            }
            Arc::new(store)
        })
        .clone()
}

/// The ALPN that asks a Proxy to pass the connection through to the cluster's Auth Service.
pub fn auth_alpn(cluster: &str) -> String {
    let hex: String = cluster.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{AUTH_ALPN_PREFIX}{hex}.{API_DOMAIN}")
}

/// mTLS to the Auth Service over `io`: SNI `teleport.cluster.local`, the server checked against
/// the Host CA, our certificate presented, `h2` required.
async fn auth_handshake(
    io: Box<dyn Io>,
    identity: &Identity,
    routed: bool,
) -> Result<AuthConn, String> {
    let mut alpn = Vec::new();
    if routed {
        // The Proxy reads only the first ALPN value, so the routing entry goes first.
        alpn.push(auth_alpn(&identity.info.cluster).into_bytes());
    }
    alpn.push(b"h2".to_vec());
    let config = auth_tls_config(identity, alpn)?;
    let name = ServerName::try_from(API_DOMAIN).map_err(|e| e.to_string())?;
    let tls = TlsConnector::from(config)
        .connect(name, io)
        .await
        .map_err(|e| tls_failure(&e, true))?;
    if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err("the server did not negotiate HTTP/2 (ALPN h2): not a Teleport Auth Service gRPC endpoint".into());
    }
    Ok(tls)
}

/// The rustls client config for the Auth Service.
pub fn auth_tls_config(
    identity: &Identity,
    alpn: Vec<Vec<u8>>,
) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    for ca in &identity.host_cas {
        roots
            .add(ca.clone())
            .map_err(|e| format!("a Host CA certificate in the credentials is unusable: {e}"))?;
    }
    let mut config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![identity.cert.clone()], identity.key.clone_key())
        .map_err(|e| format!("the client certificate and key do not work together: {e}"))?;
    config.alpn_protocols = alpn;
    Ok(Arc::new(config))
}

/// A TLS handshake failure in words an operator can act on.
fn tls_failure(e: &std::io::Error, cluster_ca: bool) -> String {
    let rustls_err = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_err {
        Some(rustls::Error::InvalidCertificate(cert_err)) if cluster_ca => format!(
            "TLS handshake failed: the server's certificate is not trusted by the cluster's Host CA in our credentials ({cert_err:?}); wrong cluster, a stale identity file, or not a Teleport Auth/Proxy at this address"
        ),
        Some(rustls::Error::InvalidCertificate(cert_err)) => {
            format!("TLS handshake failed: the Proxy's web certificate is not trusted ({cert_err:?})")
        }
        Some(rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol))
            if cluster_ca =>
        {
            "TLS handshake failed: the server does not speak HTTP/2 (no common application protocol): not a Teleport Auth Service gRPC endpoint".into()
        }
        Some(rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol)) => {
            "TLS handshake failed: no common application protocol (ALPN)".into()
        }
        Some(rustls::Error::AlertReceived(alert)) => {
            format!("TLS handshake failed: the server sent the alert {alert:?}")
        }
        Some(other) => format!("TLS handshake failed: {other}"),
        None => format!("TLS handshake failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_alpn_hex_encodes_the_cluster() {
        assert_eq!(
            auth_alpn("example.com"),
            "teleport-auth@6578616d706c652e636f6d.teleport.cluster.local"
        );
    }

    #[test]
    fn upgrade_env_forms() {
        assert_eq!(UpgradeMode::parse(None, "a:443"), UpgradeMode::Auto);
        assert_eq!(
            UpgradeMode::parse(Some("true"), "a:443"),
            UpgradeMode::Always
        );
        assert_eq!(
            UpgradeMode::parse(Some("false"), "a:443"),
            UpgradeMode::Never
        );
        assert_eq!(
            UpgradeMode::parse(Some("b:443=false;a:443=true"), "a:443"),
            UpgradeMode::Always
        );
        assert_eq!(
            UpgradeMode::parse(Some("b:443=true"), "a:443"),
            UpgradeMode::Auto
        );
    }
}
