//! Mail that fails: the mailer's own failures (retried) against a recipient's or a message's
//! (recorded once), backoff and `Retry-After`.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

/// Issue 17.3: a failure of the mailer as a whole (bad password) is retried, never recorded as
/// the recipients' own; after the operator fixes the password and reloads, the mail goes out.
#[tokio::test(start_paused = true)]
async fn a_mailer_wide_failure_is_retried_and_a_reload_delivers() {
    let (store, broken) = doubles();
    broken.always(Some(Answer::Fail(auth_failure())));
    let a = engine(&store, &broken, "a");
    let run = spawn_put(&a, "r1");
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(broken.attempts() > 2, "retried: {}", broken.attempts());
    let d = decoded(&store, "r1");
    assert!(d.failed.is_empty(), "recorded as permanent: {:?}", d.failed);
    let fixed = Arc::<ScriptedMailer>::default();
    reload(&a, fixed.clone());
    run.await.unwrap();
    assert_each_once(&fixed, 2);
    assert_eq!(decoded(&store, "r1").claim, None);
}

/// Issue 17.3: given up after the retry period, a mailer-wide failure leaves nothing recorded
/// against the recipients, so the next pass (reconcile after a reload or reconnect) delivers.
#[tokio::test(start_paused = true)]
async fn after_giving_up_on_a_mailer_wide_failure_the_next_pass_delivers() {
    let (store, mailer) = doubles();
    mailer.always(Some(Answer::Fail(auth_failure())));
    let a = engine(&store, &mailer, "a");
    a.handle_event(put("r1")).await;
    let d = decoded(&store, "r1");
    assert!(d.failed.is_empty(), "{:?}", d.failed);
    assert_eq!(d.claim, None);
    mailer.always(None);
    a.handle_event(put("r1")).await;
    assert_each_once(&mailer, 2);
}

/// A recipient's own refusal (550 to RCPT TO) is permanent for that recipient only.
#[tokio::test(start_paused = true)]
async fn a_recipients_own_refusal_is_recorded_once_and_not_retried() {
    let (store, mailer) = doubles();
    mailer.then([Answer::Fail(refused_recipient())]);
    let a = engine(&store, &mailer, "a");
    a.handle_event(put("r1")).await;
    assert_eq!(mailer.attempts(), 2);
    assert_eq!(mailer.delivered().len(), 1);
    let d = decoded(&store, "r1");
    assert_eq!(d.failed.len(), 1, "{:?}", d.failed);
    a.handle_event(put("r1")).await;
    assert_eq!(mailer.attempts(), 2, "not retried on the next pass");
}

/// A 15 s outage of the mail server, retried with backoff: in paused time, milliseconds.
#[tokio::test(start_paused = true)]
async fn a_15_second_outage_is_retried_until_the_server_is_back() {
    let (store, mailer) = doubles();
    mailer.always(Some(Answer::Fail(connection_refused())));
    let a = engine(&store, &mailer, "a");
    let run = spawn_put(&a, "r1");
    tokio::time::sleep(Duration::from_secs(15)).await;
    mailer.always(None);
    run.await.unwrap();
    assert_each_once(&mailer, 2);
    assert!(mailer.attempts() > 4, "{}", mailer.attempts());
}

/// Issue 17.4: a `Retry-After` of an hour is not obeyed past the lease: the next attempt comes
/// within half a lease, while the claim is still ours.
#[tokio::test(start_paused = true)]
async fn retry_after_is_capped_by_the_lease() {
    let (store, mailer) = doubles();
    let slow_down = MailError::Http {
        url: "https://api.example/v3/d/messages".into(),
        status: 429,
        message: "slow down".into(),
        retry_after: Some(Duration::from_secs(3600)),
    };
    mailer.then([Answer::Fail(slow_down.clone()), Answer::Fail(slow_down)]);
    let a = engine(&store, &mailer, "a");
    let run = spawn_put(&a, "r1");
    tokio::time::sleep(LEASE / 2 + Duration::from_secs(1)).await;
    assert_each_once(&mailer, 2);
    run.await.unwrap();
}

