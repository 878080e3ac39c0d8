//! The Helm chart `deploy/helm/teleport-plugin-email`: its plain YAML passes yamllint, and for
//! each sample values file in its `ci/` directory the real `helm template` output is checked. The
//! ConfigMap's TOML is loaded with our config loader as the pod would load it (the Secret's data
//! written where the Deployment mounts it), and the Deployment and Secret are the ones the values
//! ask for.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use teleport_email::config::{
    self, Config, Credentials, LogOutput, LogSeverity, MailerConfig, MailgunConfig, SmtpConfig,
    StartTlsPolicy,
};

use crate::support::tools;

const PLUGIN_DIR: &str = "/var/lib/teleport/plugins/email";
/// Where the mail credential's Secret is mounted, whole.
const SECRET_DIR: &str = "/var/lib/teleport/plugins/email/mail-secret";
const RELEASE: &str = "mail";
const FULLNAME: &str = "mail-teleport-plugin-email";

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/helm/teleport-plugin-email")
}

fn output(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("{shown}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `helm template` of the chart with `args`: the manifests, or Helm's complaint.
fn template(args: &[&str]) -> Result<String, String> {
    let out = Command::new(tools::helm())
        .args(["template", RELEASE])
        .arg(chart())
        .args(args)
        .output()
        .expect("helm runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The manifests `helm template` renders for one values file, by template.
struct Rendered {
    docs: BTreeMap<String, String>,
}

impl Rendered {
    fn new(values: &str) -> Self {
        let text = output(
            Command::new(tools::helm())
                .args(["template", RELEASE])
                .arg(chart())
                .arg("--values")
                .arg(chart().join("ci").join(values)),
        );
        let rendered = Self::parse(&text);
        let deployment = rendered.doc("deployment.yaml");
        assert!(
            !deployment.contains("subPath"),
            "{values}: a subPath mount never sees an update:\n{deployment}"
        );
        rendered
    }

    fn parse(text: &str) -> Self {
        let mut docs = BTreeMap::new();
        for doc in text.split("\n---\n") {
            let Some(rest) = doc.trim_start_matches("---\n").strip_prefix("# Source: ") else {
                continue;
            };
            let (source, body) = rest.split_once('\n').unwrap_or((rest, ""));
            let template = source.rsplit('/').next().unwrap_or(source).to_owned();
            docs.insert(template, body.to_owned());
        }
        Self { docs }
    }

    fn doc(&self, template: &str) -> &str {
        self.docs
            .get(template)
            .unwrap_or_else(|| panic!("no {template} rendered; got {:?}", self.docs.keys()))
    }

    /// The ConfigMap's `teleport-email.toml`: the `|` block scalar, its indentation removed.
    fn toml(&self) -> String {
        let configmap = self.doc("configmap.yaml");
        let mut lines = configmap.lines();
        lines
            .by_ref()
            .find(|l| *l == "  teleport-email.toml: |")
            .expect("the ConfigMap has a teleport-email.toml block");
        let mut toml = String::new();
        for line in lines {
            if line.is_empty() {
                toml.push('\n');
            } else if let Some(content) = line.strip_prefix("    ") {
                toml.push_str(content);
                toml.push('\n');
            } else {
                break;
            }
        }
        toml
    }

    /// The chart's own Secret, decoded; empty when it rendered none.
    fn secret_data(&self) -> BTreeMap<String, String> {
        let Some(secret) = self.docs.get("secret.yaml") else {
            return BTreeMap::new();
        };
        let data = secret.split("\ndata:\n").nth(1).expect("a data: block");
        data.lines()
            .take_while(|l| l.starts_with("  "))
            .map(|l| {
                let (key, value) = l.trim().split_once(": ").expect("key: value");
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(value.trim_matches('"'))
                    .expect("base64");
                (key.to_owned(), String::from_utf8(bytes).expect("UTF-8"))
            })
            .collect()
    }

    /// Whether the Deployment mounts the mail credential's Secret `volume` whole at
    /// [`SECRET_DIR`].
    fn mounts_secret_dir(&self, volume: &str) -> bool {
        self.doc("deployment.yaml").contains(&format!(
            "- name: {volume}\n              mountPath: {SECRET_DIR}\n              readOnly: true\n"
        ))
    }

    /// Loads the TOML as the pod does: the mail Secret's keys (the chart's Secret, else
    /// `external`, the operator's own Secret) written into a stand-in for the plugin directory.
    fn load(&self, external: &[(&str, &str)]) -> (config::Loaded, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let secret_dir = dir.path().join("mail-secret");
        std::fs::create_dir(&secret_dir).unwrap();
        let data = self.secret_data();
        let owned: Vec<(&str, &str)> = data.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let keys = if data.is_empty() {
            external
        } else {
            &owned[..]
        };
        for (key, value) in keys {
            let path = secret_dir.join(key);
            std::fs::write(&path, value).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let text = self
            .toml()
            .replace(PLUGIN_DIR, &dir.path().display().to_string());
        match config::parse(&text, Path::new("teleport-email.toml")) {
            Ok(loaded) => (loaded, dir),
            Err(e) => panic!("the rendered config does not load: {e}\n{text}"),
        }
    }
}

fn identity(config: &Config, dir: &Path, key: &str) {
    assert_eq!(
        config.teleport.credentials,
        Some(Credentials::IdentityFile {
            path: dir.join("teleport-identity").join(key),
            refresh: Some(Duration::from_secs(60)),
        })
    );
}

fn smtp(config: &Config) -> &SmtpConfig {
    match &config.mailer {
        MailerConfig::Smtp(smtp) => smtp,
        other => panic!("expected SMTP, got {other:?}"),
    }
}

fn mailgun(config: &Config) -> &MailgunConfig {
    match &config.mailer {
        MailerConfig::Mailgun(mailgun) => mailgun,
        other => panic!("expected Mailgun, got {other:?}"),
    }
}

fn recipients(config: &Config) -> Vec<(&str, Vec<&str>)> {
    config
        .recipients
        .as_map()
        .iter()
        .map(|(role, list)| (role.as_str(), list.iter().map(String::as_str).collect()))
        .collect()
}

#[test]
fn chart_yaml_passes_yamllint() {
    let chart = chart();
    output(
        Command::new(tools::yamllint())
            .arg("--strict")
            .arg("--config-file")
            .arg(chart.parent().unwrap().join("yamllint.yaml"))
            .arg(chart.join("Chart.yaml"))
            .arg(chart.join("values.yaml"))
            .arg(chart.join("ci"))
            .arg(chart.parent().unwrap().join("yamllint.yaml")),
    );
}

#[test]
fn chart_passes_helm_lint_with_every_sample() {
    for entry in std::fs::read_dir(chart().join("ci")).unwrap() {
        let values = entry.unwrap().path();
        output(
            Command::new(tools::helm())
                .args(["lint", "--strict"])
                .arg(chart())
                .arg("--values")
                .arg(&values),
        );
    }
}

#[test]
fn smtp_with_inline_password() {
    let r = Rendered::new("smtp-values.yaml");
    let (loaded, dir) = r.load(&[]);
    let c = &loaded.config;
    assert_eq!(c.teleport.addr, "teleport.example.com:443");
    identity(c, dir.path(), "auth_id");
    let s = smtp(c);
    assert_eq!((s.host.as_str(), s.port), ("smtp.example.com", 587));
    assert_eq!(s.username.as_deref(), Some("mailer"));
    assert_eq!(
        s.password.as_ref().map(|p| p.expose()),
        Some("smtp-password-1")
    );
    assert_eq!(s.starttls, StartTlsPolicy::Mandatory);
    assert!(!s.implicit_tls);
    assert_eq!(c.delivery.sender, "Teleport <teleport@example.com>");
    assert_eq!(recipients(c), [("*", vec!["security@example.com"])]);
    assert_eq!(
        c.log.output,
        LogOutput::File("/var/log/teleport-email.log".into())
    );
    assert_eq!(c.log.severity, LogSeverity::Debug);
    assert!(
        loaded.warnings.iter().any(|w| w.contains("deprecated")),
        "{:?}",
        loaded.warnings
    );
    assert!(
        r.toml().contains(&format!(
            "password_file   = \"{SECRET_DIR}/smtpPassword\"\n"
        )),
        "{}",
        r.toml()
    );
    assert!(r.mounts_secret_dir("password-file"));
    let deployment = r.doc("deployment.yaml");
    for needle in [
        "- /usr/local/bin/teleport-plugin",
        "- \"/etc/teleport-email/teleport-email.toml\"",
        "name: TELEPORT_PLUGIN_FAIL_FAST\n              value: \"true\"",
        &format!("mountPath: {PLUGIN_DIR}/teleport-identity\n"),
        "secretName: teleport-plugin-email-identity",
        &format!("secretName: {FULLNAME}-secret"),
        "- name: config\n              mountPath: /etc/teleport-email\n              readOnly: true\n",
    ] {
        assert!(deployment.contains(needle), "{needle:?} in\n{deployment}");
    }
    assert!(!deployment.contains("livenessProbe"), "{deployment}");
    assert!(!r.toml().contains("[metrics]"));
}

#[test]
fn smtp_with_role_to_recipients_in_sorted_order() {
    let r = Rendered::new("smtp-role-to-recipients-values.yaml");
    let toml = r.toml();
    let table = toml.split("[role_to_recipients]\n").nth(1).unwrap();
    let keys: Vec<&str> = table
        .lines()
        .take_while(|l| !l.is_empty())
        .map(|l| l.split(" = ").next().unwrap())
        .collect();
    assert_eq!(keys, ["\"*\"", "\"admin\"", "\"dev\""], "{toml}");
    assert!(!toml.contains("recipients = "), "{toml}");
    let (loaded, dir) = r.load(&[]);
    let c = &loaded.config;
    assert_eq!(c.teleport.addr, "auth.example.com:3025");
    identity(c, dir.path(), "identity");
    let s = smtp(c);
    assert_eq!(s.port, 2525);
    assert_eq!(s.starttls, StartTlsPolicy::Opportunistic);
    assert_eq!(
        recipients(c),
        [
            ("*", vec!["security@example.com"]),
            ("admin", vec!["cto@example.com"]),
            ("dev", vec!["dev-leads@example.com", "devops@example.com"]),
        ]
    );
    assert_eq!(c.log.output, LogOutput::Stdout);
    assert_eq!(c.log.severity, LogSeverity::Info);
}

#[test]
fn mailgun_with_inline_key_and_eu_api_base() {
    let r = Rendered::new("mailgun-values.yaml");
    assert!(!r.toml().contains("[smtp]"));
    let (loaded, _dir) = r.load(&[]);
    let m = mailgun(&loaded.config);
    assert_eq!(m.domain, "mg.example.com");
    assert_eq!(m.private_key.expose(), "mailgun-key-3");
    assert_eq!(m.api_base, "https://api.eu.mailgun.net/v3");
    assert!(
        r.toml().contains(&format!(
            "private_key_file = \"{SECRET_DIR}/mailgunPrivateKey\"\n"
        )),
        "{}",
        r.toml()
    );
    assert!(r.mounts_secret_dir("password-file"));
}

#[test]
fn mailgun_wins_when_both_are_enabled() {
    let r = Rendered::new("mailgun-and-smtp-values.yaml");
    assert!(!r.toml().contains("[smtp]"), "{}", r.toml());
    let (loaded, _dir) = r.load(&[]);
    let m = mailgun(&loaded.config);
    assert_eq!(m.private_key.expose(), "mailgun-key-4");
    assert_eq!(m.api_base, config::MAILGUN_DEFAULT_API_BASE);
    // As in the original chart, the Secret carries both credentials; the config names Mailgun's.
    assert_eq!(
        r.secret_data().keys().collect::<Vec<_>>(),
        ["mailgunPrivateKey", "smtpPassword"]
    );
    assert!(r.toml().contains("/mail-secret/mailgunPrivateKey\""));
    assert!(!r.toml().contains("smtpPassword"));
}

#[test]
fn smtp_relay_without_starttls_or_auth() {
    let r = Rendered::new("smtp-starttls-disabled-values.yaml");
    assert!(r.toml().contains("starttls_policy = \"disabled\""));
    let (loaded, _dir) = r.load(&[]);
    let s = smtp(&loaded.config);
    assert_eq!((s.host.as_str(), s.port), ("relay.internal", 25));
    assert_eq!(s.starttls, StartTlsPolicy::Disabled);
    assert_eq!(s.username, None);
    assert_eq!(s.password, None);
    assert!(!s.implicit_tls);
}

/// `smtp.allowPlaintextAuth` renders the key the daemon needs for AUTH without TLS to a remote
/// relay (without it such a config is refused at start).
#[test]
fn smtp_plaintext_auth_needs_the_operators_consent() {
    let r = Rendered::new("smtp-plaintext-auth-values.yaml");
    assert!(
        r.toml().contains("allow_plaintext_auth = true"),
        "{}",
        r.toml()
    );
    let (loaded, _dir) = r.load(&[("password", "relay-password")]);
    let s = smtp(&loaded.config);
    assert_eq!(s.starttls, StartTlsPolicy::Disabled);
    assert!(s.allow_plaintext_auth);
    assert!(
        !Rendered::new("smtp-values.yaml")
            .toml()
            .contains("allow_plaintext_auth")
    );
}

#[test]
fn smtp_password_from_an_existing_secret() {
    let r = Rendered::new("smtp-password-from-secret-values.yaml");
    assert!(
        !r.docs.contains_key("secret.yaml"),
        "no Secret of the chart's own"
    );
    let deployment = r.doc("deployment.yaml");
    for needle in [
        "- name: smtp-password\n          secret:\n            secretName: existing-smtp-secret",
        &format!("- name: smtp-password\n              mountPath: {SECRET_DIR}\n"),
    ] {
        assert!(deployment.contains(needle), "{needle:?} in\n{deployment}");
    }
    let (loaded, _dir) = r.load(&[("password", "from-the-operator")]);
    let s = smtp(&loaded.config);
    assert_eq!(
        s.password.as_ref().map(|p| p.expose()),
        Some("from-the-operator")
    );
    assert_eq!(s.port, 465);
    assert!(s.implicit_tls);
}

#[test]
fn metrics_add_the_listener_port_and_probes() {
    let r = Rendered::new("metrics-values.yaml");
    let toml = r.toml();
    assert!(
        toml.contains("\n[metrics]\nlisten = \"0.0.0.0:9105\"\n"),
        "{toml}"
    );
    let (loaded, _dir) = r.load(&[]);
    assert_eq!(
        loaded.config.delivery.retry_timeout,
        Duration::from_secs(30 * 60)
    );
    let delivery = &loaded.config.delivery;
    assert!(delivery.notify_requester && delivery.access_list_reminders);
    assert_eq!(
        delivery.reminders,
        Some(teleport_email::config::Reminders {
            interval: Duration::from_secs(4 * 3600),
            limit: 2
        })
    );
    let deployment = r.doc("deployment.yaml");
    for needle in [
        "- name: metrics\n              containerPort: 9105",
        "livenessProbe:\n            httpGet:\n              path: /healthz\n              port: metrics",
        "readinessProbe:\n            httpGet:\n              path: /readyz\n              port: metrics",
        "prometheus.io/scrape: \"true\"",
        "example.com/team: security",
    ] {
        assert!(deployment.contains(needle), "{needle:?} in\n{deployment}");
    }
    assert!(
        r.doc("configmap.yaml")
            .contains("annotations:\n    example.com/owner: platform")
    );
}

/// The pod's defaults (issue 17.14): a restrictive container `securityContext`, no service account
/// token, checksums that roll the pod when the config or the chart's Secret changes, and a
/// writable emptyDir only where a log file is written.
#[test]
fn restrictive_defaults() {
    let r = Rendered::new("smtp-values.yaml");
    let deployment = r.doc("deployment.yaml");
    for needle in [
        "      automountServiceAccountToken: false\n",
        "          securityContext:\n            allowPrivilegeEscalation: false\n            \
         capabilities:\n              drop:\n              - ALL\n            \
         readOnlyRootFilesystem: true\n            runAsNonRoot: true\n            \
         seccompProfile:\n              type: RuntimeDefault\n",
        "        checksum/config: ",
        "        checksum/secret: ",
        "- name: log\n              mountPath: /var/log\n",
        "- name: log\n          emptyDir: {}\n",
    ] {
        assert!(deployment.contains(needle), "{needle:?} in\n{deployment}");
    }
    let sum = |d: &str, key: &str| {
        d.lines()
            .find_map(|l| l.trim().strip_prefix(key).map(str::to_owned))
            .unwrap_or_else(|| panic!("no {key} in\n{d}"))
    };
    // Another password changes the Secret's checksum and so the pod template.
    let other = template(&[
        "--values",
        chart().join("ci/smtp-values.yaml").to_str().unwrap(),
        "--set",
        "smtp.password=rotated",
    ])
    .unwrap();
    let other = Rendered::parse(&other);
    let other = other.doc("deployment.yaml");
    assert_ne!(
        sum(deployment, "checksum/secret: "),
        sum(other, "checksum/secret: ")
    );
    assert_eq!(
        sum(deployment, "checksum/config: "),
        sum(other, "checksum/config: ")
    );
    // Logging to stdout needs no writable directory.
    let r = Rendered::new("smtp-role-to-recipients-values.yaml");
    assert!(!r.doc("deployment.yaml").contains("emptyDir"));
    assert!(!r.docs.contains_key("networkpolicy.yaml"));
}

/// With metrics on, a NetworkPolicy admits only the scraper to the metrics port (issue 17.11).
#[test]
fn metrics_are_reachable_only_by_the_scraper() {
    let r = Rendered::new("metrics-values.yaml");
    let policy = r.doc("networkpolicy.yaml");
    for needle in [
        "kind: NetworkPolicy",
        "  podSelector:\n    matchLabels:\n      app.kubernetes.io/name: teleport-plugin-email\n      app.kubernetes.io/instance: mail\n",
        "  policyTypes:\n    - Ingress\n",
        "    - from:\n        - namespaceSelector: {}\n          podSelector:\n            matchLabels:\n              app.kubernetes.io/name: prometheus\n",
        "      ports:\n        - protocol: TCP\n          port: 9105",
    ] {
        assert!(policy.contains(needle), "{needle:?} in\n{policy}");
    }
    let off = template(&[
        "--values",
        chart().join("ci/metrics-values.yaml").to_str().unwrap(),
        "--set",
        "metrics.networkPolicy.enabled=false",
    ])
    .unwrap();
    assert!(!off.contains("kind: NetworkPolicy"), "{off}");
    // An empty list would admit everyone: refused.
    let err = template(&[
        "--values",
        chart().join("ci/metrics-values.yaml").to_str().unwrap(),
        "--set",
        "metrics.networkPolicy.from=null",
    ])
    .unwrap_err();
    assert!(err.contains("metrics.networkPolicy.from"), "{err}");
}

/// `values.schema.json` (issue 18): the chart's defaults and every sample pass; a mistyped value
/// is refused by `helm template` with the key named.
#[test]
fn values_schema_rejects_mistyped_values() {
    template(&[]).expect("the default values pass the schema");
    for (set, key) in [
        ("smtp.port=smtp", "port"),
        ("smtp.enabled=maybe", "enabled"),
        ("smtp.starttlsPolicy=sometimes", "starttlsPolicy"),
        ("metrics.port=99999", "port"),
        ("metrics.enabled=yes", "enabled"),
        ("mailgun.apiBase=api.mailgun.net", "apiBase"),
        ("smtp.implicitTls=sometimes", "implicitTls"),
        (
            "securityContext.readOnlyRootFilesystem=no",
            "readOnlyRootFilesystem",
        ),
        (
            "automountServiceAccountToken=nope",
            "automountServiceAccountToken",
        ),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
        ("delivery.accessListReminders=sure", "accessListReminders"),
        ("delivery.reminderLimit=many", "reminderLimit"),
    ] {
        let err = template(&["--set", set])
            .err()
            .unwrap_or_else(|| panic!("--set {set} was accepted"));
        assert!(
            err.contains("values don't meet the specifications of the schema") && err.contains(key),
            "{set}: {err}"
        );
    }
    let err = template(&["--set-json", r#"roleToRecipients={"*":[]}"#]).unwrap_err();
    assert!(err.contains("roleToRecipients"), "{err}");
    template(&[
        "--set-json",
        r#"roleToRecipients={"*":"a@example.com","dev":["d@example.com"]}"#,
    ])
    .expect("a string or a list per role");
}
