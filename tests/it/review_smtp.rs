//! A second reader's failing tests for the SMTP client and the Mailgun/config security changes
//! (review brief 2). Each test states the behaviour the code or its documentation promises and
//! fails on the current code; none of them changes the code.

use std::io::{Read as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use teleport_email::config::{MailgunConfig, StartTlsPolicy};
use teleport_email::mail::mailgun::{MailgunMailer, MailgunOptions};
use teleport_email::mail::smtp::{SmtpMailer, SmtpOptions};
use teleport_email::mail::{MailError, Mailer};
use teleport_email::secret::Secret;
use teleport_email::testkit::mailgun::MailgunStandIn;
use teleport_email::testkit::smtp::{SmtpReceiver, Stage};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// How the scripted server misbehaves.
#[derive(Clone, Default)]
struct Script {
    /// Silence before the greeting (a slow or overloaded server).
    greeting_delay: Duration,
    /// Offer PIPELINING.
    pipelining: bool,
    /// Silence before answering a message's final dot (content scanning).
    dot_delay: Duration,
    /// Instead of a greeting: `220-` continuation lines, one per period, for ever.
    drip_greeting: Option<Duration>,
    /// Instead of answering `MAIL`: `250-` continuation lines, one per period, for ever.
    drip_mail: Option<Duration>,
    /// Instead of answering `MAIL`: this many bytes without a line end, as fast as they go.
    flood_mail: Option<usize>,
    /// Answer `MAIL` twice (a buggy server, or a man in the middle without TLS).
    extra_mail_reply: bool,
    /// The reply to a message's final dot, instead of `250`; a refused message is not counted.
    dot_reply: Option<&'static str>,
}

/// A scripted SMTP server on loopback: how many messages it accepted, and how many bytes of a
/// flood it managed to write.
struct Scripted {
    port: u16,
    messages: Arc<AtomicUsize>,
    flooded: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn scripted(script: Script) -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let messages = Arc::new(AtomicUsize::new(0));
    let flooded = Arc::new(AtomicUsize::new(0));
    let (m, f) = (Arc::clone(&messages), Arc::clone(&flooded));
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (script, m, f) = (script.clone(), Arc::clone(&m), Arc::clone(&f));
            tokio::spawn(async move {
                let _ = session(stream, script, m, f).await;
            });
        }
    });
    Scripted {
        port,
        messages,
        flooded,
        task,
    }
}

async fn session(
    stream: TcpStream,
    script: Script,
    messages: Arc<AtomicUsize>,
    flooded: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    tokio::time::sleep(script.greeting_delay).await;
    if let Some(every) = script.drip_greeting {
        loop {
            w.write_all(b"220-still greeting you\r\n").await?;
            tokio::time::sleep(every).await;
        }
    }
    w.write_all(b"220 scripted.test ESMTP\r\n").await?;
    let mut line = String::new();
    let mut in_data = false;
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        if in_data {
            if line == ".\r\n" {
                in_data = false;
                tokio::time::sleep(script.dot_delay).await;
                if let Some(reply) = script.dot_reply {
                    w.write_all(format!("{reply}\r\n").as_bytes()).await?;
                    continue;
                }
                messages.fetch_add(1, Ordering::SeqCst);
                w.write_all(b"250 2.0.0 queued\r\n").await?;
            }
            continue;
        }
        let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" if script.pipelining => {
                b"250-scripted.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
            }
            "EHLO" => b"250-scripted.test\r\n250 8BITMIME\r\n",
            "HELO" => b"250 scripted.test\r\n",
            "MAIL" if script.drip_mail.is_some() => loop {
                w.write_all(b"250-thinking about it\r\n").await?;
                tokio::time::sleep(script.drip_mail.unwrap()).await;
            },
            "MAIL" if script.flood_mail.is_some() => {
                let chunk = vec![b'a'; 64 * 1024];
                let mut left = script.flood_mail.unwrap();
                while left > 0 {
                    let n = left.min(chunk.len());
                    let write = w.write_all(&chunk[..n]);
                    match tokio::time::timeout(Duration::from_secs(2), write).await {
                        Ok(Ok(())) => {}
                        _ => return Ok(()),
                    }
                    flooded.fetch_add(n, Ordering::SeqCst);
                    left -= n;
                }
                return Ok(());
            }
            "MAIL" if script.extra_mail_reply => b"250 2.0.0 ok\r\n250 2.0.0 ok again\r\n",
            "MAIL" | "RCPT" | "RSET" | "NOOP" => b"250 2.0.0 ok\r\n",
            "DATA" => {
                in_data = true;
                b"354 go ahead\r\n"
            }
            "QUIT" => {
                w.write_all(b"221 bye\r\n").await?;
                return Ok(());
            }
            _ => b"502 5.5.1 unknown\r\n",
        };
        w.write_all(reply).await?;
    }
}

