//! The SMTP session against the in-process receiver: which command a refusal answered (with and
//! without PIPELINING), HELO for a server that refuses EHLO, no password in clear, and nothing
//! read before the STARTTLS handshake read after it.

use std::time::Duration;

use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use teleport_email::config::StartTlsPolicy;
use teleport_email::mail::smtp::{SmtpMailer, SmtpOptions};
use teleport_email::mail::{MailError, Mailer, SmtpStep};
use teleport_email::testkit::smtp::{SmtpReceiver, SmtpReceiverBuilder, Stage};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(10);

/// A receiver without TLS or AUTH, offering PIPELINING or not.
async fn receiver(pipelining: bool) -> SmtpReceiver {
    SmtpReceiver::builder()
        .pipelining(pipelining)
        .start()
        .await
        .unwrap()
}

fn mailer(receiver: &SmtpReceiver, policy: StartTlsPolicy) -> SmtpMailer {
    smtp_mailer(&smtp_config(receiver.port(), policy, None), None)
}

/// The step and code of a refusal.
fn refusal(err: &MailError) -> (SmtpStep, u16) {
    match err {
        MailError::Rejected { step, code, .. } => (*step, *code),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn each_refusal_is_tagged_with_the_command_it_answered() {
    for pipelining in [true, false] {
        let receiver = receiver(pipelining).await;
        let mailer = mailer(&receiver, StartTlsPolicy::Disabled);
        for (stage, reply, step, mine) in [
            (
                Stage::MailFrom,
                "553 5.7.1 Sender refused",
                SmtpStep::Session,
                false,
            ),
            (
                Stage::RcptTo,
                "550 5.1.1 No such user",
                SmtpStep::Recipient,
                true,
            ),
            // A protocol (5.5.x) or policy (5.7.x) refusal is the mailer's; only what speaks
            // of the message itself is the message's (review_smtp.rs has the table).
            (Stage::DataCommand, "554 5.5.1 No", SmtpStep::Message, false),
            (Stage::Data, "554 5.7.1 Spam", SmtpStep::Message, false),
            (Stage::Data, "552 5.3.4 Too big", SmtpStep::Message, true),
            (
                Stage::RcptTo,
                "452 4.5.3 Too many",
                SmtpStep::Recipient,
                false,
            ),
        ] {
            receiver.inject(stage, reply, 1);
            let err = mailer.send(&new_thread_mail()).await.unwrap_err();
            let code = reply[..3].parse().unwrap();
            assert_eq!(refusal(&err), (step, code), "{pipelining} {stage:?}: {err}");
            assert_eq!(err.is_message_specific(), mine, "{pipelining} {stage:?}");
        }
        // Nothing was taken, and the mailer still works.
        mailer.send(&new_thread_mail()).await.unwrap();
        assert_eq!(receiver.wait_for(1, WAIT).await.unwrap().len(), 1);
        assert_eq!(receiver.stats().pipelined > 0, pipelining);
    }
}

#[tokio::test]
async fn a_refusal_to_a_mail_riding_behind_a_message_is_tagged_too() {
    for (stage, reply, step) in [
        (Stage::RcptTo, "550 5.1.1 No such user", SmtpStep::Recipient),
        (
            Stage::MailFrom,
            "553 5.7.1 Sender refused",
            SmtpStep::Session,
        ),
        (Stage::DataCommand, "554 5.5.1 No", SmtpStep::Message),
    ] {
        let receiver = receiver(true).await;
        // The second mail's command is refused: its group went behind the first message.
        receiver.inject_nth(stage, reply, 2);
        let config = smtp_config(receiver.port(), StartTlsPolicy::Disabled, None);
        let options = SmtpOptions {
            pool_max_size: 1,
            ..options(None)
        };
        let mailer = SmtpMailer::new(&config, SENDER, options).unwrap();
        let mails: Vec<_> = (0..3).map(|_| new_thread_mail()).collect();
        let outcomes = futures_util::future::join_all(mails.iter().map(|m| mailer.send(m))).await;
        let refused: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
        assert_eq!(refused.len(), 1, "{stage:?}: {outcomes:?}");
        assert_eq!(refusal(refused[0]).0, step, "{stage:?}: {refused:?}");
        assert!(receiver.stats().chained >= 1, "{:?}", receiver.stats());
        assert_eq!(receiver.wait_for(2, WAIT).await.unwrap().len(), 2);
    }
}

#[tokio::test]
async fn a_refused_greeting_is_the_sessions() {
    let receiver = receiver(true).await;
    receiver.refuse_next_connections(1);
    let err = mailer(&receiver, StartTlsPolicy::Disabled)
        .send(&new_thread_mail())
        .await
        .unwrap_err();
    assert_eq!(refusal(&err), (SmtpStep::Session, 421), "{err}");
    assert!(err.is_transient() && !err.is_message_specific());
}

/// An old server: EHLO refused with `refusal`, HELO accepted.
async fn helo_only(refusal: &str) -> SmtpReceiver {
    SmtpReceiver::builder()
        .refuse_ehlo(refusal)
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_server_that_refuses_ehlo_gets_helo() {
    for refusal in [
        "500 5.5.2 Command not recognized",
        "502 5.5.1 Not implemented",
    ] {
        let receiver = helo_only(refusal).await;
        for policy in [StartTlsPolicy::Disabled, StartTlsPolicy::Opportunistic] {
            let mailer = mailer(&receiver, policy);
            mailer.health_check().await.unwrap();
            mailer.send(&new_thread_mail()).await.unwrap();
            mailer.send(&new_thread_mail()).await.unwrap();
        }
        let got = receiver.wait_for(4, WAIT).await.unwrap();
        assert!(got.iter().all(|m| m.rcpt_to == [RECIPIENT] && !m.tls));
        let stats = receiver.stats();
        // HELO means no extensions: one command at a time.
        assert!(stats.helos >= 2, "{stats:?}");
        assert_eq!(stats.pipelined, 0, "{stats:?}");
    }
}

#[tokio::test]
async fn helo_offers_no_starttls_and_no_auth() {
    let receiver = helo_only("500 5.5.2 Command not recognized").await;
    let err = mailer(&receiver, StartTlsPolicy::Mandatory)
        .health_check()
        .await
        .unwrap_err();
    let server = format!("localhost:{}", receiver.port());
    assert_eq!(err, MailError::StartTlsUnavailable { server });

    let config = smtp_config(
        receiver.port(),
        StartTlsPolicy::Disabled,
        Some((USER, PASSWORD)),
    );
    let err = smtp_mailer(&config, None).health_check().await.unwrap_err();
    assert!(matches!(err, MailError::Auth { .. }), "{err:?}");
    assert!(
        err.to_string().contains("offers no AUTH mechanism"),
        "{err}"
    );
}

#[tokio::test]
async fn a_server_that_refuses_ehlo_and_helo_is_refused_clearly() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let (stream, _) = listener.accept().await.unwrap();
        let mut stream = BufReader::new(stream);
        stream.write_all(b"220 old.test\r\n").await.unwrap();
        let mut line = String::new();
        while stream.read_line(&mut line).await.unwrap_or(0) > 0 {
            stream.write_all(b"554 5.7.1 Go away\r\n").await.unwrap();
            line.clear();
        }
    });
    let err = plain_mailer(port).health_check().await.unwrap_err();
    assert_eq!(refusal(&err), (SmtpStep::Session, 554), "{err}");
    assert!(err.to_string().contains("Go away"), "{err}");
    server.abort();
}

