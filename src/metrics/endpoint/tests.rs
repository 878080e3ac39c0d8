//! The endpoint's limits, on real sockets.

use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

async fn start(limits: ServeLimits) -> (SocketAddr, CancellationToken) {
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(serve_with(
        listener,
        Arc::new(Metrics::default()),
        limits,
        stop.clone(),
    ));
    (addr, stop)
}

/// The answer to one request, or `None` when the connection closed without one.
async fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut conn = TcpStream::connect(addr).await.ok()?;
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.ok()?;
    (!answer.is_empty()).then_some(answer)
}

/// A client that sends one byte every 50 ms, never finishing its request head, is cut off at the
/// whole-request deadline (a deadline per read would keep it forever).
#[tokio::test]
async fn a_trickling_client_is_cut_off() {
    let (addr, stop) = start(ServeLimits {
        max_connections: 4,
        request_deadline: Duration::from_millis(300),
    })
    .await;
    let conn = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = conn.into_split();
    let mut closed = tokio::spawn(async move {
        let mut buf = [0u8; 64];
        reader.read(&mut buf).await
    });
    writer
        .write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
        .await
        .unwrap();
    let mut sent = 0;
    let outcome = loop {
        tokio::select! {
            r = &mut closed => break Some(r.unwrap()),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        if sent == 400 || writer.write_all(b"x").await.is_err() {
            break None;
        }
        sent += 1;
    };
    match outcome {
        Some(Ok(0)) | Some(Err(_)) => {}
        other => {
            panic!("expected the server to close the connection, got {other:?} after {sent} bytes")
        }
    }
    assert!(sent < 400, "still open after {sent} trickled bytes");
    stop.cancel();
}

/// Beyond `max_connections` the oldest connection is closed to make room: at most that many are
/// served at once, and the newest request is answered.
#[tokio::test]
async fn connections_beyond_the_cap_close_the_oldest() {
    let (addr, stop) = start(ServeLimits {
        max_connections: 2,
        request_deadline: Duration::from_secs(600),
    })
    .await;
    let mut first = TcpStream::connect(addr).await.unwrap();
    let _second = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let answer = get(addr, "/healthz").await.expect("the newest is served");
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(5), first.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the oldest connection was not closed: {closed:?}"
    );
    stop.cancel();
}

/// A listener whose `accept` fails at once, as when the process is out of file descriptors.
struct Failing {
    calls: Arc<std::sync::Mutex<Vec<Instant>>>,
    failures: usize,
}

impl Listener for Failing {
    type Conn = TcpStream;

    async fn accept(&mut self) -> io::Result<TcpStream> {
        // Yield, so that a serve loop that never waits still lets the test run (and fail).
        tokio::task::yield_now().await;
        let n = {
            let mut calls = self.calls.lock().unwrap();
            calls.push(Instant::now());
            calls.len()
        };
        if n > self.failures {
            std::future::pending::<()>().await;
        }
        Err(io::Error::other("Too many open files (os error 24)"))
    }
}

/// Failing accepts are retried after a backoff (at least 5 ms each), not in a busy loop that
/// would never yield.
#[tokio::test]
async fn accept_errors_back_off() {
    let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
    let failures = 8;
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve_with(
        Failing {
            calls: Arc::clone(&calls),
            failures,
        },
        Arc::new(Metrics::default()),
        ServeLimits::default(),
        stop.clone(),
    ));
    while calls.lock().unwrap().len() <= failures {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let calls = calls.lock().unwrap().clone();
    let spent = calls[failures] - calls[0];
    assert!(
        spent >= Duration::from_millis(5) * failures as u32,
        "{failures} failed accepts retried within {spent:?}"
    );
    stop.cancel();
    server.await.unwrap();
}

/// endpoint.rs `serve_with`: the cap counts connections that have not sent a byte, and each
/// keeps its slot for the whole 5 s deadline. Sixteen idle connections, re-opened every 5 s
/// (nothing for the client), turn every other request away unanswered: the kubelet's liveness
/// probe on `/healthz` fails three times and the pod is restarted, again and again, each restart
/// cutting rounds short. A request that arrives while idle connections hold the slots should
/// still be answered (e.g. idle connections evicted, or a short deadline for the request head).
#[tokio::test]
async fn idle_connections_do_not_starve_the_liveness_probe() {
    let limits = ServeLimits::default();
    let (addr, stop) = start(limits.clone()).await;
    let mut idle = Vec::new();
    for _ in 0..limits.max_connections {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answer = tokio::time::timeout(Duration::from_secs(1), get(addr, "/healthz"))
        .await
        .ok()
        .flatten();
    assert!(
        answer
            .as_deref()
            .is_some_and(|a| a.starts_with("HTTP/1.1 200")),
        "/healthz unanswered within the kubelet's 1 s probe timeout: {answer:?}"
    );
    drop(idle);
    stop.cancel();
}
