//! The start-up steps `start` and `check` share: the Teleport credentials, a connection that
//! answered Ping, and a mailer that passed its health check — each with one wording of its errors.

use std::sync::Arc;

use crate::config::{Config, Credentials};
use crate::exit::Exit;
use crate::mail::{self, MailError, Mailer};
use crate::teleport::identity::CredentialError;
use crate::teleport::{
    ClusterInfo, CredentialStore, DialOptions, INIT_TIMEOUT, TeleportClient, TeleportError,
};

/// A start-up step that failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartupError {
    #[error(
        "no Teleport credentials configured: set teleport.identity (or teleport.client_crt, client_key and root_cas)"
    )]
    NoCredentials,
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    #[error(transparent)]
    Connect(TeleportError),
    #[error("Ping to Teleport timed out after {}s", INIT_TIMEOUT.as_secs())]
    PingTimeout,
    #[error("Ping to Teleport failed: {0}")]
    Ping(TeleportError),
    #[error(transparent)]
    Mailer(MailError),
    #[error("mail server health check timed out after {}s", INIT_TIMEOUT.as_secs())]
    HealthTimeout,
    #[error("mail server health check failed: {0}")]
    Health(MailError),
}

impl StartupError {
    /// The exit status `start` ends with.
    pub(crate) fn exit(&self) -> Exit {
        match self {
            Self::NoCredentials => Exit::Config,
            Self::Credentials(_) | Self::Connect(_) | Self::PingTimeout | Self::Ping(_) => {
                Exit::Teleport
            }
            Self::Mailer(_) | Self::HealthTimeout | Self::Health(_) => Exit::Mailer,
        }
    }
}

/// The configured credentials (the identity file, or the key pair with its CAs).
pub(crate) fn credentials(
    config: &Config,
) -> Result<(&Credentials, Arc<CredentialStore>), StartupError> {
    let source = config
        .teleport
        .credentials
        .as_ref()
        .ok_or(StartupError::NoCredentials)?;
    Ok((source, CredentialStore::load(source)?))
}

/// Connects to `teleport.addr` and pings, each within [`INIT_TIMEOUT`].
pub(crate) async fn connect(
    config: &Config,
    credentials: Arc<CredentialStore>,
) -> Result<(TeleportClient, ClusterInfo), StartupError> {
    let client = TeleportClient::connect(
        DialOptions::new(&config.teleport.addr),
        credentials,
        INIT_TIMEOUT,
    )
    .await
    .map_err(StartupError::Connect)?;
    let cluster = tokio::time::timeout(INIT_TIMEOUT, client.ping())
        .await
        .map_err(|_| StartupError::PingTimeout)?
        .map_err(StartupError::Ping)?;
    Ok((client, cluster))
}

/// The configured mailer, once its health check passed within [`INIT_TIMEOUT`].
pub(crate) async fn mailer(config: &Config) -> Result<Arc<dyn Mailer>, StartupError> {
    let mailer = mail::from_config(
        &config.mailer,
        &config.delivery.sender,
        config.recipients.fallback(),
    )
    .map_err(StartupError::Mailer)?;
    tokio::time::timeout(INIT_TIMEOUT, mailer.health_check())
        .await
        .map_err(|_| StartupError::HealthTimeout)?
        .map_err(StartupError::Health)?;
    Ok(mailer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_say_the_constant_they_use() {
        let secs = format!("after {}s", INIT_TIMEOUT.as_secs());
        for e in [StartupError::PingTimeout, StartupError::HealthTimeout] {
            assert!(e.to_string().ends_with(&secs), "{e}");
        }
    }

    #[test]
    fn each_step_has_its_exit_status() {
        assert_eq!(StartupError::NoCredentials.exit(), Exit::Config);
        assert_eq!(StartupError::PingTimeout.exit(), Exit::Teleport);
        assert_eq!(StartupError::HealthTimeout.exit(), Exit::Mailer);
    }
}
