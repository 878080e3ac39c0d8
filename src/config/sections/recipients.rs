//! `[role_to_recipients]`, and the deprecated `delivery.recipients` it replaces.

use std::collections::BTreeMap;

use toml::Table;

use super::table;
use crate::address;
use crate::config::RecipientMap;
use crate::config::reader::{Findings, string_list};

type Roles = BTreeMap<String, Vec<String>>;

/// The recipients by role; `None` unless there is a valid `"*"` entry and every address is valid.
pub(super) fn read_recipients(
    f: &mut Findings,
    root: &Table,
    legacy: Option<Vec<String>>,
) -> Option<RecipientMap> {
    let mut map = role_to_recipients(f, root);
    add_legacy(f, &mut map, legacy)?;
    if map.is_empty() {
        f.error(
            "role_to_recipients",
            "missing required value role_to_recipients",
        );
        return None;
    }
    let has_wildcard = map.contains_key(RecipientMap::WILDCARD);
    if !has_wildcard {
        f.error(
            "role_to_recipients",
            "missing required value role_to_recipients[*]: the \"*\" entry lists who gets requests for roles without an entry of their own",
        );
    }
    let addresses_ok = check_addresses(f, &map);
    (addresses_ok && has_wildcard).then(|| RecipientMap::new(map))
}

/// The non-empty lists of `[role_to_recipients]`.
fn role_to_recipients(f: &mut Findings, root: &Table) -> Roles {
    let mut map = BTreeMap::new();
    if root.contains_key("role_to_recipients") {
        for (role, value) in table(f, root, "role_to_recipients") {
            let name = format!("role_to_recipients.{}", quote_key(role));
            if let Some(list) = string_list(f, &name, value).filter(|l| !l.is_empty()) {
                map.insert(role.clone(), list);
            }
        }
    }
    map
}

/// `delivery.recipients` becomes the `"*"` entry; `None` when both forms are given.
fn add_legacy(f: &mut Findings, map: &mut Roles, legacy: Option<Vec<String>>) -> Option<()> {
    match legacy {
        Some(list) if !list.is_empty() => {
            if !map.is_empty() {
                f.error(
                    "delivery.recipients",
                    "provide either delivery.recipients or role_to_recipients, not both",
                );
                return None;
            }
            f.warn("delivery.recipients is deprecated, use role_to_recipients with a \"*\" entry");
            map.insert(RecipientMap::WILDCARD.to_owned(), list);
        }
        Some(_) => f.warn("delivery.recipients is deprecated and empty here; it is ignored"),
        None => {}
    }
    Some(())
}

/// Reports every address that is not a bare one or cannot be stored; true when there is none.
fn check_addresses(f: &mut Findings, map: &Roles) -> bool {
    let mut ok = true;
    for (role, list) in map {
        for addr in list {
            let problem = if !address::is_bare_address(addr) {
                format!(
                    "invalid email address {addr:?} (a bare address such as ops@example.com, without a display name)"
                )
            } else if !address::fits_thread_encoding(addr) {
                format!("email address {addr:?} contains '/', which the plugin data cannot store")
            } else {
                continue;
            };
            f.error(format!("role_to_recipients.{}", quote_key(role)), problem);
            ok = false;
        }
    }
    ok
}

fn quote_key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        k.to_owned()
    } else {
        format!("{k:?}")
    }
}
