//! What the real Teleport does, pinned: the record the fake Auth Service is checked against.
//! `FINDINGS.md` explains each fact in words.

use std::time::Duration;

use serde_json::Value;

use super::probe::{self, Trust};
use super::rbac::{
    PLUGIN_ROLE, PLUGIN_USER, REQUESTED_ROLE, REQUESTER, REVIEWER1, REVIEWER2, STRICT_REQUESTER,
};
use super::{IdentityFormat, L7Balancer, RequestState, SignedIdentity};

/// The ALPN protocol that asks the proxy to pass the TLS stream through to Auth.
fn auth_alpn(cluster: &str) -> String {
    let hex: String = cluster.bytes().map(|b| format!("{b:02x}")).collect();
    format!("teleport-auth@{hex}.teleport.cluster.local")
}

#[test]
fn webapi_find_reports_tls_routing() {
    let cluster = shared_real_cluster!();
    let find = probe::get_json(
        cluster.web_addr(),
        Trust::Ca(cluster.web_ca_pem()),
        "/webapi/find",
    )
    .expect("find");
    eprintln!("/webapi/find: {find:#}");
    crate::fake_fidelity::check_find_shape(&find, cluster.web_addr(), cluster.cluster_name());
    assert_eq!(
        find["proxy"]["tls_routing_enabled"],
        Value::Bool(true),
        "{find:#}"
    );
    assert_eq!(find["cluster_name"], cluster.cluster_name(), "{find:#}");
    let version = find["server_version"].as_str().expect("server_version");
    assert!(version.starts_with("18."), "{version}");
    assert_eq!(
        find["proxy"]["ssh"]["public_addr"],
        cluster.web_addr().to_string(),
        "{find:#}"
    );
}

#[test]
fn web_port_routes_by_alpn() {
    let cluster = shared_real_cluster!();
    let web = cluster.web_addr();
    let name = cluster.cluster_name();

    // Plain web clients get the web certificate from our CA and the protocol they asked for.
    for alpn in ["h2", "http/1.1"] {
        let hs = probe::handshake(web, "localhost", &[alpn], Trust::Ca(cluster.web_ca_pem()))
            .unwrap_or_else(|e| panic!("[{alpn}]: {e}"));
        eprintln!("web [{alpn}] -> {hs:?}");
        assert_eq!(hs.alpn.as_deref(), Some(alpn));
    }
    let hs =
        probe::handshake(web, "localhost", &[], Trust::Ca(cluster.web_ca_pem())).expect("no ALPN");
    eprintln!("web [] -> {hs:?}");
    assert_eq!(hs.alpn, None);

    // teleport-auth@: the bytes go through to Auth, which answers with its own host
    // certificate (issuer: the cluster's Host CA) and picks h2.
    let auth = auth_alpn(name);
    let hs = probe::handshake(web, "teleport.cluster.local", &[&auth, "h2"], Trust::Any)
        .expect("auth ALPN");
    eprintln!("web [{auth}, h2] -> {hs:?}");
    assert_eq!(hs.alpn.as_deref(), Some("h2"));
    assert!(hs.issuer.contains(&format!("CN={name}")), "{hs:?}");
    assert!(
        hs.sans.iter().any(|s| s.contains("teleport.cluster.local")),
        "{hs:?}"
    );

    // The reverse tunnel: the proxy terminates TLS itself.
    let hs = probe::handshake(web, "localhost", &["teleport-reversetunnel"], Trust::Any)
        .expect("tunnel ALPN");
    eprintln!("web [teleport-reversetunnel] -> {hs:?}");
    assert_eq!(hs.alpn.as_deref(), Some("teleport-reversetunnel"));
}

#[test]
fn auth_port_speaks_h2_with_its_host_certificate() {
    let cluster = shared_real_cluster!();
    let hs = probe::handshake(
        cluster.auth_addr(),
        "teleport.cluster.local",
        &["h2"],
        Trust::Any,
    )
    .expect("auth");
    eprintln!("auth [h2] -> {hs:?}");
    assert_eq!(hs.alpn.as_deref(), Some("h2"));
    assert!(
        hs.issuer
            .contains(&format!("CN={}", cluster.cluster_name())),
        "{hs:?}"
    );
    assert!(
        hs.sans
            .iter()
            .any(|s| s == "DNSName(teleport.cluster.local)"),
        "{hs:?}"
    );
}

