//! Second reader's tests (review-scan): the hand-made GetPluginData call of `teleport/scan.rs`
//! against a server that answers the way the gRPC-over-HTTP/2 protocol says a client must not
//! take for a success. Each fails on the change under review.
//!
//! The server speaks TLS with the fake Auth Service's certificates and raw HTTP/2, so that an
//! answer can be cut exactly: no trailers, data trickled a byte at a time. Time is paused.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::StreamBody;
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::bytes::Bytes;
use teleport_email::config::Credentials;
use teleport_email::teleport::{
    CALL_TIMEOUT, CredentialStore, DialOptions, TeleportClient, TeleportError,
};
use teleport_email::testkit::auth::FakeAuth;
use teleport_email::testkit::pki::KeyKind;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

/// Longer than anything here may take once fixed; reaching it is the failure.
const GUARD: Duration = Duration::from_secs(3600);

/// One piece of the scripted answer's body.
#[derive(Clone)]
enum Step {
    Data(Vec<u8>),
    Trailers(&'static [(&'static str, &'static str)]),
    Sleep(Duration),
}

/// What the server answers to every call.
#[derive(Clone)]
struct Answer {
    status: u16,
    headers: &'static [(&'static str, &'static str)],
    steps: Vec<Step>,
}

type Body = StreamBody<ReceiverStream<Result<Frame<Bytes>, Infallible>>>;

fn respond(answer: Answer) -> http::Response<Body> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        for step in answer.steps {
            let frame = match step {
                Step::Sleep(d) => {
                    tokio::time::sleep(d).await;
                    continue;
                }
                Step::Data(bytes) => Frame::data(Bytes::from(bytes)),
                Step::Trailers(pairs) => {
                    let mut map = http::HeaderMap::new();
                    for (k, v) in pairs {
                        map.insert(*k, v.parse().unwrap());
                    }
                    Frame::trailers(map)
                }
            };
            if tx.send(Ok(frame)).await.is_err() {
                return;
            }
        }
    });
    let mut response = http::Response::builder().status(answer.status);
    for (k, v) in answer.headers {
        response = response.header(*k, *v);
    }
    response
        .body(StreamBody::new(ReceiverStream::new(rx)))
        .unwrap()
}

/// A TLS + HTTP/2 server with the fake's Auth certificate that answers every call with `answer`.
async fn serve(auth: &FakeAuth, answer: Answer) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(auth.pki().auth_server_tls(&["h2"]));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, answer) = (acceptor.clone(), answer.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                    return;
                }
                let service = hyper::service::service_fn(move |_req| {
                    let answer = answer.clone();
                    async move { Ok::<_, Infallible>(respond(answer)) }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

async fn client(auth: &FakeAuth, addr: SocketAddr, dir: &std::path::Path) -> TeleportClient {
    let path = auth.write_plugin_identity(&dir.join("id"), KeyKind::Ecdsa);
    let store = CredentialStore::load(&Credentials::IdentityFile {
        path,
        refresh: None,
    })
    .expect("credentials load");
    let options = DialOptions::new(&addr.to_string());
    TeleportClient::connect(options, store, Duration::from_secs(5))
        .await
        .expect("connects to the scripted server")
}

/// The ids the scan handed over, or its error.
async fn scan(client: &TeleportClient) -> Result<Vec<String>, TeleportError> {
    let mut ids = Vec::new();
    let mut each = |id: &str, _data| ids.push(id.to_owned());
    let scanned = tokio::time::timeout(GUARD, client.scan_plugin_data("email", &mut each))
        .await
        .unwrap_or_else(|_| panic!("the scan is still under way after {GUARD:?}"));
    scanned.map(|_| ids)
}

const GRPC: &[(&str, &str)] = &[("content-type", "application/grpc")];
/// A whole gRPC message holding an empty `PluginDataSeq`.
const EMPTY_MESSAGE: [u8; 5] = [0, 0, 0, 0, 0];

/// gRPC over HTTP/2: a call's status is in `grpc-status`, in the trailers (or in a trailers-only
/// answer); a stream that ends without one did not succeed. tonic (0.14.9, in the tree:
/// `status::infer_grpc_status`) answers a 200 without it with UNKNOWN ("missing grpc-status
/// trailer ... possible truncation by a proxy or load balancer"; hyper turns an RST_STREAM with
/// NO_ERROR or CANCEL into a clean end of stream) and a non-200 without it with the code the
/// HTTP status maps to; grpc-go errs too. The scan never looks at the HTTP status and takes the
/// end of the body for a success whenever the bytes so far formed one whole message.
#[tokio::test(start_paused = true)]
async fn review_scan_an_answer_without_grpc_status_is_not_a_success() {
    let auth = FakeAuth::start_default().await;
    let dir = tempfile::tempdir().unwrap();
    let whole = || Step::Data(EMPTY_MESSAGE.to_vec());
    let cases = [
        ("200, no trailers", 200, vec![whole()]),
        ("503, no grpc-status", 503, vec![whole()]),
    ];
    let mut accepted = Vec::new();
    for (what, status, steps) in cases {
        let answer = Answer {
            status,
            headers: GRPC,
            steps,
        };
        let addr = serve(&auth, answer).await;
        let client = client(&auth, addr, dir.path()).await;
        if let Ok(ids) = scan(&client).await {
            accepted.push(format!("{what}: Ok({ids:?})"));
        }
    }
    // The same answer with its trailers is a success (the server script is sound).
    let answer = Answer {
        status: 200,
        headers: GRPC,
        steps: vec![whole(), Step::Trailers(&[("grpc-status", "0")])],
    };
    let addr = serve(&auth, answer).await;
    let client = client(&auth, addr, dir.path()).await;
    assert_eq!(scan(&client).await.unwrap(), Vec::<String>::new());
    assert!(
        accepted.is_empty(),
        "answers without a grpc-status taken for a success: {accepted:#?}"
    );
}

/// The scan's only deadline is per HTTP/2 frame (`CALL_TIMEOUT` of silence). A server that sends
/// one byte every 25 s never trips it: the reconcile waits for the scan before it lists a single
/// request, so no request is handed to the engine and the plugin never reports ready, for as long
/// as the trickle lasts (here 200 bytes: 83 minutes; a real answer is megabytes). Before the
/// change, every call of a reconcile (a page of the listing) had a deadline of its own.
#[tokio::test(start_paused = true)]
async fn review_scan_a_trickled_answer_ends_at_a_deadline() {
    let auth = FakeAuth::start_default().await;
    let dir = tempfile::tempdir().unwrap();
    // One message of 200 bytes: field 1, 197 bytes long; then its bytes one at a time.
    let mut steps = vec![Step::Data(vec![0, 0, 0, 0, 200, 0x0a, 0xc5, 0x01])];
    for _ in 0..197 {
        steps.push(Step::Sleep(CALL_TIMEOUT - Duration::from_secs(5)));
        steps.push(Step::Data(vec![0]));
    }
    steps.push(Step::Trailers(&[("grpc-status", "0")]));
    let addr = serve(
        &auth,
        Answer {
            status: 200,
            headers: GRPC,
            steps,
        },
    )
    .await;
    let client = client(&auth, addr, dir.path()).await;
    let started = tokio::time::Instant::now();
    let scanned = scan(&client).await;
    let took = started.elapsed();
    assert!(
        matches!(scanned, Err(TeleportError::Timeout(_))),
        "after {took:?}: {scanned:?}"
    );
    assert!(
        took <= 10 * CALL_TIMEOUT,
        "the scan of a trickled answer took {took:?}"
    );
}
