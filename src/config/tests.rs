//! The original plugin's config tests, and ours.

use super::*;

fn ok(text: &str) -> Loaded {
    match parse(text, Path::new("test.toml")) {
        Ok(l) => l,
        Err(e) => panic!("expected a valid config, got: {e}"),
    }
}

fn problems(text: &str) -> Vec<String> {
    match parse(text, Path::new("test.toml")) {
        Err(ConfigError::Invalid { problems, .. }) => problems,
        Err(other) => panic!("expected validation problems, got {other}"),
        Ok(l) => panic!("expected an error, got {:?}", l.config),
    }
}

fn map(entries: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
        .collect()
}

const MAILGUN: &str = "[mailgun]\ndomain = \"x.example.com\"\nprivate_key = \"k\"\n";

// --- upstream TestRecipients ---

#[test]
fn delivery_recipients_become_the_wildcard() {
    let l = ok(&format!(
        "{MAILGUN}[delivery]\nsender = \"s@example.com\"\nrecipients = [\"e1@example.com\", \"e2@example.com\"]\n"
    ));
    assert_eq!(
        l.config.recipients.as_map(),
        &map(&[("*", &["e1@example.com", "e2@example.com"])])
    );
    assert!(
        l.warnings.iter().any(|w| w.contains("deprecated")),
        "{:?}",
        l.warnings
    );
}

#[test]
fn role_to_recipients_with_string_and_list() {
    let l = ok(&format!(
        "{MAILGUN}[role_to_recipients]\ndev = [\"dev@example.com\", \"sre@example.com\"]\n\"*\" = \"admin@example.com\"\n"
    ));
    assert_eq!(
        l.config.recipients.as_map(),
        &map(&[
            ("*", &["admin@example.com"]),
            ("dev", &["dev@example.com", "sre@example.com"])
        ])
    );
}

#[test]
fn wildcard_is_required() {
    let p = problems(&format!(
        "{MAILGUN}[role_to_recipients]\ndev = \"dev@example.com\"\n"
    ));
    assert!(
        p.iter().any(|p| p.contains("role_to_recipients[*]")),
        "{p:?}"
    );
}

#[test]
fn empty_wildcard_is_refused() {
    let p = problems(&format!(
        "{MAILGUN}[role_to_recipients]\ndev = \"dev@example.com\"\n\"*\" = []\n"
    ));
    assert!(
        p.iter().any(|p| p.contains("role_to_recipients[*]")),
        "{p:?}"
    );
}

#[test]
fn no_recipients_at_all() {
    let p = problems(&format!(
        "{MAILGUN}[delivery]\nsender = \"s@example.com\"\n"
    ));
    assert!(
        p.iter()
            .any(|p| p.contains("missing required value role_to_recipients")),
        "{p:?}"
    );
}

#[test]
fn a_slack_section_is_not_a_mailer() {
    let p =
        problems("[slack]\ntoken = \"x\"\n[role_to_recipients]\n\"*\" = \"admin@example.com\"\n");
    assert!(
        p.iter()
            .any(|p| p.contains("provide either [mailgun] or [smtp]")),
        "{p:?}"
    );
}

#[test]
fn both_recipient_forms_are_an_error() {
    let p = problems(&format!(
        "{MAILGUN}[delivery]\nrecipients = [\"a@example.com\"]\n[role_to_recipients]\n\"*\" = \"b@example.com\"\n"
    ));
    assert!(p.iter().any(|p| p.contains("not both")), "{p:?}");
}

// --- upstream TestSMTPStartTLSPolicy ---

fn smtp_with_policy(policy: Option<&str>) -> String {
    let line = policy
        .map(|p| format!("starttls_policy = \"{p}\"\n"))
        .unwrap_or_default();
    format!(
        "[smtp]\nhost = \"http://example.org/\"\nusername = \"user\"\npassword = \"pw\"\n{line}[role_to_recipients]\n\"*\" = \"admin@example.com\"\n"
    )
}

fn smtp_of(l: &Loaded) -> &SmtpConfig {
    match &l.config.mailer {
        MailerConfig::Smtp(s) => s,
        other => panic!("expected SMTP, got {other:?}"),
    }
}

