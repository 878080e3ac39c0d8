//! The SMTP backend against the in-process receiver: TLS policies, implicit TLS, AUTH, content,
//! threading, header injection, pooling and error classification.

use std::sync::Arc;
use std::time::Duration;

use teleport_email::config::StartTlsPolicy;
use teleport_email::mail::smtp::{SmtpMailer, SmtpOptions};
use teleport_email::mail::{MailError, Mailer, MessageId};
use teleport_email::testkit::smtp::{AuthMechanism, SmtpReceiver, SmtpReceiverBuilder, Stage};
use teleport_email::testkit::tls::TestPki;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(10);

async fn starttls_receiver(pki: &TestPki, auth: bool) -> SmtpReceiver {
    let mut builder = SmtpReceiver::builder().starttls(pki.server_config().unwrap());
    if auth {
        builder = builder.auth(USER, PASSWORD);
    }
    builder.start().await.unwrap()
}

/// A receiver with STARTTLS taking AUTH as [`USER`] by `mechanism` alone.
fn starttls_taking(pki: &TestPki, mechanism: AuthMechanism) -> SmtpReceiverBuilder {
    SmtpReceiver::builder()
        .starttls(pki.server_config().unwrap())
        .auth(USER, PASSWORD)
        .auth_mechanisms(&[mechanism])
}

#[tokio::test]
async fn plain_relay_without_auth_gets_the_whole_thread() {
    let receiver = SmtpReceiver::start().await.unwrap();
    let mailer = plain_mailer(receiver.port());
    assert_eq!(mailer.backend(), "smtp");

    let first = new_thread_mail();
    let id = mailer.send(&first).await.unwrap();
    assert_eq!(id, first.message_id);
    let reply = follow_up_mail(&id);
    mailer.send(&reply).await.unwrap();

    let got = receiver.wait_for(2, WAIT).await.unwrap();
    assert_eq!(got[0].mail_from, SENDER);
    assert_eq!(got[0].rcpt_to, vec![RECIPIENT.to_owned()]);
    assert!(!got[0].tls);
    assert_eq!(got[0].auth_user, None);
    assert_new_thread(&got[0].data, &first);
    assert_follow_up(&got[1].data, &reply, &id);
    assert_eq!(
        parse_mail(&got[1].data).text,
        "reviewer1@example.com reviewed the request at 05 Mar 24 14:07 UTC.\n\
         Resolution: ✅ APPROVED.\n\
         Reason: okay."
    );
    // Pooled: both mails went over one connection.
    assert_eq!(receiver.stats().connections, 1);
}

#[tokio::test]
async fn mandatory_starttls_with_auth_plain() {
    crypto();
    let pki = pki();
    let receiver = starttls_receiver(&pki, true).await;
    let mailer = signed_in(receiver.port(), &pki);
    mailer.health_check().await.unwrap();
    let mail = new_thread_mail();
    mailer.send(&mail).await.unwrap();
    let got = receiver.wait_for(1, WAIT).await.unwrap();
    assert!(got[0].tls);
    assert_eq!(got[0].auth_user.as_deref(), Some(USER));
    assert_new_thread(&got[0].data, &mail);
    // One for the health check, one for the pool.
    assert_eq!(receiver.stats().auth_successes, 2);
}

#[tokio::test]
async fn mandatory_starttls_against_a_server_without_it_is_a_clear_permanent_error() {
    crypto();
    let receiver = SmtpReceiver::start().await.unwrap();
    let config = smtp_config(receiver.port(), StartTlsPolicy::Mandatory, None);
    let mailer = smtp_mailer(&config, None);
    let server = format!("localhost:{}", receiver.port());
    for err in [
        mailer.send(&new_thread_mail()).await.unwrap_err(),
        mailer.health_check().await.unwrap_err(),
    ] {
        assert_eq!(
            err,
            MailError::StartTlsUnavailable {
                server: server.clone()
            }
        );
        assert!(!err.is_transient());
        assert!(err.to_string().contains("does not offer STARTTLS"), "{err}");
    }
    assert_eq!(receiver.stats().transactions, 0);
}

#[tokio::test]
async fn opportunistic_uses_tls_when_offered_and_plain_otherwise() {
    crypto();
    let pki = pki();
    let with_tls = starttls_receiver(&pki, false).await;
    let config = smtp_config(with_tls.port(), StartTlsPolicy::Opportunistic, None);
    smtp_mailer(&config, Some(&pki))
        .send(&new_thread_mail())
        .await
        .unwrap();
    assert!(with_tls.wait_for(1, WAIT).await.unwrap()[0].tls);

    let without = SmtpReceiver::start().await.unwrap();
    let config = smtp_config(without.port(), StartTlsPolicy::Opportunistic, None);
    let mailer = smtp_mailer(&config, Some(&pki));
    mailer.health_check().await.unwrap();
    mailer.send(&new_thread_mail()).await.unwrap();
    assert!(!without.wait_for(1, WAIT).await.unwrap()[0].tls);
}

