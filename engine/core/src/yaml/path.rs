//! YAML paths as users read them in diagnostics: `instance_groups[1].jobs[0].properties`.

use std::fmt;

/// One step of a [`YamlPath`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PathSegment {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

/// A path from the document root to a value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct YamlPath {
    segments: Vec<PathSegment>,
}

impl YamlPath {
    /// The document root.
    pub fn root() -> YamlPath {
        YamlPath::default()
    }

    /// This path followed by a key.
    pub fn key(&self, key: &str) -> YamlPath {
        let mut segments = self.segments.clone();
        segments.push(PathSegment::Key(key.to_string()));
        YamlPath { segments }
    }

    /// This path followed by an index.
    pub fn index(&self, index: usize) -> YamlPath {
        let mut segments = self.segments.clone();
        segments.push(PathSegment::Index(index));
        YamlPath { segments }
    }

    /// A path from its steps.
    pub fn from_segments(segments: &[PathSegment]) -> YamlPath {
        YamlPath {
            segments: segments.to_vec(),
        }
    }

    /// The steps.
    pub fn segments(&self) -> &[PathSegment] {
        &self.segments
    }

    /// Whether this is the root.
    pub fn is_root(&self) -> bool {
        self.segments.is_empty()
    }
}

fn is_plain_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
}

impl fmt::Display for YamlPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.segments.iter().enumerate() {
            match segment {
                PathSegment::Key(key) if is_plain_key(key) => {
                    if i > 0 {
                        write!(f, ".")?;
                    }
                    write!(f, "{key}")?;
                }
                PathSegment::Key(key) => write!(f, "[{key:?}]")?,
                PathSegment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

impl From<&YamlPath> for String {
    fn from(path: &YamlPath) -> String {
        path.to_string()
    }
}

impl From<YamlPath> for String {
    fn from(path: YamlPath) -> String {
        path.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_like_a_user_reads_it() {
        let path = YamlPath::root()
            .key("instance_groups")
            .index(1)
            .key("instances");
        assert_eq!(path.to_string(), "instance_groups[1].instances");
        let odd = YamlPath::root().key("scim").key("bosh.admin");
        assert_eq!(odd.to_string(), "scim[\"bosh.admin\"]");
    }
}