#[test]
fn starttls_policies() {
    for (given, want) in [
        (None, StartTlsPolicy::Mandatory),
        (Some("mandatory"), StartTlsPolicy::Mandatory),
        (Some("opportunistic"), StartTlsPolicy::Opportunistic),
    ] {
        let l = ok(&smtp_with_policy(given));
        assert_eq!(smtp_of(&l).starttls, want, "{given:?}");
    }
    // Ours: "disabled" with a username to a remote host needs the operator's explicit consent
    // (below); with it, the policy reads as upstream's.
    let consent = smtp_with_policy(Some("disabled")).replace(
        "[role_to_recipients]",
        "allow_plaintext_auth = true\n[role_to_recipients]",
    );
    let l = ok(&consent);
    assert_eq!(smtp_of(&l).starttls, StartTlsPolicy::Disabled);
    assert!(smtp_of(&l).allow_plaintext_auth);
    assert!(
        l.warnings.iter().any(|w| w.contains("sent without TLS")),
        "{:?}",
        l.warnings
    );
}

#[test]
fn a_password_in_clear_to_a_remote_server_needs_consent() {
    let p = problems(&smtp_with_policy(Some("disabled")));
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].starts_with("smtp.allow_plaintext_auth: "), "{p:?}");
    for key in [
        "smtp.username",
        "smtp.starttls_policy",
        "smtp.allow_plaintext_auth = true",
    ] {
        assert!(p[0].contains(key), "{key}: {p:?}");
    }
    // To this machine, or without a username, nothing crosses the network in clear.
    for host in ["localhost", "127.0.0.1", "[::1]", "::1"] {
        let text = smtp_with_policy(Some("disabled")).replace("http://example.org/", host);
        assert!(!smtp_of(&ok(&text)).allow_plaintext_auth, "{host}");
    }
    let no_auth = smtp_with_policy(Some("disabled")).replace("username = \"user\"\n", "");
    ok(&no_auth);
}

#[test]
fn invalid_starttls_policy_lists_the_three() {
    let p = problems(&smtp_with_policy(Some("insecure")));
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].starts_with("smtp.starttls_policy: "), "{p:?}");
    assert!(p[0].contains("invalid smtp.starttls_policy"), "{p:?}");
    assert!(p[0].contains("mandatory, opportunistic, disabled"), "{p:?}");
}

// --- the user guide and our own example ---

