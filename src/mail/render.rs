//! The words of every mail: subject, plain-text body (byte for byte the original's) and an HTML
//! twin with every user-supplied string escaped.
//!
//! User-supplied fields are cleaned and bounded first (see [`super::text`]): header text loses its
//! control characters, body fields longer than 4 KiB are cut with a note.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::calendar::civil_from_days;

use super::text::{body_field, header_field, html_escape};

mod lists;

pub use lists::{ListDue, list_reminder};

/// What a mail says about one Access Request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSummary {
    pub id: String,
    /// The cluster name, from Teleport's Ping.
    pub cluster: String,
    /// The requesting user; its line is left out when empty.
    pub user: String,
    /// The requested roles; their line is left out when the list is empty.
    pub roles: Vec<String>,
    /// The request reason; its line is left out when empty.
    pub reason: String,
    /// The Web UI link, when the proxy address is known.
    pub link: Option<String>,
}

/// Where a request stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    Pending,
    /// Approved, with the resolve reason (may be empty).
    Approved(String),
    /// Denied, with the resolve reason (may be empty).
    Denied(String),
    Expired,
    /// Promoted to a long-term Access List (the original plugin ignores this state).
    Promoted {
        reason: String,
        access_list: String,
    },
}

/// One review of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewSummary {
    pub author: String,
    pub state: ReviewState,
    pub reason: String,
    pub created: SystemTime,
}

/// The state a review proposes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReviewState {
    Approved,
    Denied,
    /// Any other state, by its upper-case name (e.g. `PROMOTED`); shown without an emoji.
    Other(String),
}

/// A rendered mail, ready to be addressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedMail {
    pub subject: String,
    pub text: String,
    pub html: String,
}

const NEW_HEADING: &str = "You have a new Role Request";
const RESOLVED_HEADING: &str = "Role Request has been resolved";

/// `<cluster> Role Request <id>`, safe for a header.
pub fn subject(request: &RequestSummary) -> String {
    format!(
        "{} Role Request {}",
        header_field(&request.cluster),
        header_field(&request.id)
    )
}

/// The first mail of a thread: "You have a new Role Request:" and the request's current status.
pub fn new_request(request: &RequestSummary, status: &Resolution) -> RenderedMail {
    RenderedMail {
        subject: subject(request),
        ..request_mail(NEW_HEADING, request, status)
    }
}

/// The last mail of a thread: "Role Request has been resolved:" and the final status.
pub fn resolved(request: &RequestSummary, status: &Resolution) -> RenderedMail {
    RenderedMail {
        subject: subject(request),
        ..request_mail(RESOLVED_HEADING, request, status)
    }
}

/// The requester's first mail: their request was submitted, and who was asked to review it.
pub fn requester_confirmation(request: &RequestSummary, asked: &[String]) -> RenderedMail {
    let mut mail = requester_mail(
        "Your Role Request was submitted",
        request,
        &Resolution::Pending,
    );
    let asked: Vec<String> = asked.iter().map(|a| body_field(a)).collect();
    let asked = match asked.is_empty() {
        true => "nobody (no recipient is configured for these roles)".to_owned(),
        false => asked.join(", "),
    };
    mail.text.push_str(&format!("\nReviewers asked: {asked}"));
    let line = format!("<p>Reviewers asked: {}</p>\n</body>", html_escape(&asked));
    mail.html = mail.html.replacen("</body>", &line, 1);
    mail.subject = format!(
        "Your Role Request {} was submitted ({})",
        header_field(&request.id),
        header_field(&request.cluster)
    );
    mail
}

/// The requester's last mail: how their request ended, in their thread.
pub fn requester_outcome(request: &RequestSummary, status: &Resolution) -> RenderedMail {
    let mut mail = requester_mail("Your Role Request has been resolved", request, status);
    let word = match status {
        Resolution::Pending => "is pending",
        Resolution::Approved(_) => "was approved",
        Resolution::Denied(_) => "was denied",
        Resolution::Expired => "expired",
        Resolution::Promoted { .. } => "was promoted to an Access List",
    };
    mail.subject = format!(
        "Your Role Request {} {word} ({})",
        header_field(&request.id),
        header_field(&request.cluster)
    );
    mail
}

/// A reminder in a reviewer's thread: the request is still waiting (round `round` of `limit`).
pub fn reminder(request: &RequestSummary, round: u32, limit: u32) -> RenderedMail {
    let heading =
        format!("Reminder {round} of {limit}: this Role Request is still waiting for a review");
    // The thread's own subject: mail clients that group by subject (Gmail) keep the reminder in
    // the conversation; the first line says what it is.
    RenderedMail {
        subject: subject(request),
        ..request_mail(&heading, request, &Resolution::Pending)
    }
}

