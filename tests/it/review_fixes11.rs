//! Second reader, eleventh round (3a28242): a mail withdrawn on the one-command-at-a-time
//! exchange (`deliver_one`: a server without PIPELINING, or an SMTPUTF8 mail).

use std::sync::atomic::Ordering;
use std::time::Duration;

use teleport_email::mail::Mailer;
use tokio_util::sync::CancellationToken;

use crate::support::slow_smtp::{Script, mailer, server};
use crate::support::*;

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
        ..Script::default()
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