/// delivery.rs `Failures::sort` + plugindata `fail(email, stage)`: one message refused at its
/// end (a 554 at DATA, e.g. a content filter tripping on one review's reason) is recorded as
/// `email/review`, which silences every later review to that recipient too.
#[tokio::test(start_paused = true)]
async fn one_refused_review_does_not_silence_the_later_ones() {
    let (store, mailer) = doubles();
    threaded(&store, "r1", &[]);
    mailer.then([Answer::Fail(MailError::Rejected {
        server: "mail:587".into(),
        code: 554,
        reason: "5.6.0 message content rejected".into(),
        step: SmtpStep::Message,
    })]);
    let a = engine(&store, &mailer, "a");
    a.handle_event(reviewed("r1", 1)).await;
    a.handle_event(reviewed("r1", 2)).await;
    let got: Vec<_> = mailer.deliveries();
    assert_eq!(got.len(), 1, "the second review never reached a@: {got:?}");
}

/// mail/smtp/mod.rs `classify` labels every 5xx `SmtpStep::Message`, so a sender refused at
/// `MAIL FROM` (553 here; 530 "authentication required" and a 554 greeting go the same way) is
/// "message specific" and `Failures::sort` writes it into `te_failed` for every recipient of the
/// round: after the operator fixes the sender and reloads, those mails are never sent.
#[cfg(feature = "testkit")]
#[tokio::test]
async fn a_sender_refused_at_mail_from_is_not_written_off_as_the_recipients_failure() {
    use crate::config::{SmtpConfig, StartTlsPolicy};
    use crate::mail::smtp::{SmtpMailer, SmtpOptions};
    use crate::testkit::smtp::{SmtpReceiver, Stage as At};

    let receiver = SmtpReceiver::start().await.unwrap();
    receiver.inject(
        At::MailFrom,
        "553 5.7.1 Sender address rejected: not owned by user",
        1000,
    );
    let config = SmtpConfig {
        host: "127.0.0.1".into(),
        port: receiver.port(),
        username: None,
        password: None,
        starttls: StartTlsPolicy::Disabled,
        implicit_tls: false,
        allow_plaintext_auth: false,
    };
    let mailer = SmtpMailer::new(&config, "noreply@example.com", SmtpOptions::default()).unwrap();
    let store = Arc::<MemoryStore>::default();
    let policy = DeliveryPolicy {
        retry_for: Duration::from_millis(300),
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        ..policy("a")
    };
    let a = engine_over(store.clone(), Arc::new(mailer), policy);
    a.handle_event(put("r1")).await;
    let d = decoded(&store, "r1");
    assert!(
        d.failed.is_empty(),
        "a refused sender recorded as the recipients' own failure: {:?}",
        d.failed
    );
}

/// mod.rs `on_put` / `on_pending`: one recipient's permanent refusal in the new-thread stage
/// makes `run_stage` return `Err`, and `?` skips the later stages of the event for everyone: a@
/// never gets the resolution of an approved request (until a restart or reconnect). The
/// original sends the resolution even when earlier sends failed.
#[tokio::test(start_paused = true)]
async fn one_recipients_refusal_does_not_skip_the_others_resolution() {
    let (store, mailer) = doubles();
    mailer.then([Answer::Accept, Answer::Fail(refused_recipient())]);
    let approved = put_in("r1", RequestState::Approved);
    engine(&store, &mailer, "a").handle_event(approved).await;
    let to_a = delivered_to(&mailer, "a@example.com").len();
    assert_eq!(
        to_a,
        2,
        "a@: new thread and resolution: {:?}",
        mailer.deliveries()
    );
}

// ---------------------------------------------------------------------------------------------
// Second reader (review-class): whose a permanent SMTP refusal is, as the engine acts on it.

/// Refuses every mail to `refused` with `refusal` (counting the tries); delivers the rest.
struct RefusesOne {
    refused: &'static str,
    refusal: MailError,
    tries: AtomicUsize,
}

#[async_trait::async_trait]
impl Mailer for RefusesOne {
    async fn send(&self, mail: &OutgoingMail) -> Result<MessageId, MailError> {
        if mail.to == self.refused {
            self.tries.fetch_add(1, Ordering::SeqCst);
            return Err(self.refusal.clone());
        }
        Ok(mail.message_id.clone())
    }

