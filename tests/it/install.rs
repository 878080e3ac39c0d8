//! `deploy/install`, run with `sh` as an operator runs it from the unpacked release: it refuses
//! to run as non-root, and it copies the binary and the unit where they belong (into a `DESTDIR`
//! here, so the test never touches the machine's own directories).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The release layout: `install`, `teleport-email` and `systemd/teleport-email.service` side by side.
fn release_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(deploy_dir().join("install"), dir.path().join("install")).unwrap();
    std::fs::copy(
        env!("CARGO_BIN_EXE_teleport-email"),
        dir.path().join("teleport-email"),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("systemd")).unwrap();
    std::fs::copy(
        deploy_dir().join("systemd/teleport-email.service"),
        dir.path().join("systemd/teleport-email.service"),
    )
    .unwrap();
    dir
}

fn install(release: &Path, env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new("sh");
    cmd.arg(release.join("install"))
        .env_remove("DESTDIR")
        .env_remove("BINDIR")
        .env_remove("UNITDIR")
        .env_remove("BINARY");
    for (key, value) in env {
        cmd.env(key, value);
    }
    cmd.output().unwrap()
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().unwrap();
    text(&out.stdout).trim() == "0"
}

#[test]
fn refuses_to_run_as_non_root() {
    let release = release_dir();
    // Let the unprivileged user read the copy.
    std::fs::set_permissions(release.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = release.path().join("install");
    let out = if is_root() {
        // As root here: drop to nobody for this one run.
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh"])
            .arg(&script)
            .env_remove("DESTDIR")
            .output()
            .expect("setpriv (util-linux) runs the script as nobody")
    } else {
        install(release.path(), &[])
    };
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr).trim(), "ERROR: You must be root");
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
}

#[test]
fn installs_binary_data_dir_and_unit_into_destdir() {
    let release = release_dir();
    let dest = tempfile::tempdir().unwrap();
    let out = install(release.path(), &[("DESTDIR", dest.path())]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let binary = dest.path().join("usr/local/bin/teleport-email");
    assert_eq!(
        std::fs::read(&binary).unwrap(),
        std::fs::read(env!("CARGO_BIN_EXE_teleport-email")).unwrap()
    );
    let mode = std::fs::metadata(&binary).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
    let version = Command::new(&binary).arg("version").output().unwrap();
    assert!(text(&version.stdout).starts_with("teleport-email v"));

    assert!(dest.path().join("var/lib/teleport/plugins/email").is_dir());
    let unit = std::fs::read_to_string(
        dest.path()
            .join("etc/systemd/system/teleport-email.service"),
    )
    .unwrap();
    assert_eq!(
        unit,
        std::fs::read_to_string(deploy_dir().join("systemd/teleport-email.service")).unwrap()
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("teleport-email configure > /etc/teleport-email.toml"),
        "{stdout}"
    );
    assert!(
        stdout.contains("systemctl enable --now teleport-email"),
        "{stdout}"
    );
}

#[test]
fn bindir_moves_the_binary_and_the_unit_follows() {
    let release = release_dir();
    let dest = tempfile::tempdir().unwrap();
    let out = install(
        release.path(),
        &[
            ("DESTDIR", dest.path()),
            ("BINDIR", Path::new("/opt/teleport-email/bin")),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        dest.path()
            .join("opt/teleport-email/bin/teleport-email")
            .is_file()
    );
    assert!(!dest.path().join("usr/local/bin/teleport-email").exists());
    let unit = std::fs::read_to_string(
        dest.path()
            .join("etc/systemd/system/teleport-email.service"),
    )
    .unwrap();
    assert!(
        unit.contains("ExecStart=/opt/teleport-email/bin/teleport-email start"),
        "{unit}"
    );
}

#[test]
fn a_missing_binary_is_named() {
    let release = release_dir();
    std::fs::remove_file(release.path().join("teleport-email")).unwrap();
    let dest = tempfile::tempdir().unwrap();
    let out = install(release.path(), &[("DESTDIR", dest.path())]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("teleport-email not found"),
        "{}",
        text(&out.stderr)
    );
}
