//! Sending one address's reminders: claimed in each list's record just before the mail, the
//! mail retried for as long as the claim allows, and the claims settled afterwards.

use super::*;

impl ListReminders {
    /// Claims, in `list`'s record, the reminders of `users` (who share one address) if they are
    /// still owed.
    pub(super) async fn claim(
        &self,
        list: &Arc<DueList>,
        users: &[String],
        now: SystemTime,
    ) -> Result<Vec<Claim>, TeleportError> {
        let lease = self.lease();
        let horizon = now + lease + CLOCK_TOLERANCE;
        let (plugin, name) = (self.settings.plugin, &list.list.name);
        for attempt in 0..CAS_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(random_within(Duration::from_millis(
                    50 * u64::from(attempt),
                )))
                .await;
            }
            let data = self.client.list_plugin_data(name, plugin).await?;
            let (mut record, _) = Record::read(name, data.as_ref());
            // As the Slack plugin: only the current owners are kept.
            record.notified.retain(|u, _| list.owners.contains(u));
            record.sending.retain(|u, _| list.owners.contains(u));
            let mut claims = Vec::new();
            for user in users {
                let Some(lapsed) = owes(&record, &list.due, user, now, horizon) else {
                    continue;
                };
                let previous = match lapsed {
                    true => None,
                    false => record.notified.get(user).cloned(),
                };
                record.claim(user, now, now + lease);
                claims.push(Claim {
                    list: list.clone(),
                    user: user.clone(),
                    reminded_at: record.notified[user].clone(),
                    held_until: record.sending[user].clone(),
                    previous,
                });
            }
            if claims.is_empty() {
                return Ok(claims);
            }
            let (set, expect) = record.swap();
            match (self.client)
                .update_list_plugin_data(name, plugin, &set, &expect)
                .await
            {
                Ok(()) => return Ok(claims),
                Err(TeleportError::CompareFailed(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(TeleportError::CompareFailed(format!(
            "the plugin data kept changing ({CAS_ATTEMPTS} attempts)"
        )))
    }

    /// Sends `address` one mail about the lists in `claims`, then settles every claim: kept when
    /// sent, undone when not. Returns whether it was sent.
    pub(super) async fn send(
        &self,
        address: &str,
        claims: Vec<Claim>,
        stop: &CancellationToken,
    ) -> Result<(), MailError> {
        // Each list once (two owners may share an address).
        let mut lists: BTreeMap<&str, &DueList> = BTreeMap::new();
        for c in &claims {
            lists.insert(&c.list.list.name, &c.list);
        }
        let items: Vec<ListDue> = lists.values().map(|l| l.item.clone()).collect();
        let mail = list_reminder(&self.settings.cluster, &items);
        let key: Vec<String> = lists
            .values()
            .map(|l| format!("{}\n{}", l.list.name, rfc3339(l.due.period)))
            .collect();
        let key = format!("access-list-review\n{address}\n{}", key.join("\n"));
        let id = MessageId::derived(&key, &self.settings.id_host);
        let mail = OutgoingMail::new(address, mail, id, None);
        let names: Vec<&str> = lists.keys().copied().collect();
        let result = self.deliver(&mail, stop).await;
        let backend = (self.mailer)().backend();
        self.metrics
            .mail(backend, "access_list_reminder", result.is_ok());
        match &result {
            Ok(()) => {
                tracing::info!(to = %address, access_lists = ?names, "Sent an Access List review reminder")
            }
            Err(e) if stop.is_cancelled() => {
                tracing::warn!(to = %address, access_lists = ?names, error = %e, "Stopping before an Access List review reminder was sent; it is owed again after the restart")
            }
            Err(e) => {
                tracing::error!(to = %address, access_lists = ?names, error = %e, "An Access List review reminder could not be sent; it is tried again at the next check")
            }
        }
        let sent = result.is_ok();
        let mut by_list: BTreeMap<String, Vec<Claim>> = BTreeMap::new();
        for c in claims {
            by_list.entry(c.list.list.name.clone()).or_default().push(c);
        }
        for (list, claims) in by_list {
            let settle = Settle {
                client: self.client.clone(),
                plugin: self.settings.plugin,
                list,
                claims,
                sent,
            };
            settle.run(stop).await;
        }
        result
    }

    /// Sends `mail`, retrying failures that may pass for `retry_for` (at most until
    /// [`LEASE_MARGIN`] before the claim runs out), until `stop`.
    async fn deliver(
        &self,
        mail: &OutgoingMail,
        stop: &CancellationToken,
    ) -> Result<(), MailError> {
        let mut retry = Retry::new(
            Duration::from_secs(1),
            Duration::from_secs(30),
            self.settings.retry_for.min(LEASE - LEASE_MARGIN),
        );
        loop {
            let e = match (self.mailer)().send(mail).await {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            let wait = match e.is_transient() {
                true => retry.next_wait(e.retry_after(), Duration::from_secs(60)),
                false => None,
            };
            let Some(wait) = wait else {
                return Err(e);
            };
            tracing::warn!(to = %mail.to, error = %e, retry_in = ?wait, "Access List review reminder not sent yet; retrying");
            tokio::select! {
                _ = stop.cancelled() => return Err(e),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// Settling one list's claims after a mail: each claim is dropped, and when the mail was not
/// `sent`, each owner's previous reminder time is put back so the next check owes it again.
struct Settle {
    client: TeleportClient,
    plugin: &'static str,
    list: String,
    claims: Vec<Claim>,
    sent: bool,
}

/// How long a settle is tried before the check moves on (it goes on in the background).
const SETTLE_INLINE: Duration = Duration::from_secs(10);

/// How long before a claim runs out its settle stops trying.
const SETTLE_MARGIN: Duration = Duration::from_secs(30);

impl Settle {
    /// Settles now; if Teleport refuses for longer than [`SETTLE_INLINE`], goes on trying in the
    /// background until just before the claims run out (after that another check would send
    /// the reminder again), or until `stop`.
    async fn run(self, stop: &CancellationToken) {
        let mut retry = Retry::new(
            Duration::from_millis(200),
            Duration::from_secs(2),
            SETTLE_INLINE,
        );
        let Err(e) = self.attempt_with(&mut retry, stop).await else {
            return;
        };
        let runs_out = (self.claims.iter())
            .filter_map(|c| crate::calendar::parse_rfc3339(&c.held_until).ok())
            .min()
            .and_then(|t| t.checked_sub(SETTLE_MARGIN))
            .and_then(|t| t.duration_since(SystemTime::now()).ok());
        let Some(left) = runs_out.filter(|_| !stop.is_cancelled()) else {
            return self.give_up(&e);
        };
        tracing::warn!(access_list = %self.list.escape_debug(), error = %e, "Cannot record the outcome of Access List review reminders yet; trying on in the background");
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut retry = Retry::new(Duration::from_secs(1), Duration::from_secs(2), left);
            if let Err(e) = self.attempt_with(&mut retry, &stop).await {
                self.give_up(&e);
            }
        });
    }

    fn give_up(&self, e: &TeleportError) {
        tracing::error!(access_list = %self.list.escape_debug(), error = %e, sent = self.sent, "Could not record the outcome of Access List review reminders; when their claim runs out they are sent again");
    }

    /// Attempts until one works, `retry` says stop, or `stop` (then one attempt more at most).
    async fn attempt_with(
        &self,
        retry: &mut Retry,
        stop: &CancellationToken,
    ) -> Result<(), TeleportError> {
        loop {
            let e = match self.attempt().await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            let Some(wait) = retry.next_wait(None, Duration::from_secs(2)) else {
                return Err(e);
            };
            if stop.is_cancelled() {
                return Err(e);
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// One read and compare-and-swap.
    async fn attempt(&self) -> Result<(), TeleportError> {
        let (list, plugin) = (&self.list, self.plugin);
        let data = self.client.list_plugin_data(list, plugin).await?;
        let (mut record, _) = Record::read(list, data.as_ref());
        for c in &self.claims {
            if record.sending.get(&c.user) == Some(&c.held_until) {
                record.sending.remove(&c.user);
            }
            if !self.sent && record.notified.get(&c.user) == Some(&c.reminded_at) {
                match &c.previous {
                    Some(p) => record.notified.insert(c.user.clone(), p.clone()),
                    None => record.notified.remove(&c.user),
                };
            }
        }
        if !record.changed() {
            return Ok(());
        }
        let (set, expect) = record.swap();
        (self.client)
            .update_list_plugin_data(list, plugin, &set, &expect)
            .await
    }
}