    async fn health_check(&self) -> Result<(), MailError> {
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "refuses-one"
    }
}

/// mail/error.rs `refusal_blames_message`: at RCPT TO only 5.1.x/5.2.x are the recipient's.
/// Outlook.com answers a mailbox that does not exist with `550 5.5.0 Requested action not
/// taken: mailbox unavailable`, Exchange Online (directory-based edge blocking) with `550 5.4.1
/// Recipient address rejected: Access denied`. Both are taken for the mailer's: b@ is tried
/// again every 1-10 s for the whole retry period (a WARN each time, and an ERROR telling the
/// operator the server refuses the mailer itself), never recorded in te_failed, and so handed
/// over again, for another retry period, at every reconnect, reload and restart.
#[tokio::test(start_paused = true)]
async fn review_class_a_mailbox_that_does_not_exist_is_tried_once_and_written_off() {
    for reason in [
        "5.5.0 Requested action not taken: mailbox unavailable (S2017062302). [HE1EUR01FT020.eop-EUR01.prod.protection.outlook.com]",
        "5.4.1 Recipient address rejected: Access denied. AS(201806281) [CY4PEPF0000EE3C.namprd03.prod.outlook.com]",
    ] {
        let mailer = Arc::new(RefusesOne {
            refused: "b@example.com",
            refusal: MailError::Rejected {
                server: "mx:25".into(),
                code: 550,
                reason: reason.into(),
                step: SmtpStep::Recipient,
            },
            tries: Default::default(),
        });
        let store = Arc::<MemoryStore>::default();
        let a = engine_over(store.clone(), mailer.clone(), policy("a"));
        let started = tokio::time::Instant::now();
        a.handle_event(put("r1")).await;
        let took = started.elapsed();
        // A reconnect (or a reload) hands the request over again.
        a.handle_event(put("r1")).await;
        let tries = mailer.tries.load(Ordering::SeqCst);
        let d = decoded(&store, "r1");
        assert!(
            tries == 1 && d.failed_at("b@example.com", "new"),
            "{reason}: b@ was tried {tries} times (the first handling took {took:?}); te_failed: {:?}",
            d.failed
        );
    }
}

/// mail/error.rs `refusal_blames_message`: at the message's end a reply without an enhanced
/// code is the message's own. Amazon SES refuses an unverified sender there with `554 Message
/// rejected: Email address is not verified`, SendGrid with `550 The from address does not match
/// a verified Sender Identity`; Office 365 refuses a From the account may not send as with
/// `554 5.2.0 ...SendAsDenied...`. Each is written into te_failed for every recipient: once the
/// operator verifies the sender (or fixes delivery.sender) and reloads, nothing is sent.
#[tokio::test(start_paused = true)]
async fn review_class_a_sender_refused_at_the_end_of_data_is_sent_once_fixed() {
    for (code, reason) in [
        (
            554,
            "Message rejected: Email address is not verified. The following identities failed the check in region US-EAST-1: noreply@example.com",
        ),
        (
            550,
            "The from address does not match a verified Sender Identity. Mail cannot be sent until this error is resolved.",
        ),
        (
            554,
            "5.2.0 STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; Failed to process message due to a permanent exception with message Cannot submit message.",
        ),
    ] {
        let (store, mailer) = doubles();
        mailer.always(Some(Answer::Fail(MailError::Rejected {
            server: "smtp.example.net:587".into(),
            code,
            reason: reason.into(),
            step: SmtpStep::Message,
        })));
        let a = engine(&store, &mailer, "a");
        a.handle_event(put("r1")).await;
        // The operator fixes the sender and reloads; the reload's reconcile hands it over.
        mailer.always(None);
        reload(&a, mailer.clone());
        a.handle_event(put("r1")).await;
        let got = mailer.deliveries();
        assert_eq!(
            got.len(),
            2,
            "{code} {reason}: written off as the recipients' own ({:?}); delivered {got:?}",
            decoded(&store, "r1").failed
        );
    }
}