fn scripted_mailer(server: &Scripted, timeout: Duration, pool: u32) -> SmtpMailer {
    let config = smtp_config(server.port, StartTlsPolicy::Disabled, None);
    let options = SmtpOptions {
        timeout,
        pool_max_size: pool,
        ..options(None)
    };
    SmtpMailer::new(&config, SENDER, options).unwrap()
}

// ---------------------------------------------------------------------------------------------
// A peer that never stops answering: no deadline on a whole reply.

/// `SmtpOptions::timeout` is documented as the deadline of "each command's reply", and the
/// module says every network operation has one. `Deadline` only fails a read that makes *no*
/// progress: a server (or a man in the middle) that sends one continuation line now and then
/// holds the connection, the worker and the caller for as long as it likes (here: a 500 ms
/// timeout, and still waiting after 10 s; with the 100 000-byte reply cap it would take minutes).
#[tokio::test]
async fn a_greeting_that_never_ends_is_given_up_within_the_timeout() {
    let server = scripted(Script {
        drip_greeting: Some(Duration::from_millis(100)),
        ..Script::default()
    })
    .await;
    let mailer = scripted_mailer(&server, Duration::from_millis(500), 1);
    let started = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(10), mailer.health_check()).await;
    assert!(
        outcome.is_ok(),
        "still reading the greeting after {:?} with a 500 ms per-reply timeout",
        started.elapsed()
    );
}

/// The same after the handover to lettre: a `MAIL` reply that keeps coming, one continuation line
/// at a time, holds the send (and the claim's round) for ever.
#[tokio::test]
async fn a_mail_reply_that_never_ends_is_given_up_within_the_timeout() {
    let server = scripted(Script {
        drip_mail: Some(Duration::from_millis(100)),
        ..Script::default()
    })
    .await;
    let mailer = scripted_mailer(&server, Duration::from_millis(500), 1);
    let started = Instant::now();
    let outcome =
        tokio::time::timeout(Duration::from_secs(10), mailer.send(&new_thread_mail())).await;
    assert!(
        outcome.is_ok(),
        "still reading the reply to MAIL after {:?} with a 500 ms per-reply timeout",
        started.elapsed()
    );
}

/// After the handover, replies are read by lettre's `read_response`, which checks its line and
/// reply limits only once `read_line` has found a line end: a reply without one is buffered
/// whole. Our own opening caps a line at 1 001 bytes; the session after it does not. The server
/// here writes 64 MiB without a line end: the client should stop reading (and the server's
/// writes block) after about a line's worth plus socket buffers, not take it all in.
#[tokio::test]
async fn a_reply_without_a_line_end_is_not_buffered_without_bound() {
    const FLOOD: usize = 64 * 1024 * 1024;
    let server = scripted(Script {
        flood_mail: Some(FLOOD),
        ..Script::default()
    })
    .await;
    let mailer = scripted_mailer(&server, Duration::from_secs(2), 1);
    let _ = tokio::time::timeout(Duration::from_secs(20), mailer.send(&new_thread_mail())).await;
    let taken = server.flooded.load(Ordering::SeqCst);
    assert!(
        taken < 16 * 1024 * 1024,
        "the client took in {taken} bytes of one reply line (lettre's line limit is 1 000 bytes)"
    );
}

// ---------------------------------------------------------------------------------------------
// Reply order: an extra reply turns a refused message into a delivered one.