/// A reply for one review: who reviewed, when, what they proposed and why.
pub fn review(request: &RequestSummary, review: &ReviewSummary) -> RenderedMail {
    let author = body_field(&review.author);
    let reason = body_field(&review.reason);
    let when = rfc822_utc(review.created);
    let (emoji, word) = match &review.state {
        ReviewState::Approved => ("✅", "APPROVED".to_owned()),
        ReviewState::Denied => ("❌", "DENIED".to_owned()),
        ReviewState::Other(name) => ("", body_field(name)),
    };
    let mut text =
        format!("{author} reviewed the request at {when}.\nResolution: {emoji} {word}.\n");
    let mut html = format!(
        "<p>{} reviewed the request at {when}.</p>\n<p>Resolution: {emoji} {}.</p>\n",
        html_escape(&author),
        html_escape(&word)
    );
    if !reason.is_empty() {
        text.push_str(&format!("Reason: {reason}."));
        html.push_str(&format!(
            "<p style=\"white-space: pre-wrap\">Reason: {}.</p>\n",
            html_escape(&reason)
        ));
    }
    RenderedMail {
        subject: subject(request),
        text,
        html: html_document(&html),
    }
}

/// One `Name: value` line of a request mail; `code` renders the value in monospace.
struct Field {
    name: &'static str,
    value: String,
    code: bool,
    link: bool,
}

fn request_mail(heading: &str, request: &RequestSummary, status: &Resolution) -> RenderedMail {
    request_mail_with(heading, request_fields(request, status), status)
}

/// A request mail for the requester: no review commands (they cannot review their own request).
fn requester_mail(heading: &str, request: &RequestSummary, status: &Resolution) -> RenderedMail {
    let mut fields = request_fields(request, status);
    fields.retain(|f| !f.code);
    request_mail_with(heading, fields, status)
}

fn request_mail_with(heading: &str, fields: Vec<Field>, status: &Resolution) -> RenderedMail {
    let request_subject = String::new();
    let status_line = status_line(status);

    // Writing to a String cannot fail.
    let mut text = String::with_capacity(512);
    let _ = write!(text, "{heading}:\n\n");
    for f in &fields {
        let _ = writeln!(text, "{}: {}", f.name, f.value);
    }
    let _ = write!(text, "\nStatus: {status_line}");

    let mut html = String::with_capacity(1024);
    let _ = write!(html, "<p>{heading}:</p>\n<table>\n");
    for f in &fields {
        let _ = writeln!(
            html,
            "<tr><td style=\"vertical-align: top; padding-right: 1em\">{}:</td><td style=\"white-space: pre-wrap\">{}</td></tr>",
            f.name,
            html_value(f)
        );
    }
    let _ = writeln!(
        html,
        "</table>\n<p>Status: {}</p>",
        html_escape(&status_line)
    );

    RenderedMail {
        subject: request_subject,
        text,
        html: html_document(&html),
    }
}

fn request_fields(request: &RequestSummary, status: &Resolution) -> Vec<Field> {
    let field = |name, value: &str| Field {
        name,
        value: body_field(value),
        code: false,
        link: false,
    };
    let id = body_field(&request.id);
    let mut fields = vec![field("ID", &request.id), field("Cluster", &request.cluster)];
    if !request.user.is_empty() {
        fields.push(field("User", &request.user));
    }
    if !request.roles.is_empty() {
        fields.push(field("Role(s)", &request.roles.join(",")));
    }
    if !request.reason.is_empty() {
        fields.push(field("Reason", &request.reason));
    }
    match &request.link {
        Some(link) => fields.push(Field {
            link: true,
            ..field("Link", link)
        }),
        None if *status == Resolution::Pending => {
            for (name, verb) in [("Approve", "approve"), ("Deny", "deny")] {
                fields.push(Field {
                    name,
                    value: format!("tsh request review --{verb} {id}"),
                    code: true,
                    link: false,
                });
            }
        }
        None => {}
    }
    fields
}

fn html_value(f: &Field) -> String {
    let escaped = html_escape(&f.value);
    let is_web = f.value.starts_with("https://") || f.value.starts_with("http://");
    if f.link && is_web {
        format!("<a href=\"{escaped}\">{escaped}</a>")
    } else if f.code {
        format!("<code>{escaped}</code>")
    } else {
        escaped
    }
}

/// `⏳ PENDING`, `✅ APPROVED (reason)`, …: the part after `Status: `.
fn status_line(status: &Resolution) -> String {
    let with_reason = |head: String, reason: &str| {
        let reason = body_field(reason);
        if reason.is_empty() {
            head
        } else {
            format!("{head} ({reason})")
        }
    };
    match status {
        Resolution::Pending => "⏳ PENDING".to_owned(),
        Resolution::Approved(reason) => with_reason("✅ APPROVED".to_owned(), reason),
        Resolution::Denied(reason) => with_reason("❌ DENIED".to_owned(), reason),
        Resolution::Expired => "⌛ EXPIRED".to_owned(),
        Resolution::Promoted {
            reason,
            access_list,
        } => with_reason(
            format!("✅ PROMOTED to Access List \"{}\"", body_field(access_list)),
            reason,
        ),
    }
}

fn html_document(body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html>\n<head><meta charset=\"utf-8\"></head>\n<body style=\"font-family: sans-serif\">\n{body}</body>\n</html>\n"
    )
}

/// `t` in Go's RFC822 layout `02 Jan 06 15:04 MST`, in UTC.
pub fn rfc822_utc(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let of_day = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let month_name = MONTHS[(month as usize).saturating_sub(1) % 12];
    format!(
        "{day:02} {month_name} {:02} {:02}:{:02} UTC",
        year.rem_euclid(100),
        of_day / 3600,
        of_day % 3600 / 60
    )
}

#[cfg(test)]
mod tests;
