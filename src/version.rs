//! The version line printed by `teleport-email version`.

/// The crate version, without a leading `v`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `git describe` of the tree this binary was built from, when it was known at build time.
pub const GIT_REF: Option<&str> = option_env!("TELEPORT_EMAIL_GIT_REF");

/// The compiler, e.g. `rustc1.95.0`.
pub const RUSTC: &str = env!("TELEPORT_EMAIL_RUSTC");

/// `teleport-email v<version> [git:<ref>] rustc<version>`, as the original prints its version line.
pub fn version_line() -> String {
    match GIT_REF {
        Some(git) if !git.is_empty() => format!("teleport-email v{VERSION} git:{git} {RUSTC}"),
        _ => format!("teleport-email v{VERSION} {RUSTC}"),
    }
}
