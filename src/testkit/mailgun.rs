//! [`MailgunStandIn`]: an HTTP server on `127.0.0.1:0` that answers like Mailgun's send API.
//!
//! It accepts `POST …/{domain}/messages` with a multipart form, records every call (fields and
//! `Authorization`), answers `{"id":"<…>","message":"Queued. Thank you."}`, and does not count
//! `o:testmode=yes` calls as deliveries. It can be told to answer 429 (with `Retry-After`), 500,
//! 401, 400 or any status for the next N calls, to answer like a hostile server (any
//! `Retry-After` text, an error body that never ends), and to insist on one API key.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt as _;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// An answer to force for the next calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// 429, with `Retry-After: <seconds>` when given.
    TooManyRequests { retry_after_secs: Option<u64> },
    /// 500.
    ServerError,
    /// 401, as for a wrong key or region.
    Unauthorized,
    /// 400, as for an invalid address.
    BadRequest,
    /// Any other status.
    Status(u16),
    /// `status` with `Retry-After: <retry_after>` verbatim when given, and a body of
    /// [`ENDLESS_BODY_PREFIX`] bytes of `x` that then never ends (the connection stays open).
    Hostile {
        status: u16,
        retry_after: Option<String>,
    },
}

/// How many bytes of a [`Failure::Hostile`] body are sent before it stalls.
pub const ENDLESS_BODY_PREFIX: usize = 1 << 20;

impl Failure {
    fn status(&self) -> u16 {
        match self {
            Self::TooManyRequests { .. } => 429,
            Self::ServerError => 500,
            Self::Unauthorized => 401,
            Self::BadRequest => 400,
            Self::Status(s) | Self::Hostile { status: s, .. } => *s,
        }
    }
}

/// One call as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailgunRequest {
    pub method: String,
    pub path: String,
    /// The `Authorization` header, verbatim.
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    /// Every form field in order; repeated names (several `to`) appear repeatedly.
    pub fields: Vec<(String, String)>,
    /// The status we answered.
    pub status: u16,
    /// When the call arrived (its answer follows at once).
    pub received_at: std::time::Instant,
}

impl MailgunRequest {
    /// The first value of field `name`.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of field `name`.
    pub fn fields_named(&self, name: &str) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The field names, in order.
    pub fn field_names(&self) -> Vec<&str> {
        self.fields.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Whether this was a test-mode call (`o:testmode=yes`).
    pub fn is_test_mode(&self) -> bool {
        self.field("o:testmode") == Some("yes")
    }

    fn is_delivery(&self) -> bool {
        self.status == 200 && !self.is_test_mode()
    }
}

/// `wait_for_deliveries` gave up.
#[derive(Debug, Clone, thiserror::Error)]
#[error("timed out after {waited:?} waiting for {wanted} deliveries; have {have}")]
pub struct WaitTimeout {
    pub wanted: usize,
    pub have: usize,
    pub waited: Duration,
}

/// A local stand-in for Mailgun's API; it stops when dropped.
pub struct MailgunStandIn {
    shared: Arc<Shared>,
    addr: SocketAddr,
    token: CancellationToken,
}

struct Shared {
    key: Option<String>,
    state: Mutex<State>,
    /// The number of deliveries.
    deliveries: watch::Sender<usize>,
}

#[derive(Default)]
struct State {
    requests: Vec<MailgunRequest>,
    failures: VecDeque<(Failure, usize)>,
    next_id: u64,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl MailgunStandIn {
    /// Starts a stand-in that accepts any credentials.
    pub async fn start() -> io::Result<Self> {
        Self::launch(None).await
    }

    /// Starts a stand-in that answers 401 unless the basic-auth password is `key` (user `api`).
    pub async fn start_requiring_key(key: &str) -> io::Result<Self> {
        Self::launch(Some(key.to_owned())).await
    }

    async fn launch(key: Option<String>) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (deliveries, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            key,
            state: Mutex::new(State::default()),
            deliveries,
        });
        let token = CancellationToken::new();
        tokio::spawn(accept_loop(listener, Arc::clone(&shared), token.clone()));
        Ok(Self {
            shared,
            addr,
            token,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The value for `mailgun.api_base`: `http://127.0.0.1:<port>/v3`.
    pub fn api_base(&self) -> String {
        format!("http://{}/v3", self.addr)
    }

    /// Every call so far, failures and test-mode calls included.
    pub fn requests(&self) -> Vec<MailgunRequest> {
        self.shared.state().requests.clone()
    }

    /// The calls answered 200 that were not in test mode.
    pub fn deliveries(&self) -> Vec<MailgunRequest> {
        self.requests()
            .into_iter()
            .filter(MailgunRequest::is_delivery)
            .collect()
    }

    /// Waits until at least `n` deliveries arrived, and returns them all.
    pub async fn wait_for_deliveries(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<MailgunRequest>, WaitTimeout> {
        let mut rx = self.shared.deliveries.subscribe();
        match tokio::time::timeout(timeout, rx.wait_for(|c| *c >= n)).await {
            Ok(Ok(_)) => Ok(self.deliveries()),
            _ => Err(WaitTimeout {
                wanted: n,
                have: self.deliveries().len(),
                waited: timeout,
            }),
        }
    }

    /// Answers `failure` to the next `times` calls.
    pub fn fail_next(&self, failure: Failure, times: usize) {
        if times > 0 {
            self.shared.state().failures.push_back((failure, times));
        }
    }
}

impl Drop for MailgunStandIn {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, token: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = token.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let shared = Arc::clone(&shared);
        let token = token.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, Arc::clone(&shared)));
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = token.cancelled() => {}
                _ = conn => {}
            }
        });
    }
}