#[test]
fn user_guide_example_loads() {
    let text = r#"
[teleport]
addr = "example.com:443"
identity = "/var/lib/teleport/plugins/email/identity"
refresh_identity = true

[mailgun]
domain = "sandbox123abc.mailgun.org" 
private_key = "xoxb-fakekey62b0eac53565a38c8cc0316f6"

[delivery]
sender = "noreply@example.com" 

[role_to_recipients]
"*" = "eng@example.com"
"editor" = ["admin@example.com", "execs@example.com"]

[log]
output = "stderr" # Logger output. Could be "stdout", "stderr" or "/var/lib/teleport/email.log"
severity = "INFO" # Logger severity. Could be "INFO", "ERROR", "DEBUG" or "WARN".
"#;
    let l = ok(text);
    let c = &l.config;
    assert_eq!(c.teleport.addr, "example.com:443");
    assert_eq!(
        c.teleport.credentials,
        Some(Credentials::IdentityFile {
            path: "/var/lib/teleport/plugins/email/identity".into(),
            refresh: Some(Duration::from_secs(60)),
        })
    );
    match &c.mailer {
        MailerConfig::Mailgun(m) => {
            assert_eq!(m.domain, "sandbox123abc.mailgun.org");
            assert_eq!(
                m.private_key.expose(),
                "xoxb-fakekey62b0eac53565a38c8cc0316f6"
            );
            assert_eq!(m.api_base, MAILGUN_DEFAULT_API_BASE);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.delivery.sender, "noreply@example.com");
    assert_eq!(
        c.recipients.for_role("editor"),
        ["admin@example.com", "execs@example.com"]
    );
    assert_eq!(c.recipients.for_role("other"), ["eng@example.com"]);
    assert_eq!(
        c.log,
        LogConfig {
            output: LogOutput::Stderr,
            severity: LogSeverity::Info,
            format: LogFormat::Text
        }
    );
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
}

#[test]
fn configure_output_loads_without_warnings() {
    let l = ok(EXAMPLE_CONFIG);
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    assert!(matches!(l.config.mailer, MailerConfig::Mailgun(_)));
}

/// Every key the loader knows is documented in the example `configure` prints.
#[test]
fn configure_output_documents_every_key() {
    for key in [
        "addr",
        "auth_server",
        "identity",
        "refresh_identity",
        "refresh_identity_interval",
        "client_crt",
        "client_key",
        "root_cas",
        "domain",
        "private_key",
        "private_key_file",
        "api_base",
        "host",
        "port",
        "username",
        "password",
        "password_file",
        "starttls_policy",
        "implicit_tls",
        "retry_timeout",
        "notify_requester",
        "reminder_interval",
        "reminder_limit",
        "access_list_reminders",
        "listen",
        "sender",
        "recipients",
        "output",
        "severity",
        "format",
    ] {
        assert!(
            EXAMPLE_CONFIG.contains(key),
            "configure does not document {key}"
        );
    }
}

#[test]
fn three_mistakes_are_reported_together() {
    let p = problems(
        r#"
[smtp]
host = "mail.example.com"
port = 99999
username = "u"
password = "p"
starttls_policy = "sometimes"

[role_to_recipients]
"*" = "Ops Team <ops@example.com>"

[log]
severity = "loud"
"#,
    );
    assert_eq!(p.len(), 4, "{p:?}");
    for key in [
        "smtp.port: ",
        "smtp.starttls_policy: ",
        "role_to_recipients.\"*\": ",
        "log.severity: ",
    ] {
        assert!(
            p.iter().any(|p| p.starts_with(key)),
            "no problem for {key} in {p:?}"
        );
    }
}

// --- defaults, aliases and the rest ---

#[test]
fn defaults() {
    let l = ok(&format!(
        "{MAILGUN}[role_to_recipients]\n\"*\" = \"a@example.com\"\n"
    ));
    assert_eq!(l.config.teleport.addr, "localhost:3025");
    assert_eq!(l.config.teleport.credentials, None);
    assert_eq!(l.config.log.output, LogOutput::Stderr);
    assert_eq!(l.config.log.severity, LogSeverity::Info);
    assert_eq!(l.config.log.format, LogFormat::Text);
    let l = ok(&smtp_with_policy(None));
    assert_eq!(smtp_of(&l).port, 587);
    assert!(!smtp_of(&l).implicit_tls);
}

#[test]
fn auth_server_is_a_deprecated_alias() {
    let l = ok(&format!(
        "[teleport]\nauth_server = \"auth.example.com:3025\"\n{MAILGUN}[role_to_recipients]\n\"*\" = \"a@example.com\"\n"
    ));
    assert_eq!(l.config.teleport.addr, "auth.example.com:3025");
    assert!(
        l.warnings
            .iter()
            .any(|w| w.contains("auth_server is deprecated"))
    );
}

#[test]
fn refresh_interval_forms() {
    for (given, secs) in [("\"30s\"", 30), ("\"1h\"", 3600), ("5000000000", 5)] {
        let l = ok(&format!(
            "[teleport]\nidentity = \"/id\"\nrefresh_identity = true\nrefresh_identity_interval = {given}\n{MAILGUN}[role_to_recipients]\n\"*\" = \"a@example.com\"\n"
        ));
        assert_eq!(
            l.config.teleport.credentials,
            Some(Credentials::IdentityFile {
                path: "/id".into(),
                refresh: Some(Duration::from_secs(secs))
            })
        );
    }
}

#[test]
fn partial_tls_trio_names_what_is_missing() {
    let p = problems(&format!(
        "[teleport]\nclient_crt = \"/a.crt\"\n{MAILGUN}[role_to_recipients]\n\"*\" = \"a@example.com\"\n"
    ));
    assert!(
        p.iter().any(|p| p.contains("client_key, root_cas missing")),
        "{p:?}"
    );
}

#[test]
fn unknown_keys_are_warnings() {
    let l = ok(&format!(
        "[teleport]\naddres = \"x:1\"\n{MAILGUN}[role_to_recipients]\n\"*\" = \"a@example.com\"\n[metrix]\n"
    ));
    assert!(
        l.warnings.iter().any(|w| w.contains("teleport.addres")),
        "{:?}",
        l.warnings
    );
    assert!(
        l.warnings.iter().any(|w| w.contains("section metrix")),
        "{:?}",
        l.warnings
    );
}

#[test]
fn both_mailers_smtp_wins_with_a_warning() {
    let l = ok(&format!("{MAILGUN}{}", smtp_with_policy(None)));
    assert!(matches!(l.config.mailer, MailerConfig::Smtp(_)));
    assert!(l.warnings.iter().any(|w| w.contains("using SMTP")));
}

#[test]
fn mailgun_requires_domain_and_key() {
    let p = problems("[mailgun]\n[role_to_recipients]\n\"*\" = \"a@example.com\"\n");
    assert!(
        p.iter().any(|p| p.contains("provide mailgun.domain")),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|p| p.contains("specify mailgun.private_key or mailgun.private_key_file")),
        "{p:?}"
    );
}

