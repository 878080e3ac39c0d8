//! Semantic versions as Teleport reports them (`18.0.0`, `6.1.0-beta.1`), for the minimum check.

use std::cmp::Ordering;

/// A parsed `major.minor.patch[-pre]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Version {
    core: (u64, u64, u64),
    pre: Vec<String>,
}

impl Version {
    /// Parses a version; a leading `v` and build metadata (`+…`) are allowed.
    pub(super) fn parse(s: &str) -> Option<Self> {
        let s = s.trim().trim_start_matches('v');
        let s = s.split('+').next()?;
        let (core, pre) = match s.split_once('-') {
            Some((c, p)) => (c, p.split('.').map(str::to_owned).collect()),
            None => (s, Vec::new()),
        };
        let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
        let core = (parts.next()??, parts.next()??, parts.next()??);
        if parts.next().is_some() {
            return None;
        }
        Some(Self { core, pre })
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.core
            .cmp(&other.core)
            .then_with(|| match (self.pre.is_empty(), other.pre.is_empty()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => {
                    for (a, b) in self.pre.iter().zip(&other.pre) {
                        let ord = match (a.parse::<u64>(), b.parse::<u64>()) {
                            (Ok(x), Ok(y)) => x.cmp(&y),
                            (Ok(_), Err(_)) => Ordering::Less,
                            (Err(_), Ok(_)) => Ordering::Greater,
                            (Err(_), Err(_)) => a.cmp(b),
                        };
                        if ord != Ordering::Equal {
                            return ord;
                        }
                    }
                    self.pre.len().cmp(&other.pre.len())
                }
            })
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn ordering() {
        let min = v("6.1.0-beta.1");
        assert!(v("18.0.0") > min);
        assert!(v("6.1.0") > min);
        assert!(v("6.1.0-beta.1") >= min);
        assert!(v("6.1.0-beta.0") < min);
        assert!(v("6.0.9") < min);
        assert!(v("17.0.0-aa") < v("17.0.0"));
        assert_eq!(Version::parse("banana"), None);
    }
}