#[tokio::test]
async fn disabled_never_starts_tls() {
    crypto();
    let pki = pki();
    let receiver = starttls_receiver(&pki, false).await;
    let mailer = plain_mailer(receiver.port());
    mailer.health_check().await.unwrap();
    mailer.send(&new_thread_mail()).await.unwrap();
    assert!(!receiver.wait_for(1, WAIT).await.unwrap()[0].tls);
    assert_eq!(receiver.stats().tls_sessions, 0);
}

#[tokio::test]
async fn implicit_tls_with_auth_login() {
    crypto();
    let pki = pki();
    let receiver = SmtpReceiver::builder()
        .implicit_tls(pki.server_config().unwrap())
        .auth(USER, PASSWORD)
        .auth_mechanisms(&[AuthMechanism::Login])
        .start()
        .await
        .unwrap();
    let mailer = signed_in_over_implicit_tls(receiver.port(), &pki);
    mailer.health_check().await.unwrap();
    let first = new_thread_mail();
    mailer.send(&first).await.unwrap();
    let reply = follow_up_mail(&first.message_id);
    mailer.send(&reply).await.unwrap();
    let got = receiver.wait_for(2, WAIT).await.unwrap();
    assert!(
        got.iter()
            .all(|m| m.tls && m.auth_user.as_deref() == Some(USER))
    );
    assert_new_thread(&got[0].data, &first);
    assert_follow_up(&got[1].data, &reply, &first.message_id);
}

#[tokio::test]
async fn auth_plain_only_over_starttls() {
    crypto();
    let pki = pki();
    let receiver = starttls_taking(&pki, AuthMechanism::Plain)
        .auth_requires_tls(true)
        .start()
        .await
        .unwrap();
    signed_in(receiver.port(), &pki)
        .send(&new_thread_mail())
        .await
        .unwrap();
    assert_eq!(
        receiver.wait_for(1, WAIT).await.unwrap()[0]
            .auth_user
            .as_deref(),
        Some(USER)
    );

    // The same server with TLS disabled never offers AUTH: a clear, permanent error.
    let err = signing_in_without_tls(receiver.port())
        .send(&new_thread_mail())
        .await
        .unwrap_err();
    assert!(matches!(err, MailError::Auth { .. }), "{err}");
    assert!(
        err.to_string().contains("offers no AUTH mechanism"),
        "{err}"
    );
}

#[tokio::test]
async fn wrong_password_is_permanent_and_never_printed() {
    crypto();
    let pki = pki();
    let receiver = starttls_receiver(&pki, true).await;
    let config = smtp_config(
        receiver.port(),
        StartTlsPolicy::Mandatory,
        Some((USER, "wrong-pw-123")),
    );
    let mailer = smtp_mailer(&config, Some(&pki));
    for err in [
        mailer.send(&new_thread_mail()).await.unwrap_err(),
        mailer.health_check().await.unwrap_err(),
    ] {
        assert!(matches!(err, MailError::Auth { .. }), "{err:?}");
        assert!(!err.is_transient());
        let text = format!("{err} {err:?}");
        assert!(
            text.contains(&format!("localhost:{}", receiver.port())),
            "{text}"
        );
        assert!(text.contains("535"), "{text}");
        assert!(!text.contains("wrong-pw-123"), "{text}");
    }
    assert_eq!(receiver.stats().auth_failures, 2);
    assert!(receiver.messages().is_empty());
}

#[tokio::test]
async fn untrusted_certificate_is_a_permanent_tls_error() {
    crypto();
    let pki = pki();
    let receiver = starttls_receiver(&pki, false).await;
    let config = smtp_config(receiver.port(), StartTlsPolicy::Mandatory, None);
    let mailer = smtp_mailer(&config, None);
    let err = mailer.send(&new_thread_mail()).await.unwrap_err();
    assert!(matches!(err, MailError::Tls { .. }), "{err:?}");
    assert!(!err.is_transient());
    let err = mailer.health_check().await.unwrap_err();
    assert!(matches!(err, MailError::Tls { .. }), "{err:?}");
}

