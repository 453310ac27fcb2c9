//! Generation of variable values by type (work in progress: password only).

use crate::yaml::{Node, Span};

/// Generates a value for a variable of type `kind` with (interpolated) `options`; `ca` is
/// the value of the CA variable a certificate names in `options.ca`.
pub fn generate(
    name: &str,
    kind: &str,
    options: Option<&Node>,
    ca: Option<&Node>,
) -> Result<Node, String> {
    let _ = (options, ca);
    match kind {
        "password" => {
            let mut bytes = [0u8; 64];
            openssl::rand::rand_bytes(&mut bytes).map_err(|e| e.to_string())?;
            let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
            let text: String = bytes
                .iter()
                .filter(|b| (**b as usize) < 252)
                .take(20)
                .map(|b| alphabet[*b as usize % 36] as char)
                .collect();
            Ok(Node::string(
                text,
                Span::synthetic(&format!("generated {name}")),
            ))
        }
        other => Err(format!("cannot generate type '{other}' yet")),
    }
}
