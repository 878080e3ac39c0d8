//! A fake Teleport Proxy on one port: TLS routing by ALPN (a ClientHello whose first ALPN is
//! `teleport-auth@…` is passed through, bytes untouched, to the Auth Service), and HTTPS with
//! `/webapi/find` and the WebSocket connection upgrade. In `BehindL7` mode it acts like a Proxy
//! behind a TLS-terminating load balancer (nginx): every connection is terminated with the web
//! certificate, Teleport's ALPN protocols are refused with a `no_application_protocol` alert,
//! so only the connection upgrade reaches Auth.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::pki::web_server_tls;
use crate::teleport::dial::AUTH_ALPN_PREFIX;
use crate::teleport::websocket::{self, Opcode, encode_frame};

/// What sits in front of the Auth Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// A Proxy with TLS routing (multiplexed web port).
    Routing,
    /// The same Proxy behind an L7 load balancer that terminates TLS and passes WebSocket upgrades.
    BehindL7,
}

/// A running fake proxy.
pub struct FakeProxy {
    addr: SocketAddr,
    web_ca_pem: String,
    stop: CancellationToken,
    upgrades: Arc<AtomicU64>,
    passthroughs: Arc<AtomicU64>,
}

impl Drop for FakeProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Ctx {
    /// Our own (web) address.
    addr: SocketAddr,
    auth: SocketAddr,
    cluster: String,
    mode: ProxyMode,
    web: TlsAcceptor,
    upgrades: Arc<AtomicU64>,
    passthroughs: Arc<AtomicU64>,
}

impl FakeProxy {
    /// Starts in front of the Auth Service at `auth`.
    pub async fn start(auth: SocketAddr, cluster: &str, mode: ProxyMode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound address");
        let (mut web_config, web_ca_pem) = web_server_tls(&["localhost", "127.0.0.1"]);
        let alpn: &[&str] = match mode {
            ProxyMode::Routing => &["h2", "http/1.1", "teleport-reversetunnel"],
            // Like nginx (HTTP/1.1 only): `http/1.1` when offered, nothing without ALPN; any
            // other offer gets the alert in `handle`.
            ProxyMode::BehindL7 => &["http/1.1"],
        };
        Arc::get_mut(&mut web_config)
            .expect("fresh config")
            .alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let upgrades = Arc::new(AtomicU64::new(0));
        let passthroughs = Arc::new(AtomicU64::new(0));
        let ctx = Arc::new(Ctx {
            addr,
            auth,
            cluster: cluster.to_owned(),
            mode,
            web: TlsAcceptor::from(web_config),
            upgrades: upgrades.clone(),
            passthroughs: passthroughs.clone(),
        });
        let stop = CancellationToken::new();
        let accept_stop = stop.clone();
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    _ = accept_stop.cancelled() => return,
                    r = listener.accept() => match r { Ok((t, _)) => t, Err(_) => continue },
                };
                let ctx = ctx.clone();
                let conn_stop = accept_stop.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = conn_stop.cancelled() => {}
                        _ = handle(ctx, tcp) => {}
                    }
                });
            }
        });
        Self {
            addr,
            web_ca_pem,
            stop,
            upgrades,
            passthroughs,
        }
    }

    /// The web port, `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The self-signed web certificate (what clients must trust for HTTPS).
    pub fn web_ca_pem(&self) -> &str {
        &self.web_ca_pem
    }

    /// How many connection upgrades were served.
    pub fn upgrades(&self) -> u64 {
        self.upgrades.load(Ordering::Relaxed)
    }

    /// How many `teleport-auth@` pass-throughs were made.
    pub fn passthroughs(&self) -> u64 {
        self.passthroughs.load(Ordering::Relaxed)
    }
}

/// A TLS alert record: content type 21, TLS 1.2 record version, length 2, fatal (2),
/// `no_application_protocol` (120).
const NO_APPLICATION_PROTOCOL_ALERT: [u8; 7] = [21, 3, 3, 0, 2, 2, 120];

async fn handle(ctx: Arc<Ctx>, mut tcp: TcpStream) {
    let Ok((hello, alpn)) = peek_client_hello(&mut tcp).await else {
        return;
    };
    if ctx.mode == ProxyMode::Routing
        && alpn
            .first()
            .is_some_and(|p| p.starts_with(AUTH_ALPN_PREFIX))
    {
        ctx.passthroughs.fetch_add(1, Ordering::Relaxed);
        let _ = pass_through(tcp, &hello, ctx.auth).await;
        return;
    }
    if ctx.mode == ProxyMode::BehindL7 && !alpn.is_empty() && !alpn.iter().any(|p| p == "http/1.1")
    {
        // nginx (OpenSSL) answers an offer it cannot serve with a fatal alert before any
        // ServerHello, in a plaintext record: the signal Teleport clients read as "upgrade".
        let _ = tcp.write_all(&NO_APPLICATION_PROTOCOL_ALERT).await;
        let _ = tcp.shutdown().await;
        return;
    }
    let rewound = Rewind::new(hello, tcp);
    let Ok(tls) = ctx.web.accept(rewound).await else {
        return;
    };
    let _ = serve_http(ctx, tls).await;
}

/// Forwards `io` (whose first bytes `head` were already read) to `target`, both ways.
async fn pass_through<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    head: &[u8],
    target: SocketAddr,
) -> std::io::Result<()> {
    let mut upstream = TcpStream::connect(target).await?;
    upstream.write_all(head).await?;
    tokio::io::copy_bidirectional(&mut io, &mut upstream).await?;
    Ok(())
}

