//! Who a request's mails go to when Access Monitoring Rules route it: the recipients of every
//! rule whose condition matches, instead of `role_to_recipients` and the suggested reviewers (as
//! the original plugin since v17); no match, or no rule, leaves the usual routing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::Engine;
use super::recipients::recipients_for;
use crate::address::{email_trait, usable};
use crate::rules::RuleSet;
use crate::rules::condition::Env;
use crate::teleport::{AccessRequest, TeleportClient, TeleportError, Traits};

/// How long a requester's traits are reused: a reconcile of many requests by the same users
/// reads each user once, and a changed trait is seen within a minute.
const TRAITS_TTL: Duration = Duration::from_secs(60);

/// Requesters whose traits are remembered at once; the memory is simply emptied when full.
const TRAITS_CACHE_MAX: usize = 1024;

/// Where the requester's traits come from (`user.traits` in conditions).
#[async_trait::async_trait]
pub trait Directory: Send + Sync {
    async fn user_traits(&self, user: &str) -> Result<Traits, TeleportError>;
}

#[async_trait::async_trait]
impl Directory for TeleportClient {
    async fn user_traits(&self, user: &str) -> Result<Traits, TeleportError> {
        TeleportClient::user_traits(self, user).await
    }
}

/// The rules and what they need, as the engine holds them.
pub(super) struct Monitoring {
    pub(super) rules: Arc<RuleSet>,
    pub(super) users: Arc<Users>,
}

/// Users' traits, read from a [`Directory`] and remembered a minute.
pub(super) struct Users {
    directory: Arc<dyn Directory>,
    /// User → their traits, or the refusal to read them, when, and which readers were told of
    /// the refusal already.
    traits: Mutex<HashMap<String, Remembered>>,
}

/// A user's traits as read, or why the role may not read them.
type Read = Result<Traits, String>;

struct Remembered {
    at: Instant,
    read: Read,
    told: [bool; 3],
}

/// Who reads a user's traits: each is told of a refusal once (a WARN of its own).
#[derive(Clone, Copy)]
pub(super) enum Reader {
    Rules = 0,
    Requester = 1,
    /// Never warns.
    Quiet = 2,
}

impl Users {
    pub(super) fn new(directory: Arc<dyn Directory>) -> Self {
        Self {
            directory,
            traits: Mutex::default(),
        }
    }

    /// `user`'s traits, from memory when read in the last minute; a refusal (the role may not
    /// read users) is remembered as long. The flag says whether `reader` hears of this answer
    /// for the first time (worth a WARN).
    pub(super) async fn traits(
        &self,
        user: &str,
        reader: Reader,
    ) -> (Result<Traits, TeleportError>, bool) {
        if let Some(known) = self.remembered(user, reader) {
            return known;
        }
        let read = self.directory.user_traits(user).await;
        let mut told = [false; 3];
        told[reader as usize] = true;
        match &read {
            Ok(t) => self.remember(user, Ok(t.clone()), told),
            Err(TeleportError::AccessDenied(e)) => self.remember(user, Err(e.clone()), told),
            Err(_) => {}
        }
        (read, true)
    }

    fn remembered(
        &self,
        user: &str,
        reader: Reader,
    ) -> Option<(Result<Traits, TeleportError>, bool)> {
        let mut cache = self.traits.lock().unwrap_or_else(|e| e.into_inner());
        let known = cache
            .get_mut(user)
            .filter(|k| k.at.elapsed() < TRAITS_TTL)?;
        let first = !std::mem::replace(&mut known.told[reader as usize], true);
        Some((
            known.read.clone().map_err(TeleportError::AccessDenied),
            first,
        ))
    }

    fn remember(&self, user: &str, read: Read, told: [bool; 3]) {
        let mut cache = self.traits.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= TRAITS_CACHE_MAX {
            cache.clear();
        }
        let at = Instant::now();
        cache.insert(user.to_owned(), Remembered { at, read, told });
    }
}

impl Monitoring {
    /// The requester's traits; none when they cannot be read, for whatever reason: the rules
    /// are then evaluated without them, as v18.0's original does (its `getUserTraits` WARNs and
    /// returns no traits on any error; only later 18.x releases skip the rules on errors other
    /// than a refusal). The flag is false when the failure may pass (Auth unavailable, a
    /// deadline): a routing made without them is not final.
    async fn traits_of(&self, request_id: &str, user: &str) -> (Traits, bool) {
        let (traits, fresh) = self.users.traits(user, Reader::Rules).await;
        match traits {
            Ok(t) => (t, true),
            Err(TeleportError::AccessDenied(e)) => {
                if fresh {
                    tracing::warn!(request_id, error = %e, "Missing permissions to read user.traits (the plugin's role needs `read` on `user`); rules are evaluated without traits");
                }
                (Traits::default(), true)
            }
            Err(e) => {
                tracing::warn!(request_id, error = %e, "Cannot read the requester's traits; rules are evaluated without traits");
                let for_good = matches!(
                    e,
                    TeleportError::NotFound(_)
                        | TeleportError::BadParameter(_)
                        | TeleportError::Unimplemented(_)
                );
                (Traits::default(), for_good)
            }
        }
    }
}

