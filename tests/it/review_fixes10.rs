//! Second reader, tenth round (bf0e84d, 7e911ff): `SmtpMailer::send_unless_withdrawn` on the
//! one-command-at-a-time exchange.
//!
//! 7e911ff says a mail is withdrawable "until its message is written" (README: "the mails whose
//! message it has not yet begun to write are taken back unsent ... wherever they are"). On the
//! pipelined path the worker commits just before the message. On lettre's exchange
//! (`deliver_one`: a server without PIPELINING, or a mail to a non-ASCII address, which needs
//! SMTPUTF8) it commits *before MAIL* (pipeline.rs:95-99): while MAIL,
//! RCPT and DATA are answered (10 s each, so up to 30 s) the mail can no longer be withdrawn,
//! although nothing of its message has reached the server; the engine then waits for it past
//! `held_until` and the message is written after another replica may have claimed the request
//! and sent it.

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

/// pipeline.rs:95-99: on the one-command-at-a-time exchange the worker commits the mail
/// (`Fate` OPEN→WRITING) before it sends MAIL. The server here takes 1 s to answer RCPT; the
/// withdraw comes 300 ms in, while RCPT is unanswered and nothing of the message has been
/// written (not even DATA). The withdraw loses, the caller waits, and the message is written
/// and reported: `Some(Ok)` and one message at the server, where 7e911ff promises `None` and
/// none. Both ways to that exchange: a server without PIPELINING, and a PIPELINING server with
/// a mail to an internationalized address (`Wire::pipelinable` false, wire.rs:59: SMTPUTF8).
#[tokio::test]
async fn review_fixes10_a_mail_withdrawn_before_data_on_the_one_command_exchange_is_not_sent() {
    for (pipelining, utf8_address) in [(false, false), (true, true)] {
        let server = server(Script {
            pipelining,
            rcpt_delay: Duration::from_secs(1),
        })
        .await;
        let mailer = mailer(&server);
        let withdraw = CancellationToken::new();
        let send = {
            let (mailer, withdraw) = (mailer.clone(), withdraw.clone());
            tokio::spawn(async move {
                let mut mail = new_thread_mail();
                if utf8_address {
                    mail.to = "rené@example.com".into();
                }
                mailer.send_unless_withdrawn(&mail, &withdraw).await
            })
        };
        // The worker has sent MAIL and RCPT and waits for RCPT's answer.
        tokio::time::sleep(Duration::from_millis(300)).await;
        withdraw.cancel();
        let outcome = send.await.unwrap().map(|r| r.map_err(|e| e.to_string()));
        // Past RCPT's answer (1 s), when the worker would go on to DATA and the message.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (sent, datas) = (
            server.messages.load(Ordering::SeqCst),
            server.datas.load(Ordering::SeqCst),
        );
        assert!(
            sent == 0 && outcome.is_none(),
            "pipelining {pipelining}, non-ASCII address {utf8_address}: withdrawn while RCPT was unanswered \
             (no DATA yet), the mail was written ({datas} DATA, {sent} messages) and reported \
             {outcome:?}"
        );
    }
}
