//! Second reader, ninth round (bf0e84d): `SmtpMailer::send_unless_withdrawn`.
//!
//! The engine withdraws at `held_until`, the very moment its stored claim runs out and another
//! replica may claim the request and send the same mails. So a mail the mailer could still
//! take back (nothing of its message written yet) but reports as "started", and then sends,
//! goes out twice. Before bf0e84d the round *dropped* its sends there, and the queue's guards
//! (`done.is_closed()` in `deliver` and `chain`, pipeline.rs) kept such mails unsent
//! (review_smtp.rs: `a_mail_abandoned_while_its_connection_opens_is_not_sent`,
//! `a_pipelined_mail_abandoned_before_its_message_is_not_sent`). A withdrawing caller keeps its
//! receiver open, so those guards never fire on the engine's path any more.

use std::sync::atomic::Ordering;
use std::time::Duration;

use teleport_email::mail::Mailer;
use tokio_util::sync::CancellationToken;

use crate::support::slow_smtp::{Script, mailer, server};
use crate::support::*;

/// smtp/mod.rs:195-199 with queue.rs:76-81: `withdraw` fails as soon as a worker has popped
/// the mail, even though the worker is only dialling (a slow greeting, here 1 s; in production
/// connect, greeting, EHLO, STARTTLS, TLS, EHLO, AUTH, each with 10 s) and nothing of the mail
/// has reached the server. The caller then waits, and the mail is written once the session is
/// up — after the engine's claim ran out and another replica may have sent it. `deliver`
/// already stops such a mail when its caller has gone (pipeline.rs:91); a withdrawn one
/// should stop there too and come back `None`.
#[tokio::test]
async fn review_fixes9_a_mail_withdrawn_while_its_connection_opens_is_not_sent() {
    for pipelining in [false, true] {
        let server = server(Script {
            greeting_delay: Duration::from_secs(1),
            pipelining,
            ..Script::default()
        })
        .await;
        let mailer = mailer(&server);
        let withdraw = CancellationToken::new();
        let send = {
            let (mailer, withdraw) = (mailer.clone(), withdraw.clone());
            tokio::spawn(async move {
                let mail = new_thread_mail();
                mailer.send_unless_withdrawn(&mail, &withdraw).await
            })
        };
        // The worker has taken the mail and waits for the greeting.
        tokio::time::sleep(Duration::from_millis(300)).await;
        withdraw.cancel();
        let outcome = send.await.unwrap().map(|r| r.map_err(|e| e.to_string()));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let sent = server.messages.load(Ordering::SeqCst);
        assert!(
            sent == 0 && outcome.is_none(),
            "pipelining {pipelining}: withdrawn before a byte of it reached the server, the mail \
             was sent ({sent}) and reported {outcome:?}"
        );
    }
}

/// pipeline.rs:148 (`chain`): a mail whose commands rode behind another message waits
/// for that message's final dot to be answered (here 1 s) before its own message is written;
/// withdrawn meanwhile, `withdraw` fails (`next_pipelinable` popped it) and the mail is written
/// after the answer. Only `done.is_closed()` stops it there, and a withdrawing caller keeps
/// `done` open. The first mail (its message on the wire) must be reported; the second not sent.
#[tokio::test]
async fn review_fixes9_a_pipelined_mail_withdrawn_before_its_message_is_not_sent() {
    let server = server(Script {
        pipelining: true,
        dot_delay: Duration::from_secs(1),
        ..Script::default()
    })
    .await;
    let mailer = mailer(&server);
    let withdraw = CancellationToken::new();
    let sends: Vec<_> = (0..2)
        .map(|_| {
            let (mailer, withdraw) = (mailer.clone(), withdraw.clone());
            tokio::spawn(async move {
                let mail = new_thread_mail();
                mailer.send_unless_withdrawn(&mail, &withdraw).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    withdraw.cancel();
    let mut outcomes = Vec::new();
    for send in sends {
        outcomes.push(send.await.unwrap().map(|r| r.map_err(|e| e.to_string())));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = server.messages.load(Ordering::SeqCst);
    assert!(matches!(outcomes[0], Some(Ok(_))), "{outcomes:?}");
    assert!(
        sent == 1 && outcomes[1].is_none(),
        "the second mail, withdrawn before its message was written, was sent ({sent} messages \
         in all) and reported {:?}",
        outcomes[1]
    );
}

/// queue.rs:73-74 says a mail put back after a failed connection "counts as not started", but
/// the caller tries `withdraw` once only (smtp/mod.rs:194): withdrawn while a worker held it,
/// the caller waits, the worker puts it back (`retry_first`, pipeline.rs:171), and it goes out
/// on the next connection — a mail of which nothing was accepted when it was withdrawn.
/// Here the second mail's commands ride behind the first message; the server goes silent after
/// the first final dot and drops the connection after 1 s; the withdraw comes at 300 ms.
#[tokio::test]
async fn review_fixes9_a_mail_put_back_after_a_withdraw_is_not_sent() {
    let server = server(Script {
        pipelining: true,
        first_connection_dies_after_dot: Some(Duration::from_secs(1)),
        ..Script::default()
    })
    .await;
    let mailer = mailer(&server);
    let withdraw = CancellationToken::new();
    let sends: Vec<_> = (0..2)
        .map(|_| {
            let (mailer, withdraw) = (mailer.clone(), withdraw.clone());
            tokio::spawn(async move {
                let mail = new_thread_mail();
                mailer.send_unless_withdrawn(&mail, &withdraw).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    withdraw.cancel();
    let mut outcomes = Vec::new();
    for send in sends {
        outcomes.push(send.await.unwrap().map(|r| r.map_err(|e| e.to_string())));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = server.messages.load(Ordering::SeqCst);
    // The first: its message was written, the answer never came: reported as failed.
    assert!(matches!(outcomes[0], Some(Err(_))), "{outcomes:?}");
    assert!(
        sent == 0 && outcomes[1].is_none(),
        "the second mail, back in the queue after the withdraw, was sent ({sent}) and reported \
         {:?}",
        outcomes[1]
    );
}
