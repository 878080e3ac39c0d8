//! Errors from talking to Teleport, typed the way callers branch on them.

use tonic::{Code, Status};

use super::dial::DialError;
use super::identity::CredentialError;

/// A failed call or connection.
#[derive(Debug, thiserror::Error)]
pub enum TeleportError {
    /// A compare-and-swap on plugin data lost (FAILED_PRECONDITION).
    #[error("compare failed: {0}")]
    CompareFailed(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// The plugin's role lacks a permission (PERMISSION_DENIED).
    #[error(
        "access denied: {0} (check the plugin user's role: it needs access_request list/read and access_plugin_data update)"
    )]
    AccessDenied(String),
    #[error("bad parameter: {0}")]
    BadParameter(String),
    /// The connection broke or the server is unavailable; retrying may help.
    #[error("connection problem: {0}")]
    Unavailable(String),
    /// The server does not know the method (an older Teleport).
    #[error("not implemented by this Teleport version: {0}")]
    Unimplemented(String),
    #[error("{0}")]
    Timeout(String),
    #[error("Teleport returned {code:?}: {message}")]
    Other { code: Code, message: String },
    #[error(transparent)]
    Dial(#[from] DialError),
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    #[error("Teleport {found} is too old: teleport-email needs Teleport {required} or newer")]
    ServerTooOld { found: String, required: String },
}

impl TeleportError {
    /// Whether a later retry (after reconnecting) may succeed.
    pub fn is_connection_problem(&self) -> bool {
        matches!(
            self,
            Self::Unavailable(_) | Self::Timeout(_) | Self::Dial(_)
        ) || matches!(self, Self::Other { code, .. } if matches!(code, Code::Unknown | Code::Internal | Code::Cancelled | Code::DeadlineExceeded | Code::Aborted))
    }
}

impl From<Status> for TeleportError {
    fn from(s: Status) -> Self {
        let message = s.message().to_owned();
        match s.code() {
            Code::FailedPrecondition => Self::CompareFailed(message),
            Code::NotFound => Self::NotFound(message),
            Code::PermissionDenied | Code::Unauthenticated => Self::AccessDenied(message),
            Code::InvalidArgument => Self::BadParameter(message),
            Code::Unavailable => Self::Unavailable(if message.is_empty() {
                "the connection to Teleport was lost".into()
            } else {
                message
            }),
            Code::Unimplemented => Self::Unimplemented(message),
            Code::DeadlineExceeded => Self::Timeout(message),
            code => Self::Other { code, message },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_kinds() {
        let e = TeleportError::from(Status::failed_precondition("expectations not met"));
        assert!(matches!(e, TeleportError::CompareFailed(_)));
        assert!(matches!(
            TeleportError::from(Status::permission_denied("x")),
            TeleportError::AccessDenied(_)
        ));
        assert!(matches!(
            TeleportError::from(Status::unimplemented("x")),
            TeleportError::Unimplemented(_)
        ));
        assert!(TeleportError::from(Status::unavailable("x")).is_connection_problem());
        assert!(!TeleportError::from(Status::not_found("x")).is_connection_problem());
    }
}