#[test]
fn secret_files_are_read_and_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("pw");
    std::fs::write(&good, "  s3cret\n").unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, " \n").unwrap();
    let missing = dir.path().join("missing");

    let text = |file: &Path| {
        format!(
            "[smtp]\nhost = \"h\"\nusername = \"u\"\npassword_file = \"{}\"\n[role_to_recipients]\n\"*\" = \"a@example.com\"\n",
            file.display()
        )
    };
    let l = ok(&text(&good));
    assert_eq!(smtp_of(&l).password.as_ref().unwrap().expose(), "s3cret");
    let p = problems(&text(&empty));
    assert!(
        p[0].starts_with("smtp.password_file: ") && p[0].contains("is empty"),
        "{p:?}"
    );
    let p = problems(&text(&missing));
    assert!(
        p[0].starts_with("smtp.password_file: ") && p[0].contains(&missing.display().to_string()),
        "{p:?}"
    );
}

#[test]
fn smtp_without_username_sends_without_auth() {
    let l = ok(
        "[smtp]\nhost = \"relay.internal\"\nport = 25\nstarttls_policy = \"opportunistic\"\n[role_to_recipients]\n\"*\" = \"a@example.com\"\n",
    );
    assert_eq!(smtp_of(&l).username, None);
    assert_eq!(smtp_of(&l).password, None);
}

#[test]
fn port_465_means_implicit_tls() {
    let l =
        ok("[smtp]\nhost = \"h\"\nport = 465\n[role_to_recipients]\n\"*\" = \"a@example.com\"\n");
    assert!(smtp_of(&l).implicit_tls);
}

#[test]
fn secrets_never_appear_in_debug_output() {
    let l = ok(&smtp_with_policy(None));
    let dump = format!("{:?}", l.config);
    assert!(!dump.contains("\"pw\""), "{dump}");
    assert!(dump.contains("[redacted]"), "{dump}");
}

#[test]
fn log_keywords() {
    let l = ok(&format!(
        "{MAILGUN}[role_to_recipients]\n\"*\" = \"a@example.com\"\n[log]\noutput = \"/var/log/te.log\"\nseverity = \"Warning\"\nformat = \"JSON\"\n"
    ));
    assert_eq!(
        l.config.log.output,
        LogOutput::File("/var/log/te.log".into())
    );
    assert_eq!(l.config.log.severity, LogSeverity::Warn);
    assert_eq!(l.config.log.format, LogFormat::Json);
}

#[test]
fn syntax_errors_name_the_file() {
    let e = parse("[teleport\n", Path::new("/etc/x.toml")).unwrap_err();
    assert!(matches!(e, ConfigError::Syntax { .. }));
    assert!(e.to_string().contains("/etc/x.toml"));
}

#[test]
fn metrics_listen() {
    let l = ok(&format!(
        "{MAILGUN}[role_to_recipients]\n\"*\" = \"a@example.com\"\n[metrics]\nlisten = \"127.0.0.1:9105\"\n"
    ));
    assert_eq!(l.config.metrics, Some("127.0.0.1:9105".parse().unwrap()));
    let p = problems(&format!(
        "{MAILGUN}[role_to_recipients]\n\"*\" = \"a@example.com\"\n[metrics]\nlisten = \"everywhere\"\n"
    ));
    assert!(p[0].starts_with("metrics.listen: "), "{p:?}");
}

/// Broken lines that hold a secret: the error names the position, never the text (issue 17.9).
#[test]
fn syntax_errors_never_quote_the_line() {
    let cases = [
        ("[smtp]\nhost = \"h\"\npassword = \"s3cret\\qPW\"\n", 3),
        ("[smtp]\npassword = \"s3cretPW\n", 2),
        ("[smtp]\npassword = s3cretPW\n", 2),
        ("[mailgun]\nprivate_key = 's3cretPW\n", 2),
        ("[mailgun]\nprivate_key = \"s3cretPW\" junk\n", 2),
        (
            "[mailgun]\nprivate_key = \"s3cretPW\"\nprivate_key = \"s3cretPW\"\n",
            3,
        ),
        ("[smtp]\npassword = \"\"\"s3cretPW\n", 3),
        ("[smtp]\n\"pass\u{e9}\" = \"\u{e9}s3cretPW\\q\"\n", 2),
    ];
    for (text, line) in cases {
        let e = parse(text, Path::new("/etc/x.toml")).unwrap_err();
        let ConfigError::Syntax {
            line: got, column, ..
        } = &e
        else {
            panic!("{text:?}: expected a syntax error, got {e}");
        };
        let shown = format!("{e} {e:?}");
        assert_eq!(*got, line, "{text:?}: {shown}");
        assert!(*column >= 1, "{shown}");
        assert!(
            shown.contains(&format!("line {line}, column {column}")),
            "{shown}"
        );
        assert!(shown.contains("/etc/x.toml"), "{shown}");
        for fragment in ["s3cret", "cretPW", "qPW"] {
            assert!(
                !shown.contains(fragment),
                "{text:?} leaks {fragment}: {shown}"
            );
        }
    }
}

