//! The redacted copy of a document that every rendering reads.
//!
//! The copy has exactly the shape of the original (same map entries in the same order, same
//! array lengths, same keys); only scalar leaves differ. Redacted leaves become
//! [`SENTINEL`], which the renderers turn into `"<redacted>"` (quoted, as BOSH prints it).

use crate::yaml::{Map, Node, Value};

/// Stands for a redacted leaf in the shown tree. Private-use characters, so no real value
/// is mistaken for it, and plain YAML, so the emitter prints it verbatim.
pub(super) const SENTINEL: &str = "\u{E000}redacted\u{E000}";

/// What redacted leaves read as, in YAML text.
pub(super) const REDACTED_YAML: &str = "\"<redacted>\"";

/// What redacted leaves read as, in JSON.
pub(super) const REDACTED: &str = "<redacted>";

/// The tree as the diff shows it: redacted when `redact`, else an unchanged copy.
pub(super) fn shown(node: &Node, redact: bool) -> Node {
    if redact {
        redacted(node, false, None)
    } else {
        node.clone()
    }
}

/// `secret`: the node is under `properties` or `env.bosh`. `key`: the map key the node is
/// the value of, if it is one.
fn redacted(node: &Node, secret: bool, key: Option<&str>) -> Node {
    let value = match &node.value {
        Value::Map(map) => {
            let mut out = Map::new();
            for (k, v) in map.iter() {
                let name = k.as_str();
                let secret = secret
                    || name == Some("properties")
                    || (key == Some("env") && name == Some("bosh"));
                out.push(k.clone(), redacted(v, secret, name));
            }
            Value::Map(out)
        }
        Value::Seq(items) => Value::Seq(items.iter().map(|i| redacted(i, secret, None)).collect()),
        _ if secret || node.from_variable => Value::Str(SENTINEL.to_string()),
        Value::Str(s) => match redact_userinfo(s) {
            Some(r) => Value::Str(r),
            None => Value::Str(s.clone()),
        },
        other => other.clone(),
    };
    Node {
        value,
        span: node.span.clone(),
        from_variable: node.from_variable,
    }
}

/// `text` with the user info of every URL in it (`scheme://user:pass@`) replaced by
/// `<redacted>:<redacted>` (or `<redacted>` when there is no password); `None` when there
/// is none.
///
/// A password with an unescaped `/`, `?` or `#` is not valid in a URL but is written
/// anyway: when the host part (up to the first of those) has a `:` that is not followed by
/// a port number and an `@` follows later, everything up to that `@` is taken as user info.
/// This errs towards hiding too much, never too little.
pub(super) fn redact_userinfo(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut changed = false;
    while let Some(p) = rest.find("://") {
        let start = p + 3;
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let segment_end = after.find(char::is_whitespace).unwrap_or(after.len());
        let segment = &after[..segment_end];
        let authority_end = segment.find(['/', '?', '#']).unwrap_or(segment.len());
        let authority = &segment[..authority_end];
        let userinfo_end = match authority.rfind('@') {
            Some(at) => Some(at),
            None if has_non_port_colon(authority) => segment[authority_end..]
                .find('@')
                .map(|at| authority_end + at),
            None => None,
        };
        match userinfo_end {
            Some(at) if at > 0 => {
                let userinfo = &after[..at];
                out.push_str(if userinfo.contains(':') {
                    "<redacted>:<redacted>"
                } else {
                    "<redacted>"
                });
                rest = &after[at..];
                changed = true;
            }
            _ => rest = after,
        }
    }
    out.push_str(rest);
    changed.then_some(out)
}

/// Whether `authority` has a `:` that does not start a port (`host:8080`).
fn has_non_port_colon(authority: &str) -> bool {
    match authority.split_once(':') {
        Some((_, port)) => !port.chars().all(|c| c.is_ascii_digit()),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_user_info_is_redacted() {
        let r = |s: &str| redact_userinfo(s);
        assert_eq!(
            r("https://admin:s3cret@example.com/path?x=1").as_deref(),
            Some("https://<redacted>:<redacted>@example.com/path?x=1")
        );
        assert_eq!(
            r("git+https://token@github.com/org/repo").as_deref(),
            Some("git+https://<redacted>@github.com/org/repo")
        );
        assert_eq!(
            r("a http://u:p@h1 and postgres://u:p@@ss@db:5432/x").as_deref(),
            Some(
                "a http://<redacted>:<redacted>@h1 and postgres://<redacted>:<redacted>@db:5432/x"
            )
        );
        assert_eq!(
            r("https://user:pa/ss@host/x").as_deref(),
            Some("https://<redacted>:<redacted>@host/x")
        );
        assert_eq!(r("https://host:8443/users/a@b"), None);
        assert_eq!(r("https://example.com/release.tgz"), None);
        assert_eq!(r("no url here: a@b"), None);
    }

    #[test]
    fn sentinel_is_emitted_verbatim() {
        let node = crate::yaml::parse("a: x\n", "t.yml").unwrap();
        let mut node = node;
        *node.as_map_mut().unwrap().get_mut("a").unwrap() =
            Node::string(SENTINEL, node.span.clone());
        let mut out = String::new();
        crate::yaml::emit_to(&node, &mut out, false);
        assert_eq!(out, format!("a: {SENTINEL}\n"));
    }
}
