//! Our daemon against Postfix's `smtp-sink`, a real SMTP server we did not write, with and
//! without `PIPELINING` offered: a small burst of requests, then their resolutions, must reach it
//! once each, threaded, with CRLF line ends on the wire.
//!
//! smtp-sink is not part of this repository: `SMTP_SINK_BIN` names it, or it is found on `PATH`
//! (README, "Performance", says how to get it). Without it the test prints a `SKIPPED` line and
//! passes.

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use teleport_email::testkit::auth::FakeAuthOptions;
use teleport_email::testkit::postfix::{self, DumpedMail, SinkOptions, SmtpSink};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::SENDER;
use crate::support::harness::{Backend, Harness, Mail, from_smtp};

const REQUESTS: usize = 10;
const ALL: &str = "all@example.com";
const REVIEWERS: [&str; 2] = ["reviewer1@example.com", "reviewer2@example.com"];
const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_and_its_resolutions_arrive_once_each_with_and_without_pipelining() {
    let Some(bin) = postfix::program(postfix::SINK_ENV, "smtp-sink") else {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED postfix::a_burst_and_its_resolutions_arrive_once_each_with_and_without_pipelining: \
             {} not set and smtp-sink not on PATH (see README \"Performance\")",
            postfix::SINK_ENV
        );
        return;
    };
    for pipelining in [true, false] {
        let options = SinkOptions {
            pipelining,
            dump: true,
        };
        let sink = SmtpSink::start(&bin, options)
            .await
            .expect("smtp-sink starts");
        let relay = Relay::start(sink.port()).await;
        let h = Harness::start(Backend::SmtpAt(relay.port), FakeAuthOptions::default()).await;
        let ids: Vec<String> = (0..REQUESTS)
            .map(|i| {
                let user = format!("user{i}@example.com");
                h.auth
                    .create_request(&user, &["editor"], "burst", &REVIEWERS)
            })
            .collect();
        let new_mails = REQUESTS * 3;
        assert!(sink.wait_for(new_mails, WAIT).await, "new-thread mails");
        for id in &ids {
            h.wait_threads(id, 3).await;
            h.auth.resolve(id, true, "approved in a burst");
        }
        assert!(sink.wait_for(2 * new_mails, WAIT).await, "resolution mails");
        h.shutdown().await;
        // Time for a duplicate to show.
        tokio::time::sleep(Duration::from_millis(500)).await;

        let dumped = sink.mails().expect("the dump is readable");
        assert_eq!(
            sink.completed().len(),
            2 * new_mails,
            "pipelining {pipelining}"
        );
        assert_once_each_and_threaded(&dumped, &ids);
        relay.assert_crlf_only();
        relay.assert_pipelined(pipelining);
    }
}

/// Every (request, recipient) got one new-thread mail and one resolution in its thread, with
/// the envelope matching the headers and no Message-ID used twice.
fn assert_once_each_and_threaded(dumped: &[DumpedMail], ids: &[String]) {
    let mut threads: HashMap<(String, String), Mail> = HashMap::new();
    let mut replies: HashMap<(String, String), Mail> = HashMap::new();
    let mut message_ids = HashSet::new();
    for d in dumped {
        assert!(
            !d.data.windows(2).any(|w| w[0] == b'\r' && w[1] != b'\n'),
            "a CR outside a line end"
        );
        let mail = from_smtp(&d.data);
        assert_eq!(d.mail_from, SENDER);
        assert_eq!(mail.from, SENDER);
        assert_eq!(
            d.rcpt_to,
            std::slice::from_ref(&mail.to),
            "envelope and To: {mail:#?}"
        );
        assert!(mail.subject.contains("Role Request"), "{mail:#?}");
        assert!(
            message_ids.insert(mail.message_id.clone()),
            "Message-ID used twice: {mail:#?}"
        );
        let key = (mail.request_id(), mail.to.clone());
        let kind = if mail.in_reply_to.is_none() {
            &mut threads
        } else {
            &mut replies
        };
        assert!(kind.insert(key, mail).is_none(), "a mail arrived twice");
    }
    for id in ids {
        for to in [ALL, REVIEWERS[0], REVIEWERS[1]] {
            let key = (id.clone(), to.to_owned());
            let first = threads
                .get(&key)
                .unwrap_or_else(|| panic!("no new thread {key:?}"));
            let reply = replies
                .get(&key)
                .unwrap_or_else(|| panic!("no resolution {key:?}"));
            assert!(reply.text.contains("has been resolved"), "{reply:#?}");
            assert_eq!(reply.in_reply_to.as_ref(), Some(&first.message_id));
            assert_eq!(reply.references.as_ref(), Some(&first.message_id));
            assert_eq!(reply.subject, first.subject);
        }
    }
    assert_eq!(dumped.len(), ids.len() * 3 * 2);
}

/// A loopback relay in front of the server, recording what each client sent, read by read:
/// smtp-sink's dump ends lines with LF whatever arrived, so line ends are checked here.
struct Relay {
    port: u16,
    /// Per connection, the chunks read from the client.
    sent: Arc<Mutex<Vec<Vec<Vec<u8>>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&sent);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let index = {
                    let mut sent = record.lock().unwrap();
                    sent.push(Vec::new());
                    sent.len() - 1
                };
                let record = Arc::clone(&record);
                tokio::spawn(async move {
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                    });
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = client_read.read(&mut buf).await {
                        if n == 0 || server_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        record.lock().unwrap()[index].push(buf[..n].to_vec());
                    }
                    let _ = server_write.shutdown().await;
                });
            }
        });
        Self { port, sent, accept }
    }

    fn connections(&self) -> Vec<Vec<u8>> {
        let sent = self.sent.lock().unwrap();
        sent.iter().map(|chunks| chunks.concat()).collect()
    }

    /// Every LF the daemon sent ended a CRLF.
    fn assert_crlf_only(&self) {
        let connections = self.connections();
        assert!(!connections.is_empty());
        for stream in connections {
            for (i, b) in stream.iter().enumerate() {
                if *b == b'\n' {
                    assert!(i > 0 && stream[i - 1] == b'\r', "a bare LF at byte {i}");
                }
            }
        }
    }

    /// With PIPELINING offered, MAIL FROM and RCPT TO arrived together; without it, never.
    fn assert_pipelined(&self, offered: bool) {
        let sent = self.sent.lock().unwrap();
        let together = sent.iter().flatten().any(|chunk| {
            let text = String::from_utf8_lossy(chunk);
            text.contains("MAIL FROM:") && text.contains("RCPT TO:")
        });
        assert_eq!(
            together, offered,
            "pipelined with PIPELINING offered: {offered}"
        );
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
