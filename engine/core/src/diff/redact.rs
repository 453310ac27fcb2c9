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
        Value::Str(s) => Value::Str(secrets::redact_urls(s)),
        other => other.clone(),
    };
    Node {
        value,
        span: node.span.clone(),
        from_variable: node.from_variable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
