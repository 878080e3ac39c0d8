//! Outside tools the chart tests run, installed on first use under the target directory as the
//! aiosmtpd peer is: yamllint from PyPI into a venv, and Helm built from its Go module with
//! `go install` (the Go module proxy is the one place Helm can come from on a machine without
//! other downloads; a first build takes a few minutes, later runs reuse it).
//!
//! `HELM=/path/to/helm` uses an existing Helm instead. Without the tools' prerequisites (python3
//! with venv and pip; Go) the tests fail with the reason; they never pass silently.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use super::aiosmtpd::{DirLock, pip_venv, run, target_dir};

/// The yamllint release the chart is linted with.
pub const YAMLLINT_VERSION: &str = "1.38.0";

/// The Helm release the chart is rendered with.
pub const HELM_VERSION: &str = "v3.19.5";

/// The venv's `yamllint`, installed once per target directory.
pub fn yamllint() -> PathBuf {
    static PATH: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match PATH.get_or_init(provision_yamllint) {
        Ok(path) => path.clone(),
        Err(e) => panic!(
            "the chart lint needs python3 with the venv module and pip reaching PyPI \
             (to install yamllint {YAMLLINT_VERSION}); provisioning failed: {e}"
        ),
    }
}

/// A `helm` binary: `$HELM` when set, else one built once per target directory.
pub fn helm() -> PathBuf {
    static PATH: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match PATH.get_or_init(provision_helm) {
        Ok(path) => path.clone(),
        Err(e) => panic!(
            "the chart tests need Helm: set HELM=/path/to/helm, or have Go so that \
             `go install helm.sh/helm/v3/cmd/helm@{HELM_VERSION}` can build it; that failed: {e}"
        ),
    }
}

fn provision_yamllint() -> Result<PathBuf, String> {
    let venv = pip_venv(
        "yamllint",
        YAMLLINT_VERSION,
        &["-m", "yamllint", "--version"],
    )?;
    Ok(venv.join("bin").join("yamllint"))
}

fn provision_helm() -> Result<PathBuf, String> {
    if let Some(helm) = std::env::var_os("HELM") {
        return Ok(PathBuf::from(helm));
    }
    let target = target_dir()?;
    let bin = target.join(format!("helm-{HELM_VERSION}"));
    let helm = bin.join("helm");
    if helm.exists() {
        return Ok(helm);
    }
    let _lock = DirLock::acquire(&target.join("helm.lock"))?;
    if helm.exists() {
        return Ok(helm);
    }
    let go = std::env::var("GO").unwrap_or_else(|_| "go".to_owned());
    eprintln!("building Helm {HELM_VERSION} with `go install` (once; takes a few minutes)");
    run(Command::new(go)
        .args([
            "install",
            &format!("helm.sh/helm/v3/cmd/helm@{HELM_VERSION}"),
        ])
        .env("GOBIN", &bin)
        .env("CGO_ENABLED", "0"))?;
    run(Command::new(&helm).args(["version", "--short"]))?;
    Ok(helm)
}