#[tokio::test]
async fn header_injection_adds_no_header_and_no_recipient() {
    let receiver = SmtpReceiver::start().await.unwrap();
    let mailer = plain_mailer(receiver.port());
    let mut mail = injection_mail();
    // Even a subject handed over raw cannot split the header.
    mail.subject = format!("raw subject{INJECTION}");
    mailer.send(&mail).await.unwrap();
    let got = receiver.wait_for(1, WAIT).await.unwrap();
    assert_eq!(got[0].rcpt_to, vec![RECIPIENT.to_owned()]);
    assert_eq!(receiver.stats().recipients, 1);
    assert_no_injected_header(&got[0].data);
    let parsed = parse_mail(&got[0].data);
    assert_eq!(parsed.subject, "raw subjectok  Bcc: evil@example.com");
    assert!(
        parsed.text.contains("Reason: ok\nBcc: evil@example.com\n"),
        "{}",
        parsed.text
    );
}

#[tokio::test]
async fn non_ascii_subject_is_encoded() {
    let receiver = SmtpReceiver::start().await.unwrap();
    let mut mail = new_thread_mail();
    mail.subject = "Zürich ✅ Role Request 1".to_owned();
    plain_mailer(receiver.port()).send(&mail).await.unwrap();
    let got = receiver.wait_for(1, WAIT).await.unwrap();
    let subject_line = got[0]
        .header_lines()
        .into_iter()
        .find(|l| l.starts_with("Subject:"))
        .unwrap();
    assert!(
        subject_line.is_ascii() && subject_line.contains("=?utf-8?"),
        "{subject_line}"
    );
    assert_eq!(parse_mail(&got[0].data).subject, mail.subject);
}

#[tokio::test]
async fn smtp_4xx_is_transient_and_5xx_permanent() {
    let receiver = SmtpReceiver::start().await.unwrap();
    let mailer = plain_mailer(receiver.port());

    receiver.inject(Stage::MailFrom, "451 4.3.0 Try again later", 1);
    let err = mailer.send(&new_thread_mail()).await.unwrap_err();
    assert!(
        matches!(err, MailError::Rejected { code: 451, .. }),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert!(err.to_string().contains("Try again later"), "{err}");

    receiver.inject(Stage::RcptTo, "550 5.1.1 No such user", 1);
    let err = mailer.send(&new_thread_mail()).await.unwrap_err();
    assert!(
        matches!(err, MailError::Rejected { code: 550, .. }),
        "{err:?}"
    );
    assert!(!err.is_transient());

    receiver.inject(Stage::Data, "452 4.3.1 Insufficient storage", 1);
    let err = mailer.send(&new_thread_mail()).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");

    // The pool recovers: the next mail goes through.
    mailer.send(&new_thread_mail()).await.unwrap();
    assert_eq!(receiver.wait_for(1, WAIT).await.unwrap().len(), 1);
}

#[tokio::test]
async fn server_down_is_transient_and_the_pool_recovers() {
    let receiver = SmtpReceiver::start().await.unwrap();
    let mailer = plain_mailer(receiver.port());
    mailer.send(&new_thread_mail()).await.unwrap();

    receiver.go_down().await;
    let err = mailer.send(&new_thread_mail()).await.unwrap_err();
    assert!(matches!(err, MailError::Connect { .. }), "{err:?}");
    assert!(err.is_transient());
    assert!(
        err.to_string()
            .contains(&format!("localhost:{}", receiver.port())),
        "{err}"
    );
    assert!(mailer.health_check().await.unwrap_err().is_transient());

    receiver.come_back().unwrap();
    mailer.send(&new_thread_mail()).await.unwrap();
    assert_eq!(receiver.wait_for(2, WAIT).await.unwrap().len(), 2);

    receiver.refuse_next_connections(1);
    receiver.go_down().await;
    receiver.come_back().unwrap();
    let err = mailer.send(&new_thread_mail()).await.unwrap_err();
    assert!(
        matches!(err, MailError::Rejected { code: 421, .. }),
        "{err:?}"
    );
    assert!(err.is_transient());
    mailer.send(&new_thread_mail()).await.unwrap();
}

#[tokio::test]
async fn silent_server_times_out_transiently() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let config = smtp_config(port, StartTlsPolicy::Disabled, None);
    let options = SmtpOptions {
        timeout: Duration::from_millis(300),
        ..SmtpOptions::default()
    };
    let mailer = SmtpMailer::new(&config, SENDER, options).unwrap();
    let err = mailer.send(&new_thread_mail()).await.unwrap_err();
    assert!(matches!(err, MailError::Timeout { .. }), "{err:?}");
    assert!(err.is_transient());
    hold.abort();
}

