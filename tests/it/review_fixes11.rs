//! Second reader, eleventh round (3a28242): a mail withdrawn on the one-command-at-a-time
//! exchange (`deliver_one`: a server without PIPELINING, or an SMTPUTF8 mail).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use teleport_email::config::StartTlsPolicy;
use teleport_email::mail::Mailer;
use teleport_email::mail::smtp::{SmtpMailer, SmtpOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::support::*;

#[derive(Clone, Default)]
struct Script {
    pipelining: bool,
    /// Silence before answering each RCPT.
    rcpt_delay: Duration,
}

struct Server {
    port: u16,
    /// Messages the server took (answered 250 to the final dot).
    messages: Arc<AtomicUsize>,
    /// DATA commands received (the client was about to write a message).
    datas: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn server(script: Script) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let messages = Arc::new(AtomicUsize::new(0));
    let datas = Arc::new(AtomicUsize::new(0));
    let (m, d) = (messages.clone(), datas.clone());
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (script, m, d) = (script.clone(), m.clone(), d.clone());
            tokio::spawn(async move {
                let _ = session(stream, script, m, d).await;
            });
        }
    });
    Server {
        port,
        messages,
        datas,
        task,
    }
}

async fn session(
    stream: TcpStream,
    script: Script,
    messages: Arc<AtomicUsize>,
    datas: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
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
                messages.fetch_add(1, Ordering::SeqCst);
                w.write_all(b"250 2.0.0 queued\r\n").await?;
            }
            continue;
        }
        let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" if script.pipelining => {
                b"250-scripted.test\r\n250-PIPELINING\r\n250-SMTPUTF8\r\n250 8BITMIME\r\n"
            }
            "EHLO" => b"250-scripted.test\r\n250-SMTPUTF8\r\n250 8BITMIME\r\n",
            "HELO" => b"250 scripted.test\r\n",
            "RCPT" => {
                tokio::time::sleep(script.rcpt_delay).await;
                b"250 2.0.0 ok\r\n"
            }
            "MAIL" | "RSET" | "NOOP" => b"250 2.0.0 ok\r\n",
            "DATA" => {
                in_data = true;
                datas.fetch_add(1, Ordering::SeqCst);
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

fn mailer(server: &Server) -> Arc<SmtpMailer> {
    let config = smtp_config(server.port, StartTlsPolicy::Disabled, None);
    let options = SmtpOptions {
        timeout: Duration::from_secs(5),
        pool_max_size: 1,
        ..options(None)
    };
    Arc::new(SmtpMailer::new(&config, SENDER, options).unwrap())
}

/// pipeline.rs:109-114 with lettre's `abort()`: a mail withdrawn while its MAIL, RCPT or DATA
/// was under way is found withdrawn *after* the server's 354 (pipeline.rs:277), with the server
/// reading the message. `abort()` then writes `QUIT` and waits for its reply; a server in the
/// middle of a message takes that line as message text and says nothing, so the worker sits
/// for the whole per-reply timeout (10 s by default) before it closes the connection and takes
/// the next mail. At a lease's end every such mail is withdrawn at once: each holds a worker
/// that long, and the mails of other requests (and the rounds waiting for them) queue behind.
///
/// One worker (pool of 1), 5 s timeout, RCPT answered after 1 s. Mail 1 is withdrawn at 300 ms
/// (RCPT unanswered); mail 2 is queued then. It goes out at about 7 s instead of about 2 s.
#[tokio::test]
async fn review_fixes11_a_mail_withdrawn_on_the_one_command_exchange_does_not_hold_its_worker() {
    let server = server(Script {
        pipelining: false,
        rcpt_delay: Duration::from_secs(1),
    })
    .await;
    let mailer = mailer(&server);
    let withdraw = CancellationToken::new();
    let first = {
        let (mailer, withdraw) = (mailer.clone(), withdraw.clone());
        tokio::spawn(async move {
            mailer
                .send_unless_withdrawn(&new_thread_mail(), &withdraw)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    withdraw.cancel();
    assert!(first.await.unwrap().is_none(), "the withdraw won");
    let queued = tokio::time::Instant::now();
    let second = mailer.send(&new_thread_mail()).await;
    let took = queued.elapsed();
    assert!(second.is_ok(), "{second:?}");
    assert!(
        took < Duration::from_secs(4),
        "the next mail waited {took:?} behind a withdrawn one (timeout 5 s, RCPT 1 s); \
         DATA commands {}, messages at the server: {}",
        server.datas.load(Ordering::SeqCst),
        server.messages.load(Ordering::SeqCst)
    );
    assert_eq!(server.messages.load(Ordering::SeqCst), 1);
}
