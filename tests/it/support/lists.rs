//! Access List reminders driven directly (not through the daemon), for tests that run replicas'
//! checks side by side or control the mailer.

use std::sync::Arc;
use std::time::Duration;

use teleport_email::lists::{ListReminders, MailerSource, Settings};
use teleport_email::mail::Mailer;
use teleport_email::metrics::Metrics;
use teleport_email::testkit::auth::FakeAuth;

use super::plugin_client;

/// A replica of the reminders: a client of its own on `auth`, mailing through `mailer`, retrying
/// a mail for `retry_for`.
pub async fn reminders(
    auth: &FakeAuth,
    mailer: Arc<dyn Mailer>,
    retry_for: Duration,
) -> ListReminders {
    // The identity file is read once, at load: its directory may go.
    let (client, _dir) = plugin_client(auth).await;
    let source: MailerSource = Arc::new(move || mailer.clone());
    let settings = Settings {
        plugin: "email",
        cluster: "teleport.example.com".into(),
        web_base: None,
        id_host: "example.com".into(),
        retry_for,
        every: Duration::from_secs(3 * 3600),
        first_within: Duration::ZERO,
    };
    ListReminders::new(client, source, Arc::new(Metrics::default()), settings)
}