/// Type errors on secret keys name the key and the type, not the value.
#[test]
fn type_errors_on_secrets_do_not_echo_the_value() {
    for text in [
        "[smtp]\nhost = \"h\"\nusername = \"u\"\npassword = 1234567890\n",
        "[smtp]\nhost = \"h\"\nusername = \"u\"\npassword = [\"s3cretPW\"]\n",
        "[smtp]\nhost = \"h\"\nusername = \"u\"\npassword = { v = \"s3cretPW\" }\n",
        "[mailgun]\ndomain = \"d.example.com\"\nprivate_key = [\"s3cretPW\"]\n",
        "[mailgun]\ndomain = \"d.example.com\"\nprivate_key_file = [\"s3cretPW\"]\n",
    ] {
        let e = parse(text, Path::new("x.toml")).unwrap_err();
        let shown = format!("{e} {e:?}");
        assert!(
            shown.contains("password") || shown.contains("private_key"),
            "{shown}"
        );
        assert!(
            !shown.contains("s3cretPW") && !shown.contains("1234567890"),
            "{shown}"
        );
    }
}

fn mailgun_with_base(base: &str) -> String {
    format!(
        "[mailgun]\ndomain = \"d.example.com\"\nprivate_key = \"k\"\napi_base = \"{base}\"\n[role_to_recipients]\n\"*\" = \"a@example.com\"\n"
    )
}

/// `http://` carries the API key in clear, so only loopback hosts may use it (issue 17.12).
#[test]
fn plain_http_api_base_only_to_loopback() {
    for base in [
        "https://api.eu.mailgun.net/v3",
        "https://10.0.0.1/v3",
        "http://127.0.0.1:8080/v3",
        "http://127.8.9.10/v3",
        "http://[::1]:8080/v3",
        "http://localhost:8080/v3",
        "http://LOCALHOST/v3/",
    ] {
        ok(&mailgun_with_base(base));
    }
    for base in [
        "http://api.mailgun.net/v3",
        "http://10.0.0.1/v3",
        "http://128.0.0.1/v3",
        "http://localhost.evil.example/v3",
        "http://evil.example\\\\@127.0.0.1/v3",
        "http://[::2]/v3",
        "ftp://127.0.0.1/v3",
        "api.mailgun.net/v3",
    ] {
        let p = problems(&mailgun_with_base(base));
        assert_eq!(p.len(), 1, "{base}: {p:?}");
        assert!(p[0].starts_with("mailgun.api_base: "), "{base}: {p:?}");
    }
    let p = problems(&mailgun_with_base("http://api.mailgun.net/v3"));
    assert!(
        p[0].contains("https://") && p[0].contains("loopback"),
        "{p:?}"
    );
}

// --- exact findings, pinned so that reshaping the readers cannot change them ---

const RECIPIENTS: &str =
    "[delivery]\nsender = \"s@example.com\"\n[role_to_recipients]\n\"*\" = \"a@example.com\"\n";