/// A server that offers AUTH and no STARTTLS (or a man in the middle who removed it).
async fn auth_without_starttls() -> SmtpReceiver {
    SmtpReceiver::builder()
        .auth(USER, PASSWORD)
        .start()
        .await
        .unwrap()
}

/// A mailer with AUTH under `policy`, treating the (loopback) receiver as remote or not.
fn auth_mailer(receiver: &SmtpReceiver, policy: StartTlsPolicy, remote: bool) -> SmtpMailer {
    let config = smtp_config(receiver.port(), policy, Some((USER, PASSWORD)));
    let options = SmtpOptions {
        loopback_is_remote: remote,
        ..options(None)
    };
    SmtpMailer::new(&config, SENDER, options).unwrap()
}

#[tokio::test]
async fn the_password_never_goes_in_clear_to_a_remote_server() {
    let receiver = auth_without_starttls().await;
    for (policy, why) in [
        (StartTlsPolicy::Opportunistic, "did not offer STARTTLS"),
        (StartTlsPolicy::Disabled, "\"disabled\""),
    ] {
        let mailer = auth_mailer(&receiver, policy, true);
        for err in [
            mailer.health_check().await.unwrap_err(),
            mailer.send(&new_thread_mail()).await.unwrap_err(),
        ] {
            assert!(matches!(err, MailError::PlaintextAuth { .. }), "{err:?}");
            assert!(!err.is_transient() && !err.is_message_specific(), "{err}");
            let text = format!("{err} {err:?}");
            assert!(text.contains(why), "{text}");
            assert!(text.contains("smtp.allow_plaintext_auth = true"), "{text}");
            assert!(text.contains(&receiver.port().to_string()), "{text}");
            assert!(!text.contains(PASSWORD), "{text}");
        }
    }
    let stats = receiver.stats();
    assert_eq!(
        (stats.auth_attempts, stats.transactions),
        (0, 0),
        "{stats:?}"
    );
}

