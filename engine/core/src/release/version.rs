//! Release versions as BOSH orders them (go-semi-semantic): `12`, `1.2`, `0+dev.3`,
//! `2.0-rc.1`. A version is a release segment, an optional pre-release segment after `-` and
//! an optional post-release segment after `+`; segments are dot-separated numbers or words.
//! `1 < 1+dev.1 < 1.1`, `1-rc.1 < 1`, and missing components count as 0 (`1 == 1.0`).

use std::cmp::Ordering;
use std::fmt;

/// A release version.
#[derive(Clone, Debug)]
pub struct Version {
    text: String,
    release: Vec<Component>,
    pre_release: Vec<Component>,
    post_release: Vec<Component>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Component {
    Number(u64),
    Word(String),
}

impl Ord for Component {
    fn cmp(&self, other: &Component) -> Ordering {
        match (self, other) {
            (Component::Number(a), Component::Number(b)) => a.cmp(b),
            (Component::Number(_), Component::Word(_)) => Ordering::Less,
            (Component::Word(_), Component::Number(_)) => Ordering::Greater,
            (Component::Word(a), Component::Word(b)) => a.cmp(b),
        }
    }
}

impl PartialOrd for Component {
    fn partial_cmp(&self, other: &Component) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn segment(text: &str) -> Option<Vec<Component>> {
    text.split('.')
        .map(|part| {
            if part.is_empty() || !part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                None
            } else if part.bytes().all(|b| b.is_ascii_digit()) {
                part.parse().ok().map(Component::Number)
            } else {
                Some(Component::Word(part.to_string()))
            }
        })
        .collect()
}

fn compare_segments(a: &[Component], b: &[Component]) -> Ordering {
    let zero = Component::Number(0);
    for i in 0..a.len().max(b.len()) {
        let ordering = a.get(i).unwrap_or(&zero).cmp(b.get(i).unwrap_or(&zero));
        if ordering != Ordering::Equal {
            return ordering;
        }
    }
    Ordering::Equal
}

fn render(components: &[Component]) -> String {
    components
        .iter()
        .map(|c| match c {
            Component::Number(n) => n.to_string(),
            Component::Word(w) => w.clone(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

impl Version {
    /// Parses a version; `None` when it is not one.
    pub fn parse(text: &str) -> Option<Version> {
        let (rest, post) = match text.split_once('+') {
            Some((rest, post)) => (rest, Some(post)),
            None => (text, None),
        };
        let (release, pre) = match rest.split_once('-') {
            Some((release, pre)) => (release, Some(pre)),
            None => (rest, None),
        };
        Some(Version {
            text: text.to_string(),
            release: segment(release)?,
            pre_release: pre.map(segment).unwrap_or(Some(Vec::new()))?,
            post_release: post.map(segment).unwrap_or(Some(Vec::new()))?,
        })
    }

    /// Whether this is a dev version (`+dev.N`).
    pub fn is_dev(&self) -> bool {
        matches!(self.post_release.first(), Some(Component::Word(w)) if w == "dev")
    }

    /// The next final version: the last number of the release segment plus one
    /// (`1` → `2`, `1.2` → `1.3`); `None` when it ends with a word.
    pub fn next_final(&self) -> Option<Version> {
        let mut release = self.release.clone();
        match release.last_mut()? {
            Component::Number(n) => *n += 1,
            Component::Word(_) => return None,
        }
        Version::parse(&render(&release))
    }

    /// The next dev version after this one: `1` → `1+dev.1`, `1+dev.3` → `1+dev.4`.
    pub fn next_dev(&self) -> Option<Version> {
        let mut text = render(&self.release);
        if !self.pre_release.is_empty() {
            text = format!("{text}-{}", render(&self.pre_release));
        }
        let post = if self.post_release.is_empty() {
            "dev.1".to_string()
        } else {
            let mut post = self.post_release.clone();
            match post.last_mut()? {
                Component::Number(n) => *n += 1,
                Component::Word(_) => post.push(Component::Number(1)),
            }
            render(&post)
        };
        Version::parse(&format!("{text}+{post}"))
    }

    /// The version as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Version) -> Ordering {
        compare_segments(&self.release, &other.release)
            .then_with(
                || match (self.pre_release.is_empty(), other.pre_release.is_empty()) {
                    (true, true) => Ordering::Equal,
                    (true, false) => Ordering::Greater,
                    (false, true) => Ordering::Less,
                    (false, false) => compare_segments(&self.pre_release, &other.pre_release),
                },
            )
            .then_with(
                || match (self.post_release.is_empty(), other.post_release.is_empty()) {
                    (true, true) => Ordering::Equal,
                    (true, false) => Ordering::Less,
                    (false, true) => Ordering::Greater,
                    (false, false) => compare_segments(&self.post_release, &other.post_release),
                },
            )
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Version) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Version) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        Version::parse(text).unwrap()
    }

    #[test]
    fn orders_like_bosh() {
        let mut versions: Vec<Version> = [
            "1.1", "0+dev.10", "1", "0+dev.2", "1+dev.1", "1-rc.1", "10", "2", "0+dev.1",
        ]
        .into_iter()
        .map(v)
        .collect();
        versions.sort();
        let sorted: Vec<&str> = versions.iter().map(Version::as_str).collect();
        assert_eq!(
            sorted,
            [
                "0+dev.1", "0+dev.2", "0+dev.10", "1-rc.1", "1", "1+dev.1", "1.1", "2", "10"
            ]
        );
        assert_eq!(v("1"), v("1.0"));
        assert!(Version::parse("").is_none());
        assert!(Version::parse("1..2").is_none());
        assert!(Version::parse("1 2").is_none());
    }

    #[test]
    fn bumps_dev_and_final_versions() {
        assert_eq!(v("0+dev.0").next_dev().unwrap().as_str(), "0+dev.1");
        assert_eq!(v("0+dev.9").next_dev().unwrap().as_str(), "0+dev.10");
        assert_eq!(v("3").next_dev().unwrap().as_str(), "3+dev.1");
        assert_eq!(v("1.2").next_final().unwrap().as_str(), "1.3");
        assert_eq!(v("7").next_final().unwrap().as_str(), "8");
        assert_eq!(v("1+dev.4").next_final().unwrap().as_str(), "2");
        assert!(v("0+dev.1").is_dev());
        assert!(!v("1").is_dev());
    }
}