#[tokio::test]
async fn unreachable_server_is_transient() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let err = plain_mailer(port).health_check().await.unwrap_err();
    assert!(matches!(err, MailError::Connect { .. }), "{err:?}");
    assert!(err.is_transient());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_mails_in_parallel_share_a_small_pool() {
    let receiver = SmtpReceiver::start().await.unwrap();
    let mailer = Arc::new(plain_mailer(receiver.port()));
    let sends = (0..100).map(|_| {
        let mailer = Arc::clone(&mailer);
        tokio::spawn(async move { mailer.send(&new_thread_mail()).await })
    });
    for send in futures_util::future::join_all(sends).await {
        send.unwrap().unwrap();
    }
    let got = receiver.wait_for(100, WAIT).await.unwrap();
    let ids: std::collections::HashSet<_> =
        got.iter().map(|m| parse_mail(&m.data).message_id).collect();
    assert_eq!(ids.len(), 100);
    assert!(
        receiver.stats().connections <= SmtpOptions::default().pool_max_size as usize,
        "{:?}",
        receiver.stats()
    );
}

#[tokio::test]
async fn a_pipelining_server_gets_each_mail_in_two_round_trips_on_one_connection() {
    let receiver = SmtpReceiver::start().await.unwrap();
    let mailer = plain_mailer(receiver.port());
    for _ in 0..5 {
        mailer.send(&new_thread_mail()).await.unwrap();
    }
    let got = receiver.wait_for(5, WAIT).await.unwrap();
    assert!(got.iter().all(|m| m.rcpt_to == [RECIPIENT]), "{got:?}");
    let stats = receiver.stats();
    assert_eq!(stats.connections, 1, "{stats:?}");
    // MAIL and RCPT arrived with the rest of their group behind them, and a connection used a
    // moment ago was not checked with NOOP first.
    assert!(stats.pipelined >= 5, "{stats:?}");
    assert_eq!(stats.noops, 0, "{stats:?}");
}

/// One connection (a pool of one), `n` mails sent at once: what each send returned.
async fn send_at_once(receiver: &SmtpReceiver, n: usize) -> Vec<Result<MessageId, MailError>> {
    let options = SmtpOptions {
        pool_max_size: 1,
        ..options(None)
    };
    let config = smtp_config(receiver.port(), StartTlsPolicy::Disabled, None);
    let mailer = SmtpMailer::new(&config, SENDER, options).unwrap();
    let mails: Vec<_> = (0..n).map(|_| new_thread_mail()).collect();
    futures_util::future::join_all(mails.iter().map(|m| mailer.send(m))).await
}

#[tokio::test]
async fn mails_waiting_for_a_connection_ride_behind_the_message_before_them() {
    let receiver = SmtpReceiver::start().await.unwrap();
    let outcomes = send_at_once(&receiver, 6).await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    let got = receiver.wait_for(6, WAIT).await.unwrap();
    let ids: std::collections::HashSet<_> =
        got.iter().map(|m| parse_mail(&m.data).message_id).collect();
    assert_eq!(ids.len(), 6, "{got:?}");
    let stats = receiver.stats();
    assert_eq!(stats.connections, 1, "{stats:?}");
    // Each message but the last went out with the next mail's MAIL, RCPT and DATA behind its
    // final dot (the first mail's own commands went alone).
    assert!(stats.chained >= 4, "{stats:?}");
}

