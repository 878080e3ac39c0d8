//! An SMTP server whose replies a test can hold back (the greeting, each RCPT, the final dot's
//! answer) or cut off, counting the DATA commands and messages it got: for when the mailer may
//! still take a mail back (`send_unless_withdrawn`) and when it must not.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use teleport_email::config::StartTlsPolicy;
use teleport_email::mail::smtp::{SmtpMailer, SmtpOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::{SENDER, options, smtp_config};

#[derive(Clone, Default)]
pub struct Script {
    /// Silence before the greeting.
    pub greeting_delay: Duration,
    pub pipelining: bool,
    /// Silence before answering each RCPT.
    pub rcpt_delay: Duration,
    /// Silence before answering a message's final dot.
    pub dot_delay: Duration,
    /// On the first connection only: after the first message's final dot, silence for this
    /// long, then the connection is closed without a reply (the message "maybe sent"; the
    /// server here did not take it).
    pub first_connection_dies_after_dot: Option<Duration>,
}

pub struct Server {
    pub port: u16,
    /// Messages the server took (answered 250 to the final dot).
    pub messages: Arc<AtomicUsize>,
    /// DATA commands received (the client was about to write a message).
    pub datas: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the server on 127.0.0.1, each connection played by `script`.
pub async fn server(script: Script) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let messages = Arc::new(AtomicUsize::new(0));
    let datas = Arc::new(AtomicUsize::new(0));
    let counters = (messages.clone(), datas.clone());
    let task = tokio::spawn(async move {
        let mut n = 0;
        while let Ok((stream, _)) = listener.accept().await {
            n += 1;
            let (script, counters) = (script.clone(), counters.clone());
            tokio::spawn(async move {
                let _ = session(stream, script, counters, n == 1).await;
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
    (messages, datas): (Arc<AtomicUsize>, Arc<AtomicUsize>),
    first: bool,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    tokio::time::sleep(script.greeting_delay).await;
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
                if let Some(d) = script.first_connection_dies_after_dot.filter(|_| first) {
                    tokio::time::sleep(d).await;
                    return Ok(());
                }
                tokio::time::sleep(script.dot_delay).await;
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

/// Our mailer for `server`: one worker, a 5 s timeout.
pub fn mailer(server: &Server) -> Arc<SmtpMailer> {
    let config = smtp_config(server.port, StartTlsPolicy::Disabled, None);
    let options = SmtpOptions {
        timeout: Duration::from_secs(5),
        pool_max_size: 1,
        ..options(None)
    };
    Arc::new(SmtpMailer::new(&config, SENDER, options).unwrap())
}
