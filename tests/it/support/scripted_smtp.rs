//! An SMTP server speaking just enough for a health check, with the EHLO reply and the one AUTH
//! mechanism a test gives it: for what our parse of EHLO and lettre's make of odd announcements.

use std::sync::{Arc, Mutex};

use teleport_email::config::StartTlsPolicy;
use teleport_email::mail::{MailError, Mailer};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::{PASSWORD, USER, crypto, smtp_config, smtp_mailer};

/// The AUTH mechanism the server accepts (any credentials); every other one gets a 504.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Takes {
    /// `AUTH CRAM-MD5`, answered with a challenge; any answer passes.
    CramMd5,
    /// `AUTH PLAIN <initial response>`.
    Plain,
}

/// Starts the server on 127.0.0.1 with `ehlo` as its whole EHLO reply. Returns its port and the
/// commands it was sent.
pub async fn server(ehlo: &'static str, takes: Takes) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let (r, mut w) = tcp.into_split();
                let mut r = BufReader::new(r);
                w.write_all(b"220 mx.example.com ESMTP\r\n").await.unwrap();
                let mut in_cram = false;
                let mut line = String::new();
                while r.read_line(&mut line).await.unwrap_or(0) > 0 {
                    let cmd = line.trim_end().to_owned();
                    line.clear();
                    log.lock().unwrap().push(cmd.clone());
                    let upper = cmd.to_ascii_uppercase();
                    let reply = if in_cram {
                        in_cram = false;
                        "235 2.7.0 Authentication successful\r\n"
                    } else if upper.starts_with("EHLO") {
                        ehlo
                    } else if takes == Takes::CramMd5 && upper == "AUTH CRAM-MD5" {
                        in_cram = true;
                        // base64 of "<1896.697170952@postoffice.example.net>"
                        "334 PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UuZXhhbXBsZS5uZXQ+\r\n"
                    } else if takes == Takes::Plain && upper.starts_with("AUTH PLAIN ") {
                        "235 2.7.0 Authentication successful\r\n"
                    } else if upper.starts_with("AUTH") {
                        "504 5.5.4 Unrecognized authentication type\r\n"
                    } else if upper == "QUIT" {
                        let _ = w.write_all(b"221 2.0.0 Bye\r\n").await;
                        return;
                    } else {
                        "250 2.0.0 OK\r\n"
                    };
                    if w.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, seen)
}

/// A health check of our SMTP mailer against the server on `port`, signing in (in plain text:
/// there is no TLS) as [`USER`].
pub async fn health_check(port: u16) -> Result<(), MailError> {
    crypto();
    let mut config = smtp_config(port, StartTlsPolicy::Disabled, Some((USER, PASSWORD)));
    config.allow_plaintext_auth = true;
    smtp_mailer(&config, None).health_check().await
}
