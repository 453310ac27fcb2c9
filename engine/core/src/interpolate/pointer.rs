//! go-patch pointers: `/instance_groups/name=web/jobs/-`, `/a?/b`, `/items/0:before`.
//!
//! Syntax (as go-patch): tokens separated by `/`; `~0` `~1` `~2` `~3` `~7` escape `~` `/`
//! `?` `=` `:`; an integer is an array index (negative counts from the end); `-` as the last
//! token is the position after the last item; `key=value` finds the one array item (a map)
//! whose `key` is the string `value`; a trailing `?` makes that token and every token after
//! it optional (created by replace, ignored by remove); `:prev` `:next` move an index or
//! match, `:before` `:after` make a replace insert instead of overwrite.

use std::fmt;

/// A parsed pointer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pointer {
    tokens: Vec<Token>,
}

/// One step of a pointer after the root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Token {
    /// An array index, possibly negative, with modifiers.
    Index {
        index: i64,
        modifiers: Vec<Modifier>,
    },
    /// `-`: the position after the last item.
    AfterLast,
    /// `key=value`: the one array item whose `key` is `value`.
    Matching {
        key: String,
        value: String,
        optional: bool,
        modifiers: Vec<Modifier>,
    },
    /// A map key.
    Key { key: String, optional: bool },
}

/// `:prev`, `:next`, `:before`, `:after`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Modifier {
    /// The item before the one found.
    Prev,
    /// The item after the one found.
    Next,
    /// Insert before the item found.
    Before,
    /// Insert after the item found.
    After,
}

impl Pointer {
    /// Parses go-patch pointer syntax.
    pub fn parse(text: &str) -> Result<Pointer, String> {
        let mut tokens = Vec::new();
        if text.is_empty() {
            return Ok(Pointer { tokens });
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err("expected the path to start with '/'".to_string());
        };
        let pieces: Vec<&str> = rest.split('/').collect();
        let mut optional = false;
        for (i, piece) in pieces.iter().enumerate() {
            let is_last = i + 1 == pieces.len();
            let mut parts = piece.split(':');
            let mut token = parts.next().unwrap_or_default();
            let mut modifiers = Vec::new();
            for modifier in parts {
                modifiers.push(match modifier {
                    "prev" => Modifier::Prev,
                    "next" => Modifier::Next,
                    "before" => Modifier::Before,
                    "after" => Modifier::After,
                    other => {
                        return Err(format!(
                            "expected one of the modifiers 'prev', 'next', 'before' or 'after' but found '{other}'"
                        ));
                    }
                });
            }
            if is_last && token == "-" {
                if !modifiers.is_empty() {
                    return Err(
                        "expected no modifiers on the after-last-index token '-'".to_string()
                    );
                }
                tokens.push(Token::AfterLast);
                continue;
            }
            if let Some(index) = parse_go_atoi(token) {
                tokens.push(Token::Index { index, modifiers });
                continue;
            }
            if let Some(stripped) = token.strip_suffix('?') {
                optional = true;
                token = stripped;
            }
            if let Some((key, value)) = token.split_once('=') {
                tokens.push(Token::Matching {
                    key: unescape(key),
                    value: unescape(value),
                    optional,
                    modifiers,
                });
                continue;
            }
            if !modifiers.is_empty() {
                return Err(format!("expected no modifiers on the key token '{token}'"));
            }
            tokens.push(Token::Key {
                key: unescape(token),
                optional,
            });
        }
        Ok(Pointer { tokens })
    }

