//! Owners' addresses, as the reminders mail them.

use super::*;

/// Owners' addresses, read once per check: the user name when it is an address, else the user's
/// `email` trait.
#[derive(Default)]
pub(super) struct Addresses {
    known: HashMap<String, Option<String>>,
    /// The role may not read users: said once per check.
    refused: bool,
    /// Owners whose address could not be read for a passing reason (the check is retried soon).
    pub(super) failed: usize,
}

impl Addresses {
    pub(super) async fn of(&mut self, client: &TeleportClient, user: &str) -> Option<String> {
        if usable(user) {
            return Some(user.to_owned());
        }
        if let Some(known) = self.known.get(user) {
            return known.clone();
        }
        let found = match client.user_traits(user).await {
            Ok(traits) => email_trait(&traits),
            Err(TeleportError::AccessDenied(e)) => {
                if !std::mem::replace(&mut self.refused, true) {
                    tracing::warn!(user = %user.escape_debug(), error = %e, "Cannot mail an Access List owner whose name is not an email address: the plugin's role may not read users (it needs `read` on `user`) for their `email` trait");
                }
                None
            }
            Err(TeleportError::NotFound(_)) => None,
            Err(e) if e.is_connection_problem() => {
                self.failed += 1;
                tracing::warn!(user = %user.escape_debug(), error = %e, "Cannot read an Access List owner's `email` trait; trying again shortly");
                return None;
            }
            Err(e) => {
                tracing::warn!(user = %user.escape_debug(), error = %e, "Cannot read an Access List owner's `email` trait; they are not reminded");
                None
            }
        };
        if found.is_none() {
            tracing::debug!(user = %user.escape_debug(), "An Access List owner has no email address (neither their name nor an `email` trait)");
        }
        self.known.insert(user.to_owned(), found.clone());
        found
    }
}