type Body = BoxBody<Bytes, Infallible>;

async fn handle(req: Request<Incoming>, shared: Arc<Shared>) -> Result<Response<Body>, Infallible> {
    let header = |name: hyper::header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let authorization = header(hyper::header::AUTHORIZATION);
    let content_type = header(hyper::header::CONTENT_TYPE);
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let body = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Ok(json(400, None, "cannot read the body")),
    };
    let fields = content_type
        .as_deref()
        .and_then(boundary)
        .and_then(|b| parse_multipart(&body, &b));

    let mut record = MailgunRequest {
        method: method.clone(),
        path: path.clone(),
        authorization: authorization.clone(),
        content_type,
        fields: fields.clone().unwrap_or_default(),
        status: 200,
        received_at: std::time::Instant::now(),
    };
    let (status, retry_after, answer, failure) = decide(&shared, &record, fields.is_some());
    record.status = status;
    let domain = path
        .trim_end_matches("/messages")
        .rsplit('/')
        .next()
        .unwrap_or("")
        .to_owned();
    let delivered = record.is_delivery();
    let id = {
        let mut state = shared.state();
        state.next_id += 1;
        let id = state.next_id;
        state.requests.push(record);
        id
    };
    if delivered {
        shared.deliveries.send_modify(|c| *c += 1);
    }
    if let Some(Failure::Hostile { retry_after, .. }) = failure {
        return Ok(hostile(status, retry_after.as_deref()));
    }
    if status != 200 {
        return Ok(json(status, retry_after, &answer));
    }
    let body = serde_json::json!({
        "id": format!("<{id}.standin@{domain}>"),
        "message": "Queued. Thank you.",
    });
    Ok(respond(200, None, body.to_string()))
}

/// What to answer to a call: status, `Retry-After` seconds, error message, and the injected
/// failure behind it, if any.
type Decision = (u16, Option<u64>, String, Option<Failure>);

/// The answer to a call.
fn decide(shared: &Shared, req: &MailgunRequest, parsed: bool) -> Decision {
    if req.method != "POST" || !req.path.ends_with("/messages") {
        return (404, None, "Not Found".into(), None);
    }
    if let Some(key) = &shared.key {
        let expected = format!("Basic {}", base64_api_key(key));
        if req.authorization.as_deref() != Some(expected.as_str()) {
            return (401, None, "Invalid private key".into(), None);
        }
    }
    {
        let mut state = shared.state();
        if let Some((failure, remaining)) = state.failures.front_mut() {
            let failure = failure.clone();
            *remaining -= 1;
            if *remaining == 0 {
                state.failures.pop_front();
            }
            let retry_after = match failure {
                Failure::TooManyRequests { retry_after_secs } => retry_after_secs,
                _ => None,
            };
            let status = failure.status();
            return (
                status,
                retry_after,
                format!("injected {status}"),
                Some(failure),
            );
        }
    }
    if !parsed {
        return (400, None, "cannot parse the multipart form".into(), None);
    }
    for required in ["from", "to", "subject"] {
        if req.field(required).is_none() {
            return (400, None, format!("{required} parameter is missing"), None);
        }
    }
    (200, None, String::new(), None)
}