/// Replies are matched by position only (pipeline.rs), and lettre takes any 2xx *or 3xx* as a
/// success. One extra reply to `MAIL` shifts every later one by one: the `354` that answered
/// `DATA` is then read as the answer to the message's final dot, and a message the server
/// refused (`554`) is reported delivered — recorded as sent, never retried, never in `te_failed`.
/// A `3xx` can never answer a final dot, nor a `2xx` a `DATA`; either is a protocol error that
/// should fail the send (transiently) and drop the connection.
#[tokio::test]
async fn an_extra_reply_does_not_turn_a_refused_message_into_a_delivered_one() {
    for pipelining in [true, false] {
        let server = scripted(Script {
            pipelining,
            extra_mail_reply: true,
            dot_reply: Some("554 5.7.1 Message refused"),
            ..Script::default()
        })
        .await;
        let mailer = scripted_mailer(&server, Duration::from_secs(2), 1);
        let outcome = mailer.send(&new_thread_mail()).await;
        assert_eq!(server.messages.load(Ordering::SeqCst), 0);
        assert!(
            outcome.is_err(),
            "pipelining {pipelining}: the server refused the message, the mailer says delivered"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A mail nobody waits for any more is still sent.

/// The engine stops waiting for a send when its claim runs out ("the mailer drops what it has
/// not started", engine/round.rs) and another replica then sends the mail; the queue drops such
/// mails only while they wait at its front. A mail a worker has already taken is written even
/// if its caller is long gone: here the worker is still dialling a slow server (1 s greeting)
/// when the caller gives up after 300 ms, and the message goes out anyway — a duplicate of the
/// next holder's.
#[tokio::test]
async fn a_mail_abandoned_while_its_connection_opens_is_not_sent() {
    for pipelining in [false, true] {
        let server = scripted(Script {
            greeting_delay: Duration::from_secs(1),
            pipelining,
            ..Script::default()
        })
        .await;
        let mailer = scripted_mailer(&server, Duration::from_secs(5), 1);
        let mail = new_thread_mail();
        let gave_up = tokio::time::timeout(Duration::from_millis(300), mailer.send(&mail)).await;
        assert!(gave_up.is_err(), "the send should still be dialling");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(
            server.messages.load(Ordering::SeqCst),
            0,
            "pipelining {pipelining}: a mail whose caller gave up before a byte of it was written \
             was sent anyway"
        );
    }
}

/// The same for a mail whose commands rode behind another message on a PIPELINING connection:
/// its caller gives up while the first message's final dot is being answered (1 s), before a
/// byte of its own message is written; `chain` writes it regardless.
#[tokio::test]
async fn a_pipelined_mail_abandoned_before_its_message_is_not_sent() {
    let server = scripted(Script {
        pipelining: true,
        dot_delay: Duration::from_secs(1),
        ..Script::default()
    })
    .await;
    let mailer = scripted_mailer(&server, Duration::from_secs(5), 1);
    let (first, second) = (new_thread_mail(), new_thread_mail());
    let (sent, gave_up) = tokio::join!(
        mailer.send(&first),
        tokio::time::timeout(Duration::from_millis(300), async {
            // Queued just behind the first, so its group rides behind the first message.
            tokio::time::sleep(Duration::from_millis(20)).await;
            mailer.send(&second).await
        })
    );
    sent.unwrap();
    assert!(gave_up.is_err(), "the second send should still be waiting");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        server.messages.load(Ordering::SeqCst),
        1,
        "a pipelined mail whose caller gave up before its message was written was sent anyway"
    );
}

// ---------------------------------------------------------------------------------------------
// A mailer-wide refusal written off as one recipient's.

/// `530 5.7.0 Authentication required` (RFC 4954 §6) says nothing about the recipient: the
/// mailer is not authenticated (no `smtp.username`, or AUTH skipped). Postfix, for one, answers
/// it — or `554 5.7.1 Relay access denied` — at `RCPT TO`. Tagged `Recipient`, it is
/// message-specific and permanent, so the engine writes the mail off in `te_failed` for every
/// recipient of the round, and fixing the credentials never sends them.
#[tokio::test]
async fn authentication_required_at_rcpt_is_the_mailers_not_the_recipients() {
    let receiver = SmtpReceiver::builder().start().await.unwrap();
    let mailer = plain_mailer(receiver.port());
    receiver.inject(Stage::RcptTo, "530 5.7.0 Authentication required", 1);
    let err = mailer.send(&new_thread_mail()).await.unwrap_err();
    assert!(
        !err.is_message_specific(),
        "written off as the recipient's for good: {err:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// mailgun.api_base over http:// "only to loopback" — unless a proxy is configured.

const PROXY_CHILD: &str = "TELEPORT_EMAIL_REVIEW_PROXY_CHILD";

/// `mailgun.api_base = "http://127.0.0.1:…"` is accepted because the key would not leave the
/// machine. But reqwest honours `HTTP_PROXY`/`http_proxy`/`ALL_PROXY` (common in corporate and
/// Kubernetes deployments) and bypasses loopback only when `NO_PROXY` says so: the request,
/// `Authorization: Basic base64(api:KEY)` included, then goes in clear to the proxy. Run in a
/// child process of this test binary so the proxy variables touch no other test.
#[test]
fn the_mailgun_key_for_a_loopback_http_base_never_goes_to_a_proxy() {
    if std::env::var_os(PROXY_CHILD).is_some() {
        return proxy_child();
    }
    let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let seen = std::thread::spawn(move || {
        proxy.set_nonblocking(false).unwrap();
        let (mut conn, _) = proxy.accept().ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut head = vec![0u8; 8192];
        let n = conn.read(&mut head).unwrap_or(0);
        let _ = conn.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n");
        Some(String::from_utf8_lossy(&head[..n]).into_owned())
    });
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "review_smtp::the_mailgun_key_for_a_loopback_http_base_never_goes_to_a_proxy",
            "--exact",
            "--test-threads=1",
        ])
        .env(PROXY_CHILD, "1")
        .stdout(std::process::Stdio::null())
        .env("HTTP_PROXY", &proxy_url)
        .env("http_proxy", &proxy_url)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .status()
        .unwrap();
    if !seen.is_finished() {
        // Nothing reached the proxy: unblock its accept.
        let _ = std::net::TcpStream::connect(proxy_url.trim_start_matches("http://"));
    }
    let seen = seen.join().unwrap().filter(|h| !h.is_empty());
    if let Some(head) = seen {
        let auth = head
            .lines()
            .any(|l| l.to_ascii_lowercase().starts_with("authorization: basic"));
        panic!(
            "the request for an http:// loopback api_base went to the proxy at {proxy_url} \
             (Authorization header {}):\n{head}",
            if auth { "included" } else { "absent" }
        );
    }
    assert!(status.success(), "the child's send failed");
}

fn proxy_child() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let stand_in = MailgunStandIn::start().await.unwrap();
        let config = MailgunConfig {
            domain: "test.example.com".to_owned(),
            private_key: Secret::new("key-review-123"),
            api_base: stand_in.api_base(),
        };
        assert!(
            config.api_base.starts_with("http://127.0.0.1"),
            "{}",
            config.api_base
        );
        let options = MailgunOptions {
            timeout: Duration::from_secs(3),
        };
        let mailer = MailgunMailer::new(&config, SENDER, vec![], options).unwrap();
        let sent: Result<_, MailError> = mailer.send(&new_thread_mail()).await;
        sent.unwrap();
    });
}

