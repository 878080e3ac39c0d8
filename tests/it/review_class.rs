//! A second reader's failing tests for the RFC 3463 classification of SMTP refusals
//! (`src/mail/error.rs` `refusal_blames_message`): replies real servers send, through the real
//! SMTP client (pipelined and one command at a time), blamed on the wrong party. None of them
//! changes the code.

use teleport_email::mail::Mailer;
use teleport_email::testkit::smtp::Stage;

use crate::support::*;

/// Sends one mail per case through a receiver that answers `reply` at `stage`, pipelined and
/// not; returns every case whose `is_message_specific()` is not `want`, with what it gave.
async fn misjudged(cases: &[(&str, Stage, &str)], want: bool) -> Vec<String> {
    let mut wrong = Vec::new();
    for pipelining in [true, false] {
        let (receiver, mailer) = plain_receiver(pipelining).await;
        for (who, stage, reply) in cases {
            receiver.inject(*stage, reply, 1);
            let err = mailer.send(&new_thread_mail()).await.unwrap_err();
            assert!(!err.is_transient(), "{who}: {err:?}");
            if err.is_message_specific() != want {
                wrong.push(format!("pipelining {pipelining}: {who}: {err}"));
            }
        }
    }
    wrong
}

/// A recipient's own permanent refusal must be written off (te_failed), not retried as the
/// mailer's: retried, it is sent again every 1-10 s for `delivery.retry_timeout` with a WARN each
/// time and an ERROR saying "the mail server refuses the mailer itself", then again at every
/// reconnect, reload and restart (the survey never settles the request), holding the request's
/// handler (and one of the in-flight slots) for the whole retry period each time.
///
/// Microsoft's two "no such user" replies carry 5.5.0 and 5.4.1, not 5.1.x; a Postfix
/// `check_recipient_access ... REJECT` carries 5.7.1 and says "Recipient address rejected".
#[tokio::test]
async fn review_class_a_recipients_own_refusal_is_not_retried_as_the_mailers() {
    let cases = [
        (
            "Outlook.com (Hotmail), mailbox does not exist",
            Stage::RcptTo,
            "550 5.5.0 Requested action not taken: mailbox unavailable (S2017062302). \
             [HE1EUR01FT020.eop-EUR01.prod.protection.outlook.com 2023-09-19T15:05:34.324Z \
             08DBB71928CA8F8E]",
        ),
        (
            "Exchange Online directory-based edge blocking, no such recipient",
            Stage::RcptTo,
            "550 5.4.1 Recipient address rejected: Access denied. AS(201806281) \
             [CY4PEPF0000EE3C.namprd03.prod.outlook.com 2023-09-18T12:48:32.808Z \
             08DBB45899852BA7]",
        ),
        (
            "Postfix check_recipient_access REJECT",
            Stage::RcptTo,
            "554 5.7.1 <reviewer@example.com>: Recipient address rejected: Access denied",
        ),
    ];
    let wrong = misjudged(&cases, true).await;
    assert!(
        wrong.is_empty(),
        "a recipient's permanent refusal is retried as the mailer's:\n{}",
        wrong.join("\n")
    );
}

/// A refusal of our sender, our account or our relay must never be written off as the
/// recipient's (te_failed, never retried): fixing the config then sends nothing.
///
/// - RFC 3463 subject 1 holds the *sender's* address too (X.1.7, X.1.8), and Postfix, with its
///   default `smtpd_delay_reject = yes`, answers its sender restrictions at RCPT TO.
/// - Exim's default ACLs answer a relay refusal and a failed sender verification with a bare
///   550 (no enhanced code), qmail puts its enhanced code at the end: both read as "550-553
///   without one, the mailbox's".
/// - At the end of the message, only subjects 4, 5 and 7 are the mailer's: Office 365's
///   SendAs refusal is 5.2.0 / 5.2.252, and SES and SendGrid refuse an unverified sender with a
///   bare 554 / 550.
#[tokio::test]
async fn review_class_a_refusal_of_our_sender_or_relay_is_not_written_off_as_the_recipients() {
    let cases = [
        (
            "Postfix reject_unknown_sender_domain (unknown_address_reject_code = 550), at RCPT",
            Stage::RcptTo,
            "550 5.1.8 <noreply@example.com>: Sender address rejected: Domain not found",
        ),
        (
            "Postfix reject_unlisted_sender, at RCPT",
            Stage::RcptTo,
            "550 5.1.0 <noreply@example.com>: Sender address rejected: User unknown in \
             local recipient table",
        ),
        (
            "Exim default ACL, relay refused",
            Stage::RcptTo,
            "550 relay not permitted",
        ),
        (
            "Exim default ACL, sender verification failed",
            Stage::RcptTo,
            "550-Verification failed for <noreply@example.com>\r\n550-Unrouteable address\r\n\
             550 Sender verify failed",
        ),
        (
            "qmail, relay refused",
            Stage::RcptTo,
            "553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)",
        ),
        (
            "Office 365 SMTP AUTH, From is not the authenticated mailbox",
            Stage::Data,
            "554 5.2.0 STOREDRV.Submission.Exception:SendAsDeniedException.\
             MapiExceptionSendAsDenied; Failed to process message due to a permanent exception \
             with message Cannot submit message.",
        ),
        (
            "Outlook.com SMTP AUTH, From is not the authenticated mailbox",
            Stage::Data,
            "554 5.2.252 SendAsDenied; relay@outlook.com not allowed to send as \
             noreply@example.com; STOREDRV.Submission.Exception:SendAsDeniedException.\
             MapiExceptionSendAsDenied",
        ),
        (
            "Amazon SES, sender not a verified identity",
            Stage::Data,
            "554 Message rejected: Email address is not verified. The following identities \
             failed the check in region US-EAST-1: noreply@example.com",
        ),
        (
            "SendGrid, sender not a verified Sender Identity",
            Stage::Data,
            "550 The from address does not match a verified Sender Identity. Mail cannot be \
             sent until this error is resolved.",
        ),
    ];
    let wrong = misjudged(&cases, false).await;
    assert!(
        wrong.is_empty(),
        "a refusal of the mailer itself is written off as the recipient's:\n{}",
        wrong.join("\n")
    );
}