fn base64_api_key(key: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("api:{key}"))
}

fn json(status: u16, retry_after: Option<u64>, message: &str) -> Response<Body> {
    respond(
        status,
        retry_after,
        serde_json::json!({ "message": message }).to_string(),
    )
}

fn respond(status: u16, retry_after: Option<u64>, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    if let Some(secs) = retry_after {
        headers.insert(hyper::header::RETRY_AFTER, secs.into());
    }
    response
}

/// A [`Failure::Hostile`] answer: `Retry-After` as given, and a body that never ends.
fn hostile(status: u16, retry_after: Option<&str>) -> Response<Body> {
    static CHUNK: [u8; 16 * 1024] = [b'x'; 16 * 1024];
    let prefix = futures_util::stream::iter(
        (0..ENDLESS_BODY_PREFIX / CHUNK.len())
            .map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from_static(&CHUNK)))),
    );
    let body = StreamBody::new(prefix.chain(futures_util::stream::pending()));
    let mut response = Response::new(BodyExt::boxed(body));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Some(value) =
        retry_after.and_then(|v| hyper::header::HeaderValue::from_bytes(v.as_bytes()).ok())
    {
        response
            .headers_mut()
            .insert(hyper::header::RETRY_AFTER, value);
    }
    response
}

/// The `boundary` parameter of a `multipart/form-data` content type.
fn boundary(content_type: &str) -> Option<String> {
    let mut parts = content_type.split(';');
    let kind = parts.next()?.trim();
    if !kind.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    parts.find_map(|p| {
        let (name, value) = p.trim().split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| value.trim().trim_matches('"').to_owned())
    })
}

/// The `(name, value)` pairs of a multipart form body; `None` when it is malformed.
fn parse_multipart(body: &[u8], boundary: &str) -> Option<Vec<(String, String)>> {
    let delimiter = format!("--{boundary}");
    let next_delimiter = format!("\r\n--{boundary}");
    let start = find(body, delimiter.as_bytes())?;
    let mut rest = &body[start + delimiter.len()..];
    let mut fields = Vec::new();
    loop {
        if rest.starts_with(b"--") {
            return Some(fields);
        }
        rest = rest.strip_prefix(b"\r\n")?;
        let header_end = find(rest, b"\r\n\r\n")?;
        let headers = String::from_utf8_lossy(&rest[..header_end]).into_owned();
        rest = &rest[header_end + 4..];
        let value_end = find(rest, next_delimiter.as_bytes())?;
        let value = String::from_utf8_lossy(&rest[..value_end]).into_owned();
        rest = &rest[value_end + next_delimiter.len()..];
        fields.push((field_name(&headers)?, value));
    }
}

/// The `name="…"` of a part's `Content-Disposition: form-data` header.
fn field_name(headers: &str) -> Option<String> {
    let disposition = headers.split("\r\n").find(|l| {
        l.get(..20)
            .is_some_and(|h| h.eq_ignore_ascii_case("content-disposition:"))
    })?;
    disposition.split(';').find_map(|p| {
        let (name, value) = p.trim().split_once('=')?;
        (name == "name").then(|| value.trim_matches('"').to_owned())
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_multipart_form() {
        let body = b"--XyZ\r\n\
            Content-Disposition: form-data; name=\"from\"\r\n\r\n\
            a@b\r\n\
            --XyZ\r\n\
            Content-Disposition: form-data; name=\"text\"\r\n\r\n\
            line1\r\nline2\r\n\
            --XyZ\r\n\
            content-disposition: form-data; name=\"h:Message-Id\"\r\n\r\n\
            <x@y>\r\n\
            --XyZ--\r\n";
        let fields = parse_multipart(body, "XyZ").unwrap();
        assert_eq!(
            fields,
            vec![
                ("from".to_owned(), "a@b".to_owned()),
                ("text".to_owned(), "line1\r\nline2".to_owned()),
                ("h:Message-Id".to_owned(), "<x@y>".to_owned()),
            ]
        );
        assert_eq!(
            boundary("multipart/form-data; boundary=\"XyZ\"").as_deref(),
            Some("XyZ")
        );
        assert_eq!(boundary("application/json"), None);
        assert_eq!(parse_multipart(b"garbage", "XyZ"), None);
    }
}