// ---------------------------------------------------------------------------------------------
// Which refusals at RCPT TO and at the end of the message are the recipient's.

/// A refusal is written off as the recipient's for good only when it speaks of the recipient
/// (RFC 3463: 5.1.x the address, 5.2.x the mailbox, 5.3.4/5.6.x this message). A relay refused,
/// a sender not allowed, a policy or authentication failure (5.7.x) are the mailer's: fixing
/// the config must send those mails, so they are retried, never recorded as failed. Both with
/// PIPELINING (replies read in a batch) and without (one command at a time).
#[tokio::test]
async fn only_refusals_that_speak_of_the_recipient_are_the_recipients() {
    let cases = [
        (
            Stage::RcptTo,
            "550 5.1.1 <to@example.com>: Recipient address rejected: User unknown",
            true,
        ),
        (Stage::RcptTo, "552 5.2.2 Mailbox full", true),
        (
            Stage::RcptTo,
            "550 Requested action not taken: mailbox unavailable",
            true,
        ),
        (Stage::RcptTo, "553 mailbox name not allowed", true),
        (
            Stage::RcptTo,
            "554 5.7.1 <to@example.com>: Relay access denied",
            false,
        ),
        (Stage::RcptTo, "550 5.7.1 Unable to relay", false),
        (
            Stage::RcptTo,
            "553 5.7.1 <noreply@example.com>: Sender address rejected: not owned by user",
            false,
        ),
        (Stage::RcptTo, "554 Transaction failed", false),
        (
            Stage::Data,
            "552 5.3.4 Message size exceeds fixed limit",
            true,
        ),
        (Stage::Data, "554 5.6.0 Message content rejected", true),
        // Refused after the recipient was accepted, without saying the message is at fault.
        (Stage::Data, "550 Message rejected", false),
        (
            Stage::Data,
            "550 5.7.26 Unauthenticated email from example.com is not accepted",
            false,
        ),
        (
            Stage::Data,
            "554 5.7.1 Rejected by policy: sender domain has no SPF",
            false,
        ),
    ];
    for pipelining in [true, false] {
        let (receiver, mailer) = plain_receiver(pipelining).await;
        for (stage, reply, recipients) in &cases {
            receiver.inject(*stage, reply, 1);
            let err = mailer.send(&new_thread_mail()).await.unwrap_err();
            assert_eq!(
                err.is_message_specific(),
                *recipients,
                "pipelining {pipelining}: {reply:?} gave {err:?}"
            );
            assert!(!err.is_transient(), "{err:?}");
        }
    }
}