    /// A pointer made of map keys, as `((var.a.b))` uses.
    pub fn from_keys<'a>(keys: impl IntoIterator<Item = &'a str>) -> Pointer {
        Pointer {
            tokens: keys
                .into_iter()
                .map(|key| Token::Key {
                    key: key.to_string(),
                    optional: false,
                })
                .collect(),
        }
    }

    /// The tokens after the root.
    pub fn tokens(&self) -> &[Token] {
        &self.tokens
    }

    /// Whether this is the root (`` or `/`... only ``).
    pub fn is_root(&self) -> bool {
        self.tokens.is_empty()
    }

    /// This pointer with token `index` (and so every token after it) made optional, for
    /// hints such as "write /a/b?/c to create it".
    pub fn with_optional_at(&self, index: usize) -> Pointer {
        let mut tokens = self.tokens.clone();
        for token in tokens.iter_mut().skip(index) {
            match token {
                Token::Key { optional, .. } | Token::Matching { optional, .. } => *optional = true,
                Token::Index { .. } | Token::AfterLast => {}
            }
        }
        Pointer { tokens }
    }

    /// The pointer made of the first `n` tokens, for error messages.
    pub fn prefix(&self, n: usize) -> Pointer {
        Pointer {
            tokens: self.tokens[..n.min(self.tokens.len())].to_vec(),
        }
    }
}

/// Go's `strconv.Atoi`: optional sign and decimal digits only.
fn parse_go_atoi(token: &str) -> Option<i64> {
    let digits = token.strip_prefix(['+', '-']).unwrap_or(token);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    token.parse().ok()
}

fn unescape(text: &str) -> String {
    if !text.contains('~') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '~' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('0') => out.push('~'),
            Some('1') => out.push('/'),
            Some('2') => out.push('?'),
            Some('3') => out.push('='),
            Some('7') => out.push(':'),
            Some(other) => {
                out.push('~');
                out.push(other);
            }
            None => out.push('~'),
        }
    }
    out
}

fn escape(text: &str) -> String {
    text.replace('~', "~0")
        .replace('/', "~1")
        .replace('?', "~2")
        .replace('=', "~3")
        .replace(':', "~7")
}

fn write_modifiers(f: &mut fmt::Formatter<'_>, modifiers: &[Modifier]) -> fmt::Result {
    for modifier in modifiers {
        let name = match modifier {
            Modifier::Prev => "prev",
            Modifier::Next => "next",
            Modifier::Before => "before",
            Modifier::After => "after",
        };
        write!(f, ":{name}")?;
    }
    Ok(())
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut optional_shown = false;
        for token in &self.tokens {
            write!(f, "/")?;
            match token {
                Token::Index { index, modifiers } => {
                    write!(f, "{index}")?;
                    write_modifiers(f, modifiers)?;
                }
                Token::AfterLast => write!(f, "-")?,
                Token::Matching {
                    key,
                    value,
                    optional,
                    modifiers,
                } => {
                    write!(f, "{}={}", escape(key), escape(value))?;
                    if *optional && !optional_shown {
                        write!(f, "?")?;
                        optional_shown = true;
                    }
                    write_modifiers(f, modifiers)?;
                }
                Token::Key { key, optional } => {
                    write!(f, "{}", escape(key))?;
                    if *optional && !optional_shown {
                        write!(f, "?")?;
                        optional_shown = true;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_go_patch_syntax() {
        for text in [
            "/instance_groups/name=bosh/jobs/-",
            "/a?/b/c",
            "/items/name=x?/value",
            "/items/0:before",
            "/items/name=x:next:after",
            "/-1",
            "/key~1with~1slashes",
        ] {
            assert_eq!(Pointer::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(Pointer::parse("").unwrap().tokens().len(), 0);
    }

    #[test]
    fn optional_carries_to_the_right() {
        let pointer = Pointer::parse("/a?/b/name=c").unwrap();
        assert!(matches!(
            &pointer.tokens()[1],
            Token::Key { optional: true, .. }
        ));
        assert!(matches!(
            &pointer.tokens()[2],
            Token::Matching { optional: true, .. }
        ));
    }

    #[test]
    fn rejects_bad_syntax() {
        assert!(Pointer::parse("a/b").is_err());
        assert!(Pointer::parse("/a:sideways").is_err());
        assert!(Pointer::parse("/key:before").is_err());
    }
}
