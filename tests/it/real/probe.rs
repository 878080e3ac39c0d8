//! Small TLS and HTTP/1.1 clients (rustls, blocking) for looking at what the real peers say:
//! which ALPN protocol and certificate a port answers a ClientHello with, and raw HTTP
//! exchanges such as `/webapi/find` or a WebSocket upgrade.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
    StreamOwned,
};

/// How a probe checks the server certificate.
#[derive(Clone, Copy)]
pub enum Trust<'a> {
    /// Verify the chain against this CA (PEM) and the name.
    Ca(&'a str),
    /// Accept any certificate (signatures are still checked): for ports whose certificate comes
    /// from a CA the probe does not know yet, e.g. Teleport's Host CA behind `teleport-auth@`.
    Any,
}

/// What a TLS handshake produced.
#[derive(Debug)]
pub struct Handshake {
    /// The negotiated ALPN protocol, if any.
    pub alpn: Option<String>,
    /// Subject of the server's leaf certificate, RFC 4514 style.
    pub subject: String,
    /// Issuer of the server's leaf certificate.
    pub issuer: String,
    /// DNS names and IP addresses in the leaf's subjectAltName.
    pub sans: Vec<String>,
}

/// Connects to `addr`, offers `alpn` with SNI `sni` (an IP address means no SNI), completes the
/// handshake and reports the outcome; `Err` carries the TLS error (e.g. a
/// `no_application_protocol` alert).
pub fn handshake(
    addr: SocketAddr,
    sni: &str,
    alpn: &[&str],
    trust: Trust<'_>,
) -> Result<Handshake, String> {
    let (conn, _sock) = connect(addr, sni, alpn, trust)?;
    Ok(describe(&conn))
}

/// An HTTP/1.1 response: status, headers (names lower-cased), body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Sends one HTTP/1.1 request head (`extra_headers` are `Name: value` lines) over TLS without
/// ALPN and reads the response. For a `101 Switching Protocols` only the head is read.
pub fn https_request(
    addr: SocketAddr,
    sni: &str,
    trust: Trust<'_>,
    method: &str,
    path: &str,
    extra_headers: &[&str],
) -> Result<HttpResponse, String> {
    let (conn, sock) = connect(addr, sni, &[], trust)?;
    let mut stream = StreamOwned::new(conn, sock);
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: teleport-email-tests\r\n");
    for h in extra_headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    if !extra_headers
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with("connection:"))
    {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    read_response(&mut stream)
}

/// GET `path` and expect 200 with a JSON body.
pub fn get_json(
    addr: SocketAddr,
    trust: Trust<'_>,
    path: &str,
) -> Result<serde_json::Value, String> {
    let resp = https_request(addr, "localhost", trust, "GET", path, &[])?;
    if resp.status != 200 {
        return Err(format!(
            "GET {path}: status {}: {}",
            resp.status,
            String::from_utf8_lossy(&resp.body)
        ));
    }
    serde_json::from_slice(&resp.body).map_err(|e| format!("GET {path}: not JSON: {e}"))
}

fn connect(
    addr: SocketAddr,
    sni: &str,
    alpn: &[&str],
    trust: Trust<'_>,
) -> Result<(ClientConnection, TcpStream), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut config = match trust {
        Trust::Ca(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots
                    .add(cert.map_err(|e| format!("CA PEM: {e:?}"))?)
                    .map_err(|e| e.to_string())?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Any => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
            .with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let name = ServerName::try_from(sni.to_owned()).map_err(|e| format!("bad SNI {sni}: {e}"))?;
    let mut conn = ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let mut sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(15)))
        .map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)
            .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
    }
    Ok((conn, sock))
}

fn describe(conn: &ClientConnection) -> Handshake {
    let alpn = conn
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("server sent a certificate");
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).expect("server certificate parses");
    let sans = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .map(|n| n.to_string())
                .collect()
        })
        .unwrap_or_default();
    Handshake {
        alpn,
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        sans,
    }
}

fn read_response(stream: &mut impl Read) -> Result<HttpResponse, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = read_some(stream, &mut chunk)?;
        if n == 0 {
            return Err(format!(
                "connection closed before the response head: {:?}",
                String::from_utf8_lossy(&buf)
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut resp = HttpResponse {
        status,
        headers,
        body: buf[head_end..].to_vec(),
    };
    if status == 101 {
        return Ok(resp);
    }
    if let Some(len) = resp
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        while resp.body.len() < len {
            let n = read_some(stream, &mut chunk)?;
            if n == 0 {
                break;
            }
            resp.body.extend_from_slice(&chunk[..n]);
        }
        resp.body.truncate(len);
    } else {
        loop {
            let n = read_some(stream, &mut chunk)?;
            if n == 0 {
                break;
            }
            resp.body.extend_from_slice(&chunk[..n]);
        }
        if resp
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            resp.body = dechunk(&resp.body)?;
        }
    }
    Ok(resp)
}

/// Reads what is there; a peer that closes without close_notify counts as end of stream.
fn read_some(stream: &mut impl Read, buf: &mut [u8]) -> Result<usize, String> {
    match stream.read(buf) {
        Ok(n) => Ok(n),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(0),
        Err(e) => Err(format!("read: {e}")),
    }
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk size line")?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// Accepts any certificate chain but still checks handshake signatures.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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
        rustls::crypto::verify_tls12_signature(
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
        rustls::crypto::verify_tls13_signature(
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
