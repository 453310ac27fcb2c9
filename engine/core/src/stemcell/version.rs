//! Stemcell versions as text with an order: `621.74`, `12.8`, `12.8.20261126`.
//!
//! A version is kept exactly as written (it is a name as much as a number: `12.10` is not
//! `12.1`) and ordered component by component, components separated by `.`: numbers compare
//! as numbers (`1.10` > `1.9`), a number sorts before a word, words compare as text, and a
//! version that is a prefix of another sorts first (`12.8` < `12.8.20261126`). Versions that
//! differ only in leading zeros (`1.01`, `1.1`) are ordered by their text, so the order is
//! total and agrees with equality of the text. This is what resolving `version: latest`
//! needs.

use std::cmp::Ordering;
use std::fmt;

/// A stemcell version.
#[derive(Clone, Debug)]
pub struct StemcellVersion {
    text: String,
}

/// One dot-separated part of a version, borrowed from its text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Component<'a> {
    /// Digits without leading zeros (`"0"` for zero), so that numbers of any length compare
    /// by length, then by digits, without overflowing an integer.
    Number(&'a str),
    Word(&'a str),
}

impl Ord for Component<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Component::Number(a), Component::Number(b)) => {
                a.len().cmp(&b.len()).then_with(|| a.cmp(b))
            }
            (Component::Number(_), Component::Word(_)) => Ordering::Less,
            (Component::Word(_), Component::Number(_)) => Ordering::Greater,
            (Component::Word(a), Component::Word(b)) => a.cmp(b),
        }
    }
}

impl PartialOrd for Component<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn component(part: &str) -> Component<'_> {
    if part.bytes().all(|b| b.is_ascii_digit()) {
        let trimmed = part.trim_start_matches('0');
        Component::Number(if trimmed.is_empty() { "0" } else { trimmed })
    } else {
        Component::Word(part)
    }
}

impl StemcellVersion {
    /// Parses a version: dot-separated, non-empty components of ASCII letters, digits, `-`,
    /// `_` and `+`. `None` when `text` is not one.
    pub fn parse(text: &str) -> Option<StemcellVersion> {
        let valid = !text.is_empty()
            && text.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'+'))
            });
        valid.then(|| StemcellVersion {
            text: text.to_string(),
        })
    }

    /// The version as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn components(&self) -> impl Iterator<Item = Component<'_>> {
        self.text.split('.').map(component)
    }
}

impl Ord for StemcellVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        self.components()
            .cmp(other.components())
            .then_with(|| self.text.cmp(&other.text))
    }
}

impl PartialOrd for StemcellVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for StemcellVersion {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for StemcellVersion {}

impl fmt::Display for StemcellVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The highest of `versions` (what `version: latest` resolves to); texts that are not
/// versions are left out. `None` when no version is left.
pub fn latest<'a>(versions: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    versions
        .into_iter()
        .filter_map(|text| StemcellVersion::parse(text).map(|version| (version, text)))
        .max_by(|(a, _), (b, _)| a.cmp(b))
        .map(|(_, text)| text)
}

/// The version a manifest's `version` asks for among the uploaded `versions`: `latest` is
/// the highest, `621.latest` the highest whose leading components are `621` (BOSH's
/// syntax), anything else itself when it is uploaded. `None` when nothing matches.
pub fn resolve<'a>(
    requested: &str,
    versions: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    if requested == "latest" {
        return latest(versions);
    }
    match requested.strip_suffix(".latest") {
        Some(prefix) => {
            let prefix: Vec<Component<'_>> = prefix.split('.').map(component).collect();
            latest(versions.into_iter().filter(|text| {
                let components: Vec<Component<'_>> = text.split('.').map(component).collect();
                components.len() > prefix.len() && components.starts_with(&prefix)
            }))
        }
        None => versions.into_iter().find(|text| *text == requested),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> StemcellVersion {
        StemcellVersion::parse(text).unwrap_or_else(|| panic!("{text} is a version"))
    }

    #[test]
    fn numeric_components_compare_as_numbers() {
        assert!(v("1.10") > v("1.9"));
        assert!(v("12.8.20261126") > v("12.8"));
        assert!(v("12.9.20260101") > v("12.8.20261126"));
        assert!(v("12.8.20261127") > v("12.8.20261126"));
        assert!(v("621.74") > v("621.9"));
        assert!(v("3586.100") > v("3586.99"));
        assert!(v("99999999999999999999999.1") > v("9999999999999999999999.1"));
        assert!(v("1.0") > v("1"));
    }

    #[test]
    fn words_sort_after_numbers_and_ties_break_by_text() {
        assert!(v("1.rc") > v("1.2"));
        assert!(v("1.beta") > v("1.alpha"));
        assert!(v("1.01") < v("1.1"));
        assert_ne!(v("1.01"), v("1.1"));
        assert_eq!(v("12.8").cmp(&v("12.8")), Ordering::Equal);
    }

    #[test]
    fn only_version_text_parses() {
        for bad in ["", ".", "1.", ".1", "1..2", "1 2", "1/2", "12.8\n"] {
            assert!(StemcellVersion::parse(bad).is_none(), "{bad:?}");
        }
        assert_eq!(v("12.8.20261126").as_str(), "12.8.20261126");
        assert_eq!(v("1.0-rc_1+x").to_string(), "1.0-rc_1+x");
    }

    #[test]
    fn requested_versions_resolve_like_bosh() {
        let uploaded = [
            "12.8.20261126",
            "12.9.20260101",
            "12.10.20260301",
            "13.1.20270101",
        ];
        assert_eq!(resolve("latest", uploaded), Some("13.1.20270101"));
        assert_eq!(resolve("12.latest", uploaded), Some("12.10.20260301"));
        assert_eq!(resolve("12.8.latest", uploaded), Some("12.8.20261126"));
        assert_eq!(resolve("14.latest", uploaded), None);
        assert_eq!(resolve("12.9.20260101", uploaded), Some("12.9.20260101"));
        assert_eq!(resolve("12.9", uploaded), None);
        // `12.latest` does not take a version that is only `12`.
        assert_eq!(resolve("12.latest", ["12"]), None);
    }

    #[test]
    fn latest_is_the_highest_version() {
        assert_eq!(
            latest([
                "12.8",
                "12.10",
                "12.9.20260101",
                "not a version",
                "12.8.20261126"
            ]),
            Some("12.10")
        );
        assert_eq!(latest(["1.9", "1.10"]), Some("1.10"));
        assert_eq!(latest(["x y"]), None);
        assert_eq!(latest([]), None);
    }
}