#[test]
fn teleport_credential_findings_are_exact() {
    let l = ok(&format!(
        "[teleport]\nidentity = \"/id\"\nrefresh_identity = true\nroot_cas = \"/ca\"\nclient_crt = \"/c\"\n{MAILGUN}{RECIPIENTS}"
    ));
    assert_eq!(
        l.config.teleport.credentials,
        Some(Credentials::IdentityFile {
            path: "/id".into(),
            refresh: Some(Duration::from_secs(60))
        })
    );
    assert_eq!(
        l.warnings,
        ["teleport.identity is set, so teleport.client_crt, teleport.root_cas is ignored"]
    );

    let l = ok(&format!(
        "[teleport]\nrefresh_identity = true\nclient_crt = \"/c\"\nclient_key = \"/k\"\nroot_cas = \"/ca\"\n{MAILGUN}{RECIPIENTS}"
    ));
    assert_eq!(
        l.config.teleport.credentials,
        Some(Credentials::KeyPair {
            cert: "/c".into(),
            key: "/k".into(),
            root_cas: "/ca".into()
        })
    );
    assert_eq!(
        l.warnings,
        ["teleport.refresh_identity only applies to teleport.identity and is ignored"]
    );

    let p = problems(&format!(
        "[teleport]\nrefresh_identity_interval = \"0s\"\nroot_cas = \"/ca\"\nclient_key = \"/k\"\n{MAILGUN}{RECIPIENTS}"
    ));
    assert_eq!(
        p,
        [
            "teleport.refresh_identity_interval: must be greater than zero",
            "teleport: client_crt, client_key and root_cas go together: client_key, root_cas given, client_crt missing",
        ]
    );
}

#[test]
fn recipient_findings_are_exact() {
    let p = problems(&format!(
        "{MAILGUN}[role_to_recipients]\ndev = [\"Dev <d@example.com>\", \"a/b@example.com\"]\n\"db admin\" = \"x\"\n"
    ));
    assert_eq!(
        p,
        [
            "role_to_recipients: missing required value role_to_recipients[*]: the \"*\" entry lists who gets requests for roles without an entry of their own",
            "role_to_recipients.\"db admin\": invalid email address \"x\" (a bare address such as ops@example.com, without a display name)",
            "role_to_recipients.dev: invalid email address \"Dev <d@example.com>\" (a bare address such as ops@example.com, without a display name)",
            "role_to_recipients.dev: email address \"a/b@example.com\" contains '/', which the plugin data cannot store",
        ]
    );

    let l = ok(&format!(
        "{MAILGUN}[delivery]\nsender = \"s@example.com\"\nrecipients = []\n[role_to_recipients]\n\"*\" = \"a@example.com\"\n"
    ));
    assert_eq!(
        l.warnings,
        ["delivery.recipients is deprecated and empty here; it is ignored"]
    );
}

#[test]
fn log_findings_are_exact() {
    let l = ok(&format!(
        "{MAILGUN}{RECIPIENTS}[log]\noutput = \"syslog\"\nseverity = \"WARNING\"\nformat = \"JSON\"\n"
    ));
    assert_eq!(l.config.log.output, LogOutput::Syslog);
    assert_eq!(l.config.log.severity, LogSeverity::Warn);
    assert_eq!(l.config.log.format, LogFormat::Json);
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let p = problems(&format!(
        "{MAILGUN}{RECIPIENTS}[log]\noutput = \"/var/log/x\"\nseverity = \"loud\"\nformat = \"xml\"\n"
    ));
    assert_eq!(
        p,
        [
            "log.severity: unsupported logger severity \"loud\" (use trace, debug, info, warn or error)",
            "log.format: unsupported log output format \"xml\" (use text or json)",
        ]
    );
}

#[test]
fn reminders_are_off_by_default_and_checked_when_on() {
    let base = format!("{MAILGUN}[role_to_recipients]\n\"*\" = \"a@example.com\"\n[delivery]\n");
    assert_eq!(ok(&base).config.delivery.reminders, None);
    let on = ok(&format!("{base}reminder_interval = \"4h\"\n"));
    assert_eq!(
        on.config.delivery.reminders,
        Some(Reminders {
            interval: std::time::Duration::from_secs(4 * 3600),
            limit: DEFAULT_REMINDER_LIMIT
        })
    );
    let p = problems(&format!(
        "{base}reminder_interval = \"10s\"\nreminder_limit = 0\n"
    ));
    assert!(
        p.iter().any(|p| p.contains("delivery.reminder_interval")),
        "{p:?}"
    );
    let p = problems(&format!(
        "{base}reminder_interval = \"1h\"\nreminder_limit = 1000\n"
    ));
    assert!(
        p.iter().any(|p| p.contains("delivery.reminder_limit")),
        "{p:?}"
    );
    let p = problems(&format!(
        "{base}reminder_interval = \"3000000000000000h\"\n"
    ));
    assert!(
        p.iter().any(|p| p.contains("delivery.reminder_interval")),
        "{p:?}"
    );
    let lone = ok(&format!("{base}reminder_limit = 2\n"));
    assert!(
        lone.warnings.iter().any(|w| w.contains("reminder_limit")),
        "{:?}",
        lone.warnings
    );
}
