//! The SMTP backend against aiosmtpd, a real SMTP server we did not write: STARTTLS policies,
//! implicit TLS, AUTH PLAIN/LOGIN, bad credentials, content, threading and header injection.

use std::time::Duration;

use teleport_email::config::StartTlsPolicy;
use teleport_email::mail::{MailError, Mailer};

use crate::support::aiosmtpd::{Aiosmtpd, Mode, Variant};
use crate::support::*;

const WAIT: Duration = Duration::from_secs(15);

fn starttls_with_auth() -> Variant {
    Variant {
        mode: Mode::StartTls,
        require_starttls: true,
        auth: true,
        ..Variant::default()
    }
}

#[tokio::test]
async fn mandatory_starttls_auth_plain_whole_thread() {
    crypto();
    let pki = pki();
    let server = Aiosmtpd::start(&starttls_with_auth(), Some(&pki));
    let mailer = signed_in(server.port, &pki);
    mailer.health_check().await.unwrap();

    let first = new_thread_mail();
    mailer.send(&first).await.unwrap();
    let reply = follow_up_mail(&first.message_id);
    mailer.send(&reply).await.unwrap();

    let got = server.wait_for(2, WAIT).await;
    for mail in &got {
        assert!(mail.tls);
        assert_eq!(mail.auth_user.as_deref(), Some(USER));
        assert_eq!(mail.mail_from, SENDER);
        assert_eq!(mail.rcpt_tos, vec![RECIPIENT.to_owned()]);
    }
    assert_new_thread(&got[0].data, &first);
    assert_follow_up(&got[1].data, &reply, &first.message_id);
}

#[tokio::test]
async fn auth_login_when_plain_is_not_offered() {
    crypto();
    let pki = pki();
    let variant = Variant {
        auth_exclude: vec!["PLAIN"],
        ..starttls_with_auth()
    };
    let server = Aiosmtpd::start(&variant, Some(&pki));
    let mailer = signed_in(server.port, &pki);
    mailer.health_check().await.unwrap();
    mailer.send(&new_thread_mail()).await.unwrap();
    let got = server.wait_for(1, WAIT).await;
    assert_eq!(got[0].auth_user.as_deref(), Some(USER));
}

#[tokio::test]
async fn wrong_password_is_permanent() {
    crypto();
    let pki = pki();
    let server = Aiosmtpd::start(&starttls_with_auth(), Some(&pki));
    let config = smtp_config(
        server.port,
        StartTlsPolicy::Mandatory,
        Some((USER, "not-it-789")),
    );
    let mailer = smtp_mailer(&config, Some(&pki));
    for err in [
        mailer.health_check().await.unwrap_err(),
        mailer.send(&new_thread_mail()).await.unwrap_err(),
    ] {
        assert!(matches!(err, MailError::Auth { .. }), "{err:?}");
        assert!(!err.is_transient());
        assert!(
            err.to_string()
                .contains(&format!("localhost:{}", server.port)),
            "{err}"
        );
        assert!(!format!("{err} {err:?}").contains("not-it-789"));
    }
}

#[tokio::test]
async fn opportunistic_upgrades_when_offered() {
    crypto();
    let pki = pki();
    let variant = Variant {
        mode: Mode::StartTls,
        ..Variant::default()
    };
    let server = Aiosmtpd::start(&variant, Some(&pki));
    let config = smtp_config(server.port, StartTlsPolicy::Opportunistic, None);
    smtp_mailer(&config, Some(&pki))
        .send(&new_thread_mail())
        .await
        .unwrap();
    assert!(server.wait_for(1, WAIT).await[0].tls);
}

#[tokio::test]
async fn without_starttls_mandatory_fails_and_the_others_send_in_clear() {
    crypto();
    let server = Aiosmtpd::start(&Variant::default(), None);

    let config = smtp_config(server.port, StartTlsPolicy::Mandatory, None);
    let mailer = smtp_mailer(&config, None);
    let server_name = format!("localhost:{}", server.port);
    for err in [
        mailer.health_check().await.unwrap_err(),
        mailer.send(&new_thread_mail()).await.unwrap_err(),
    ] {
        assert_eq!(
            err,
            MailError::StartTlsUnavailable {
                server: server_name.clone()
            }
        );
        assert!(!err.is_transient());
    }

    for policy in [StartTlsPolicy::Opportunistic, StartTlsPolicy::Disabled] {
        let config = smtp_config(server.port, policy, None);
        let mailer = smtp_mailer(&config, None);
        mailer.health_check().await.unwrap();
        mailer.send(&new_thread_mail()).await.unwrap();
    }
    let got = server.wait_for(2, WAIT).await;
    assert!(got.iter().all(|m| !m.tls && m.auth_user.is_none()));
}

#[tokio::test]
async fn disabled_policy_never_upgrades_and_auth_needs_tls_there() {
    crypto();
    let pki = pki();
    // STARTTLS offered but not required, AUTH only after TLS (aiosmtpd's default).
    let variant = Variant {
        mode: Mode::StartTls,
        auth: true,
        ..Variant::default()
    };
    let server = Aiosmtpd::start(&variant, Some(&pki));
    let err = signing_in_without_tls(server.port)
        .send(&new_thread_mail())
        .await
        .unwrap_err();
    assert!(matches!(err, MailError::Auth { .. }), "{err:?}");
    assert!(!err.is_transient());
}

#[tokio::test]
async fn implicit_tls_with_auth() {
    crypto();
    let pki = pki();
    let variant = Variant {
        mode: Mode::Implicit,
        auth: true,
        ..Variant::default()
    };
    let server = Aiosmtpd::start(&variant, Some(&pki));
    let mailer = signed_in_over_implicit_tls(server.port, &pki);
    mailer.health_check().await.unwrap();
    let mail = new_thread_mail();
    mailer.send(&mail).await.unwrap();
    let got = server.wait_for(1, WAIT).await;
    assert!(got[0].tls);
    assert_eq!(got[0].auth_user.as_deref(), Some(USER));
    assert_new_thread(&got[0].data, &mail);
}

#[tokio::test]
async fn header_injection_adds_no_header_and_no_recipient() {
    crypto();
    let pki = pki();
    let server = Aiosmtpd::start(&starttls_with_auth(), Some(&pki));
    let mut mail = injection_mail();
    mail.subject = format!("raw subject{INJECTION}");
    signed_in(server.port, &pki).send(&mail).await.unwrap();
    let got = server.wait_for(1, WAIT).await;
    assert_eq!(got[0].rcpt_tos, vec![RECIPIENT.to_owned()]);
    assert_no_injected_header(&got[0].data);
}