async fn serve_http<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    ctx: Arc<Ctx>,
    mut io: S,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        let n = io.read(&mut chunk).await?;
        if n == 0 || buf.len() > 64 * 1024 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let leftover = buf[head_end + 4..].to_vec();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let header = |name: &str| websocket::header(&head, name);
    match path.split('?').next().unwrap_or("") {
        "/webapi/find" => {
            let body = find_response(&ctx.cluster, ctx.addr).to_string();
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            io.write_all(resp.as_bytes()).await?;
            io.shutdown().await
        }
        websocket::UPGRADE_PATH => {
            let Some(key) = header("sec-websocket-key") else {
                return respond(&mut io, "400 Bad Request").await;
            };
            if !header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
                return respond(&mut io, "400 Bad Request").await;
            }
            let protocol = header("sec-websocket-protocol").unwrap_or_default();
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Protocol: {protocol}\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                websocket::accept_key(&key)
            );
            io.write_all(resp.as_bytes()).await?;
            if protocol == websocket::PROTOCOL {
                // alpn-ping: the server pings; a client must answer with a pong.
                io.write_all(&encode_frame(Opcode::Ping, b"ping", None))
                    .await?;
            }
            ctx.upgrades.fetch_add(1, Ordering::Relaxed);
            let mut inner = websocket::bridge(io, leftover, false);
            // Inside the tunnel the Proxy routes by ALPN again.
            let (hello, alpn) = peek_client_hello(&mut inner).await?;
            if alpn
                .first()
                .is_some_and(|p| p.starts_with(AUTH_ALPN_PREFIX))
            {
                pass_through(inner, &hello, ctx.auth).await
            } else {
                Ok(())
            }
        }
        _ => respond(&mut io, "404 Not Found").await,
    }
}

/// `/webapi/find` as a v18 Proxy in multiplex mode answers it (FINDINGS.md): every listen
/// address in `proxy.ssh` is the one web port, which is also the public address.
fn find_response(cluster: &str, web: SocketAddr) -> serde_json::Value {
    let web = web.to_string();
    serde_json::json!({
        "auth": {
            "signature_algorithm_suite": "balanced-v1", "type": "", "private_key_policy": "",
            "default_session_ttl": "0s", "device_trust": {}, "has_motd": false,
            "piv_pin_cache_ttl": 0, "piv_slot": "",
        },
        "auto_update": {
            "agent_auto_update": false, "agent_update_jitter_seconds": 60,
            "agent_version": "18.0.0", "tools_auto_update": false, "tools_version": "18.0.0",
        },
        "automatic_upgrades": false,
        "cluster_name": cluster,
        "edition": "oss",
        "fips": false,
        "min_client_version": "17.0.0-aa",
        "proxy": {
            "db": {"mysql_listen_addr": web, "postgres_listen_addr": web},
            "kube": {"enabled": true, "listen_addr": web},
            "ssh": {
                "dial_timeout": 30_000_000_000_u64, "listen_addr": web, "public_addr": web,
                "tunnel_listen_addr": web, "web_listen_addr": web,
            },
            "tls_routing_enabled": true,
        },
        "server_version": "18.0.0",
    })
}

async fn respond<S: AsyncWrite + Unpin>(io: &mut S, status: &str) -> std::io::Result<()> {
    io.write_all(
        format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    io.shutdown().await
}

/// Reads a TLS ClientHello record and returns its bytes and offered ALPN protocols.
pub async fn peek_client_hello<S: AsyncRead + Unpin>(
    io: &mut S,
) -> std::io::Result<(Vec<u8>, Vec<String>)> {
    let mut head = [0u8; 5];
    io.read_exact(&mut head).await?;
    if head[0] != 0x16 {
        return Err(std::io::Error::other("not a TLS handshake"));
    }
    let len = u16::from_be_bytes([head[3], head[4]]) as usize;
    let mut body = vec![0u8; len];
    io.read_exact(&mut body).await?;
    let alpn = parse_alpn(&body).unwrap_or_default();
    let mut all = head.to_vec();
    all.extend_from_slice(&body);
    Ok((all, alpn))
}

fn parse_alpn(hs: &[u8]) -> Option<Vec<String>> {
    let mut p = Reader(hs);
    if p.u8()? != 1 {
        return None;
    }
    p.skip(3)?; // handshake length
    p.skip(2 + 32)?; // version, random
    let sid = p.u8()? as usize;
    p.skip(sid)?;
    let suites = p.u16()? as usize;
    p.skip(suites)?;
    let comp = p.u8()? as usize;
    p.skip(comp)?;
    let ext_len = p.u16()? as usize;
    let mut exts = Reader(p.take(ext_len)?);
    while let (Some(ty), Some(len)) = (exts.u16(), exts.u16()) {
        let data = exts.take(len as usize)?;
        if ty == 16 {
            let mut d = Reader(data);
            let list = d.u16()? as usize;
            let mut list = Reader(d.take(list)?);
            let mut out = Vec::new();
            while let Some(n) = list.u8() {
                out.push(String::from_utf8_lossy(list.take(n as usize)?).into_owned());
            }
            return Some(out);
        }
    }
    Some(Vec::new())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

/// A stream that first yields bytes already read from it.
pub struct Rewind<S> {
    head: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(head: Vec<u8>, inner: S) -> Self {
        Self {
            head,
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.pos < self.head.len() {
            let n = (self.head.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.head[start..start + n]);
            self.pos += n;
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