#[test]
fn identity_file_layout() {
    let cluster = shared_real_cluster!();
    let out = cluster.scratch_dir().join("layout");
    let SignedIdentity::File(file) = cluster.sign_identity(PLUGIN_USER, &out, IdentityFormat::File)
    else {
        unreachable!()
    };
    let text = std::fs::read_to_string(file).expect("identity file");
    let pieces = identity_pieces(&text);
    eprintln!("identity file pieces: {pieces:?}");
    assert_eq!(
        pieces,
        [
            "PEM PRIVATE KEY",
            "ssh-cert ecdsa-sha2-nistp256-cert-v01@openssh.com",
            "PEM CERTIFICATE",
            "@cert-authority teleport-email-test,*.teleport-email-test ssh-ed25519",
            "PEM CERTIFICATE",
        ]
    );

    let SignedIdentity::Tls { crt, key, cas } =
        cluster.sign_identity(PLUGIN_USER, &out, IdentityFormat::Tls)
    else {
        unreachable!()
    };
    let read = |p: &std::path::Path| std::fs::read_to_string(p).expect("tls file");
    assert_eq!(identity_pieces(&read(&key)), ["PEM PRIVATE KEY"]);
    assert_eq!(identity_pieces(&read(&crt)), ["PEM CERTIFICATE"]);
    assert_eq!(identity_pieces(&read(&cas)), ["PEM CERTIFICATE"]);
    // The CA part of both formats is the same Host CA certificate.
    let last_pem = &text[text.rfind("-----BEGIN CERTIFICATE-----").expect("CA PEM")..];
    assert_eq!(last_pem.trim(), read(&cas).trim());

    // The user certificate: CN = user, O = roles, issued by the cluster's (User) CA.
    let pem = read(&crt);
    let (_, der) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("crt PEM");
    let cert = der.parse_x509().expect("crt");
    let subject = cert.subject().to_string();
    eprintln!("user cert subject: {subject}; issuer: {}", cert.issuer());
    assert!(
        subject.contains(&format!("CN={PLUGIN_USER}"))
            && subject.contains(&format!("O={PLUGIN_ROLE}")),
        "{subject}"
    );
    assert_eq!(
        cert.public_key().algorithm.algorithm.to_id_string(),
        "1.2.840.10045.2.1",
        "ECDSA key expected"
    );
}

/// The identity file as a list of pieces in order: PEM blocks by label, the SSH certificate by
/// type, CA lines by their first three words.
fn identity_pieces(text: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    for line in text.lines() {
        if let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            pieces.push(format!("PEM {label}"));
        } else if line.starts_with("@cert-authority") {
            pieces.push(line.split(' ').take(3).collect::<Vec<_>>().join(" "));
        } else if line
            .split(' ')
            .next()
            .is_some_and(|w| w.ends_with("-cert-v01@openssh.com"))
        {
            pieces.push(format!(
                "ssh-cert {}",
                line.split(' ').next().unwrap_or_default()
            ));
        }
    }
    pieces
}

#[test]
fn the_access_plugin_role() {
    let cluster = shared_real_cluster!();
    let rbac = cluster.create_rbac();
    eprintln!(
        "preset access-plugin role: {:?}; written via the backend: {:?}",
        rbac.preset_access_plugin, rbac.via_backend
    );
    let run = cluster
        .tctl(&["get", &format!("roles/{PLUGIN_ROLE}"), "--format=json"])
        .ok();
    let role = super::rbac::first_of_list(&run.stdout);
    let rules = role["spec"]["allow"]["rules"]
        .as_array()
        .expect("rules")
        .clone();
    let grants = |resource: &str, verb: &str| {
        rules.iter().any(|r| {
            let has = |key: &str, want: &str| {
                r[key]
                    .as_array()
                    .is_some_and(|v| v.iter().any(|x| x == want || x == "*"))
            };
            has("resources", resource) && has("verbs", verb)
        })
    };
    for (resource, verb) in [
        ("access_request", "list"),
        ("access_request", "read"),
        ("access_plugin_data", "update"),
    ] {
        assert!(
            grants(resource, verb),
            "{PLUGIN_ROLE} lacks {verb} on {resource}: {role:#}"
        );
    }
}

