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

use std::sync::atomic::Ordering;
use std::time::Duration;

use teleport_email::mail::Mailer;
use tokio_util::sync::CancellationToken;

use crate::support::slow_smtp::{Script, mailer, server};
use crate::support::*;

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
            ..Script::default()
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