impl Engine {
    /// The requester's address, when `delivery.notify_requester` is on: the user name when it
    /// is an address (SSO users), else their `email` trait; `Some("")` when they have none we
    /// can mail; `None` when it cannot be told now (the users cannot be read).
    pub(super) async fn requester_address(&self, req: &AccessRequest) -> Option<String> {
        if usable(&req.user) {
            return Some(req.user.clone());
        }
        let (traits, fresh) = self
            .users
            .as_ref()?
            .traits(&req.user, Reader::Requester)
            .await;
        let traits = match traits {
            Ok(t) => t,
            Err(TeleportError::AccessDenied(e)) => {
                if fresh {
                    tracing::warn!(request_id = %req.id, error = %e, "Cannot mail the requester: their name is not an email address and the plugin's role may not read users (it needs `read` on `user`) for their `email` trait");
                }
                return Some(String::new());
            }
            // A user who does not exist has no address.
            Err(TeleportError::NotFound(_)) => return Some(String::new()),
            Err(e) => {
                tracing::warn!(request_id = %req.id, error = %e, "Cannot read the requester's `email` trait; the requester is not mailed about this request");
                return None;
            }
        };
        let found = email_trait(&traits);
        if found.is_none() {
            tracing::debug!(request_id = %req.id, user = %req.user.escape_debug(), "The requester has no email address (neither their name nor an `email` trait); not mailed");
        }
        Some(found.unwrap_or_default())
    }

    /// The requester's address when it can be told without a word in the log (for leaving the
    /// requester out of reminders, whether or not they are mailed themselves).
    pub(super) async fn requester_address_quietly(&self, req: &AccessRequest) -> Option<String> {
        if usable(&req.user) {
            return Some(req.user.clone());
        }
        let (traits, _) = self.users.as_ref()?.traits(&req.user, Reader::Quiet).await;
        email_trait(&traits.ok()?)
    }

    /// The addresses to mail about `req`: the matching rules' recipients, else
    /// `role_to_recipients` and the suggested reviewers.
    #[cfg(test)]
    pub(super) async fn recipients(&self, req: &AccessRequest) -> Vec<String> {
        self.routing_of(req).await.0
    }

    /// [`Engine::recipients`], and whether that routing is final: false when the rules were
    /// evaluated without the requester's traits for a reason that may pass.
    pub(super) async fn routing_of(&self, req: &AccessRequest) -> (Vec<String>, bool) {
        let (to, settled) = self.rule_recipients(req).await;
        let to = to.unwrap_or_else(|| recipients_for(&self.routing().recipients, req));
        (to, settled)
    }

    /// The matching rules' recipients that can be mailed (perhaps none: a matching rule replaces
    /// the usual routing even then, as with the original); `None` when no rule matches. The
    /// requester is read for every request while rules apply, as the original does.
    async fn rule_recipients(&self, req: &AccessRequest) -> (Option<Vec<String>>, bool) {
        let Some(m) = self.monitoring.as_ref().filter(|m| !m.rules.is_empty()) else {
            return (None, true);
        };
        let (user_traits, read) = m.traits_of(&req.id, &req.user).await;
        // A routing no condition of which reads traits is final whatever the read said.
        let settled = read || !m.rules.needs_user_traits();
        let env = Env {
            roles: req.roles.clone(),
            suggested_reviewers: req.suggested_reviewers.clone(),
            system_annotations: req.system_annotations.clone(),
            user: req.user.clone(),
            request_reason: req.reason.clone(),
            creation_time: req.created.unwrap_or(SystemTime::UNIX_EPOCH),
            expiry: req.request_expires.unwrap_or(SystemTime::UNIX_EPOCH),
            user_traits,
        };
        let to = m.rules.recipients(&req.id, &env);
        let to = to.map(|to| to.into_iter().filter(|r| mailable(&req.id, r)).collect());
        (to, settled)
    }
}

/// Whether a rule's recipient can be mailed and recorded; a WARN names the one that cannot.
fn mailable(request_id: &str, recipient: &str) -> bool {
    let ok = usable(recipient);
    if !ok {
        tracing::warn!(request_id, recipient = %recipient.escape_debug(), "Skipping an access monitoring rule recipient that is not an email address");
    }
    ok
}
