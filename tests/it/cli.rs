//! The command line of the built binary: exit codes and messages.

use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_teleport-email"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn version_prints_one_line() {
    let out = run(&["version"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let line = stdout.trim_end();
    assert!(
        line.starts_with(&format!("teleport-email v{} ", env!("CARGO_PKG_VERSION"))),
        "{line}"
    );
    let last = line.rsplit(' ').next().unwrap();
    assert!(last.starts_with("rustc1."), "{line}");
    if let Some(git) = line.split(' ').find(|w| w.starts_with("git:")) {
        assert!(git.len() > 4, "empty git ref in {line}");
    }
}

#[test]
fn configure_prints_a_config_that_loads() {
    let out = run(&["configure"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = text(&out.stdout);
    assert_eq!(stdout, teleport_email::config::EXAMPLE_CONFIG);
    let loaded = teleport_email::config::parse(&stdout, std::path::Path::new("configure"))
        .expect("configure's output is a valid config");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn help_on_every_command() {
    let out = run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    for cmd in ["start", "check", "configure", "version"] {
        assert!(help.contains(cmd), "{help}");
    }
    let out = run(&["start", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    for flag in [
        "--config",
        "-c",
        "--debug",
        "-d",
        "/etc/teleport-email.toml",
    ] {
        assert!(help.contains(flag), "{flag} missing from: {help}");
    }
    let out = run(&["check", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("--send-test"));
    for cmd in ["configure", "version"] {
        assert_eq!(run(&[cmd, "--help"]).status.code(), Some(0), "{cmd} --help");
    }
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &[][..],
        &["frobnicate"],
        &["start", "--nope"],
        &["-d", "start"],
    ] {
        let out = run(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn start_with_missing_config_exits_3() {
    let out = run(&["start", "--config", "/nonexistent/teleport-email.toml"]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/teleport-email.toml"),
        "{stderr}"
    );
}

#[test]
fn start_with_broken_config_lists_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[smtp]\nhost = \"h\"\nstarttls_policy = \"insecure\"\n[role_to_recipients]\ndev = \"dev@example.com\"\n[log]\nformat = \"xml\"\n",
    )
    .unwrap();
    let out = run(&["start", "-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = text(&out.stderr);
    for needle in [
        "smtp.starttls_policy",
        "role_to_recipients[*]",
        "log.format",
        "3 problem(s)",
    ] {
        assert!(stderr.contains(needle), "{needle} missing from: {stderr}");
    }
}

/// What `start` does before it connects, in order: the config's warnings are logged through its
/// `[log]` settings, then an unreadable file-check interval stops it with exit 3, naming the
/// variable; a log file that cannot be opened stops it with exit 3 before anything else.
#[test]
fn start_reports_what_stops_it_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let config = |log: &str| {
        format!(
            "[teleport]\naddr = \"127.0.0.1:1\"\nidentity = \"/nonexistent/identity\"\nspare = 1\n\
             [smtp]\nhost = \"127.0.0.1\"\nport = 2\nstarttls_policy = \"disabled\"\n\
             [delivery]\nsender = \"a@example.com\"\n[role_to_recipients]\n\"*\" = \"b@example.com\"\n\
             [log]\nformat = \"json\"\noutput = \"{log}\"\n"
        )
    };
    let path = dir.path().join("ok.toml");
    std::fs::write(&path, config("stderr")).unwrap();
    let out = bin()
        .args(["start", "-c", path.to_str().unwrap()])
        .env("TELEPORT_EMAIL_FILE_CHECK_INTERVAL", "often")
        .output()
        .expect("the binary runs");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("a JSON line: {l}")))
        .collect();
    let (fatal, before) = lines.split_last().expect("log lines");
    assert!(
        before
            .iter()
            .any(|l| l["level"] == "WARN" && l.to_string().contains("teleport.spare")),
        "{stderr}"
    );
    assert_eq!(fatal["level"], "ERROR", "{stderr}");
    assert!(
        fatal
            .to_string()
            .contains("TELEPORT_EMAIL_FILE_CHECK_INTERVAL=\\\"often\\\""),
        "{stderr}"
    );

    let path = dir.path().join("bad-log.toml");
    std::fs::write(&path, config("/nonexistent/dir/plugin.log")).unwrap();
    let out = run(&["start", "-c", path.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("cannot set up logging"), "{stderr}");
    assert!(!stderr.contains("teleport.spare"), "{stderr}");
}

/// `start` with a valid config applies its `[log]` settings and logs through them (text and
/// JSON) until the fatal error, rather than panicking in the logging layer.
#[test]
fn start_logs_with_the_configured_format() {
    let dir = tempfile::tempdir().unwrap();
    for format in ["text", "json"] {
        let path = dir.path().join(format!("{format}.toml"));
        std::fs::write(
            &path,
            format!(
                "[teleport]\naddr = \"127.0.0.1:1\"\nidentity = \"/nonexistent/identity\"\n\
                 [smtp]\nhost = \"127.0.0.1\"\nport = 2\nstarttls_policy = \"disabled\"\n\
                 [delivery]\nsender = \"a@example.com\"\n[role_to_recipients]\n\"*\" = \"b@example.com\"\n\
                 [log]\nseverity = \"debug\"\nformat = \"{format}\"\n"
            ),
        )
        .unwrap();
        let out = run(&["start", &format!("--config={}", path.display())]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{format}: {stderr}");
        assert!(!stderr.contains("panicked"), "{format}: {stderr}");
        let fatal = stderr
            .lines()
            .find(|l| l.contains("Terminating with fatal error"))
            .unwrap_or_else(|| panic!("{format}: {stderr}"));
        if format == "json" {
            let v: serde_json::Value = serde_json::from_str(fatal).expect("a JSON line");
            assert_eq!(v["level"], "ERROR", "{fatal}");
        }
        assert!(
            stderr.contains("DEBUG"),
            "{format}: the debug level applies: {stderr}"
        );
    }
}

/// A TOML syntax error on a secret's line (issue 17.9): `start` and `check` name the file, line
/// and column, and print no part of the line.
#[test]
fn syntax_error_on_a_secret_line_prints_position_not_text() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(
        &path,
        "[smtp]\nhost = \"mail.example.com\"\nusername = \"u\"\npassword = \"s3cret\\qPW\"\n\
         [role_to_recipients]\n\"*\" = \"a@example.com\"\n",
    )
    .unwrap();
    let path = path.to_str().unwrap();
    for args in [&["start", "-c", path][..], &["check", "-c", path]] {
        let out = run(args);
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(3), "{args:?}: {all}");
        assert!(all.contains(path), "{args:?}: {all}");
        assert!(all.contains("line 4, column"), "{args:?}: {all}");
        for fragment in ["s3cret", "qPW", "password = "] {
            assert!(
                !all.contains(fragment),
                "{args:?} leaks {fragment:?}: {all}"
            );
        }
    }
}