#[test]
fn only_tsh_can_suggest_reviewers() {
    let bins = real_binaries_or_skip!();
    let help = |bin: &std::path::Path, args: &[&str]| {
        let out = std::process::Command::new(bin)
            .args(args)
            .output()
            .expect("help runs");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let tctl = help(&bins.tctl, &["request", "create", "--help"]);
    let tsh = help(&bins.tsh, &["request", "create", "--help"]);
    assert!(!tctl.contains("--reviewers"), "{tctl}");
    assert!(tsh.contains("--reviewers"), "{tsh}");
}

#[test]
fn two_of_two_thresholds_need_two_reviews() {
    let cluster = shared_real_cluster!();
    let wait = Duration::from_secs(10);

    let approved =
        cluster.create_request(STRICT_REQUESTER, &[REQUESTED_ROLE], "two approvals", &[]);
    cluster.review(REVIEWER1, &approved, true, "one");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(cluster.request_state(&approved), RequestState::Pending);
    cluster.review(REVIEWER2, &approved, true, "two");
    cluster.wait_for_state(&approved, RequestState::Approved, wait);
    let request = cluster.get_request(&approved).expect("request");
    assert_eq!(
        request["spec"]["reviews"].as_array().map(Vec::len),
        Some(2),
        "{request:#}"
    );

    let denied = cluster.create_request(STRICT_REQUESTER, &[REQUESTED_ROLE], "two denials", &[]);
    cluster.review(REVIEWER1, &denied, false, "no");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(cluster.request_state(&denied), RequestState::Pending);
    cluster.review(REVIEWER2, &denied, false, "no again");
    cluster.wait_for_state(&denied, RequestState::Denied, wait);

    // The admin's word is final whatever the thresholds.
    let ruled = cluster.create_request(STRICT_REQUESTER, &[REQUESTED_ROLE], "ruler", &[]);
    cluster.deny_as_admin(&ruled, "ruled out");
    cluster.wait_for_state(&ruled, RequestState::Denied, wait);
    let request = cluster.get_request(&ruled).expect("request");
    assert_eq!(
        request["spec"]["resolve_reason"], "ruled out",
        "{request:#}"
    );

    let ruled = cluster.create_request(REQUESTER, &[REQUESTED_ROLE], "ruler", &[]);
    cluster.approve_as_admin(&ruled, "ruled in");
    cluster.wait_for_state(&ruled, RequestState::Approved, wait);
}

#[test]
fn l7_balancer_hides_teleport_alpn() {
    let cluster = shared_real_cluster!();
    let lb = L7Balancer::start(cluster);
    let ca = Trust::Ca(lb.ca_pem());

    let hs =
        probe::handshake(lb.addr(), "localhost", &["h2", "http/1.1"], ca).expect("[h2, http/1.1]");
    eprintln!("nginx [h2, http/1.1] -> {hs:?}");
    assert_eq!(hs.alpn.as_deref(), Some("http/1.1"));
    let hs = probe::handshake(lb.addr(), "localhost", &[], ca).expect("no ALPN");
    assert_eq!(hs.alpn, None);
    for alpn in [
        "teleport-reversetunnel".to_owned(),
        auth_alpn(cluster.cluster_name()),
        "h2".to_owned(),
    ] {
        let result = probe::handshake(lb.addr(), "localhost", &[&alpn], ca);
        eprintln!("nginx [{alpn}] -> {result:?}");
        assert!(
            result.as_ref().map_or(true, |hs| hs.alpn.is_none()),
            "nginx must not negotiate {alpn}: {result:?}"
        );
    }

    let find = probe::get_json(lb.addr(), ca, "/webapi/find").expect("find through nginx");
    assert_eq!(find["cluster_name"], cluster.cluster_name());
    assert_eq!(find["proxy"]["tls_routing_enabled"], Value::Bool(true));

    let upgrade = probe::https_request(
        lb.addr(),
        "localhost",
        ca,
        "GET",
        "/webapi/connectionupgrade",
        &[
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Protocol: alpn-ping",
        ],
    )
    .expect("upgrade through nginx");
    eprintln!(
        "upgrade through nginx: {} {:?}",
        upgrade.status, upgrade.headers
    );
    assert_eq!(upgrade.status, 101, "{upgrade:?}");
    assert_eq!(upgrade.header("sec-websocket-protocol"), Some("alpn-ping"));
    assert_eq!(
        upgrade.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
}