#[tokio::test]
async fn the_password_goes_in_clear_to_this_machine_or_with_consent() {
    let receiver = auth_without_starttls().await;
    // Loopback: the password never leaves the machine.
    auth_mailer(&receiver, StartTlsPolicy::Opportunistic, false)
        .send(&new_thread_mail())
        .await
        .unwrap();
    // A remote server, with the operator's consent.
    let mut config = smtp_config(
        receiver.port(),
        StartTlsPolicy::Disabled,
        Some((USER, PASSWORD)),
    );
    config.allow_plaintext_auth = true;
    let options = SmtpOptions {
        loopback_is_remote: true,
        ..options(None)
    };
    SmtpMailer::new(&config, SENDER, options)
        .unwrap()
        .send(&new_thread_mail())
        .await
        .unwrap();
    let got = receiver.wait_for(2, WAIT).await.unwrap();
    assert!(
        got.iter()
            .all(|m| m.auth_user.as_deref() == Some(USER) && !m.tls)
    );
}

/// A STARTTLS server that sends `250 injected` right behind its `220`, before the handshake.
async fn injecting_server(pki: &teleport_email::testkit::tls::TestPki) -> SmtpReceiver {
    let builder: SmtpReceiverBuilder = SmtpReceiver::builder()
        .starttls(pki.server_config().unwrap())
        .starttls_trailer("250 injected\r\n250 injected too\r\n");
    builder.start().await.unwrap()
}

#[tokio::test]
async fn bytes_sent_before_the_starttls_handshake_are_refused() {
    crypto();
    let pki = pki();
    let receiver = injecting_server(&pki).await;
    for policy in [StartTlsPolicy::Mandatory, StartTlsPolicy::Opportunistic] {
        let config = smtp_config(receiver.port(), policy, None);
        let mailer = smtp_mailer(&config, Some(&pki));
        for err in [
            mailer.health_check().await.unwrap_err(),
            mailer.send(&new_thread_mail()).await.unwrap_err(),
        ] {
            assert!(matches!(err, MailError::Tls { .. }), "{err:?}");
            assert!(
                err.to_string().contains("STARTTLS command injection"),
                "{err}"
            );
            assert!(!err.is_transient() && !err.is_message_specific());
        }
    }
    assert!(receiver.messages().is_empty());
    assert_eq!(receiver.stats().transactions, 0);
}

/// Why our own STARTTLS exchange: lettre 0.11.23 alone reads what the server sent before the
/// handshake as the first reply inside TLS (here, as the reply to its EHLO). Should lettre
/// start refusing it, this test fails and says so.
#[tokio::test]
async fn lettre_alone_reads_bytes_sent_before_the_handshake_as_replies() {
    crypto();
    let pki = pki();
    let receiver = injecting_server(&pki).await;
    let hello = ClientId::Domain("client.test".into());
    let mut conn = AsyncSmtpConnection::connect_tokio1(
        ("localhost", receiver.port()),
        Some(WAIT),
        &hello,
        None,
        None,
    )
    .await
    .unwrap();
    let ca = Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap();
    let tls = TlsParameters::builder("localhost".into())
        .add_root_certificate(ca)
        .build_rustls()
        .unwrap();
    conn.starttls(tls, &hello).await.unwrap();
    assert!(conn.is_encrypted());
    assert_eq!(conn.server_info().name(), "injected");
}