/// A mail still waiting for a connection when its caller stops waiting (the engine lost its
/// claim, or is stopping) is not sent: the caller will not record it, so it could only be a
/// duplicate of what the request's next holder sends.
#[tokio::test(flavor = "current_thread")]
async fn a_queued_mail_nobody_waits_for_is_not_sent() {
    let receiver = SmtpReceiver::start().await.unwrap();
    let options = SmtpOptions {
        pool_max_size: 1,
        ..options(None)
    };
    let config = smtp_config(receiver.port(), StartTlsPolicy::Disabled, None);
    let mailer = Arc::new(SmtpMailer::new(&config, SENDER, options).unwrap());
    let mails: Vec<_> = (0..3).map(|_| new_thread_mail()).collect();
    let sends: Vec<_> = mails
        .iter()
        .map(|m| {
            let (mailer, m) = (mailer.clone(), m.clone());
            tokio::spawn(async move { mailer.send(&m).await })
        })
        .collect();
    // Every send is queued behind the first one's connection, which is still being dialled.
    tokio::task::yield_now().await;
    sends[1].abort();
    let first = sends.into_iter().next().unwrap();
    assert!(first.await.unwrap().is_ok());
    receiver.wait_for(2, WAIT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ids: Vec<_> = receiver
        .messages()
        .iter()
        .map(|m| parse_mail(&m.data).message_id.unwrap_or_default())
        .collect();
    let abandoned = mails[1].message_id.as_str();
    assert!(
        !ids.iter().any(|id| id.contains(abandoned)),
        "the abandoned mail went out: {ids:?}"
    );
    assert_eq!(ids.len(), 2, "{ids:?}");
}

#[tokio::test]
async fn a_message_refused_in_a_chain_leaves_the_others_delivered() {
    let receiver = SmtpReceiver::start().await.unwrap();
    receiver.inject(Stage::Data, "554 5.7.1 Message rejected", 1);
    let outcomes = send_at_once(&receiver, 4).await;
    let refused: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert_eq!(refused.len(), 1, "{outcomes:?}");
    assert!(
        matches!(refused[0], MailError::Rejected { code: 554, .. }),
        "{refused:?}"
    );
    assert_eq!(receiver.wait_for(3, WAIT).await.unwrap().len(), 3);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = receiver.stats();
    assert_eq!((stats.messages, stats.connections), (3, 1), "{stats:?}");
}

#[tokio::test]
async fn without_pipelining_one_command_at_a_time_and_noop_before_reuse() {
    let receiver = SmtpReceiver::builder()
        .pipelining(false)
        .start()
        .await
        .unwrap();
    let mailer = plain_mailer(receiver.port());
    for _ in 0..5 {
        mailer.send(&new_thread_mail()).await.unwrap();
    }
    assert_eq!(receiver.wait_for(5, WAIT).await.unwrap().len(), 5);
    let stats = receiver.stats();
    assert_eq!(stats.connections, 1, "{stats:?}");
    assert_eq!(stats.pipelined, 0, "{stats:?}");
    assert_eq!(stats.noops, 4, "{stats:?}");
}

#[tokio::test]
async fn a_pooled_connection_that_died_is_replaced_before_the_message_goes_out() {
    let receiver = SmtpReceiver::start().await.unwrap();
    let mailer = plain_mailer(receiver.port());
    mailer.send(&new_thread_mail()).await.unwrap();
    // The server drops every session and listens again: the pooled connection is dead, and too
    // fresh to be checked with NOOP.
    receiver.go_down().await;
    receiver.come_back().unwrap();
    let second = new_thread_mail();
    mailer.send(&second).await.unwrap();
    let got = receiver.wait_for(2, WAIT).await.unwrap();
    assert_eq!(got.len(), 2);
    assert_new_thread(&got[1].data, &second);
    assert_eq!(receiver.stats().connections, 2);
}

#[tokio::test]
async fn lines_that_start_with_a_dot_arrive_intact() {
    let receiver = SmtpReceiver::start().await.unwrap();
    let mailer = plain_mailer(receiver.port());
    let mut mail = new_thread_mail();
    mail.text = "first\n.\n.hidden\n..two\nlast".into();
    mailer.send(&mail).await.unwrap();
    let got = receiver.wait_for(1, WAIT).await.unwrap();
    assert!(receiver.stats().pipelined > 0);
    assert_eq!(parse_mail(&got[0].data).text, mail.text);
}

/// A server that offers CRAM-MD5 and neither PLAIN nor LOGIN (the original's Go library prefers
/// CRAM-MD5, so such a server works with the original): the mail goes through, the password
/// never crosses the wire, and a wrong password is a permanent AUTH failure.
#[tokio::test]
async fn auth_cram_md5_when_it_is_all_the_server_offers() {
    crypto();
    let pki = pki();
    let receiver = starttls_taking(&pki, AuthMechanism::CramMd5)
        .start()
        .await
        .unwrap();
    let mailer = signed_in(receiver.port(), &pki);
    mailer.health_check().await.unwrap();
    mailer.send(&new_thread_mail()).await.unwrap();
    let got = receiver.wait_for(1, WAIT).await.unwrap();
    assert_eq!(got[0].auth_user.as_deref(), Some(USER));

    let wrong = smtp_config(
        receiver.port(),
        StartTlsPolicy::Mandatory,
        Some((USER, "wrong-pw-456")),
    );
    let err = smtp_mailer(&wrong, Some(&pki))
        .send(&new_thread_mail())
        .await
        .unwrap_err();
    assert!(matches!(err, MailError::Auth { .. }), "{err:?}");
    assert!(!err.is_transient());
    assert!(!format!("{err} {err:?}").contains("wrong-pw-456"));
    assert_eq!(receiver.stats().auth_failures, 1);
}
