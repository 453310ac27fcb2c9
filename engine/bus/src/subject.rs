//! NATS subjects: what a valid one is, what a subscription matches, and whether a
//! subscription stays inside a permission. Pure; the broker and the permission checks share it.
//!
//! A subject is a dot-separated list of non-empty tokens without whitespace. In a
//! subscription (or a permission) a token `*` matches exactly one token and a last token `>`
//! matches one or more; anywhere else `*` and `>` are ordinary characters, as in nats-server.

/// True for a subject or subscription pattern: non-empty tokens, no whitespace, `>` only last.
pub fn is_valid(subject: &str) -> bool {
    if subject.is_empty() || subject.chars().any(char::is_whitespace) {
        return false;
    }
    let mut tokens = subject.split('.').peekable();
    while let Some(token) = tokens.next() {
        if token.is_empty() || (token == ">" && tokens.peek().is_some()) {
            return false;
        }
    }
    true
}

/// True for a subject one may publish to: valid and without wildcard tokens.
pub fn is_literal(subject: &str) -> bool {
    is_valid(subject) && subject.split('.').all(|token| token != "*" && token != ">")
}

/// True when the literal `subject` is delivered to a subscription on `pattern`.
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for pattern_token in pattern.split('.') {
        if pattern_token == ">" {
            return subject_tokens.next().is_some();
        }
        match subject_tokens.next() {
            Some(token) if pattern_token == "*" || pattern_token == token => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

/// True when every subject that `subscription` matches is also matched by `allowed`: how
/// nats-server decides whether a subscription (which may hold wildcards) is permitted.
pub fn is_subset(subscription: &str, allowed: &str) -> bool {
    let mut allowed_tokens = allowed.split('.');
    for token in subscription.split('.') {
        match allowed_tokens.next() {
            None => return false,
            Some(">") => return true,
            Some("*") if token == ">" => return false,
            Some("*") => {}
            Some(allowed_token) if allowed_token == token => {}
            Some(_) => return false,
        }
    }
    allowed_tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity() {
        for valid in [
            "a",
            "a.b",
            "a.*",
            "a.>",
            ">",
            "*.b",
            "a*.b",
            "director.d1.a1.r1",
        ] {
            assert!(is_valid(valid), "{valid}");
        }
        for invalid in ["", "a..b", ".a", "a.", "a.>.b", "a b", "a\tb"] {
            assert!(!is_valid(invalid), "{invalid:?}");
        }
        assert!(is_literal("a.b*"));
        assert!(!is_literal("a.*"));
        assert!(!is_literal("a.>"));
    }

    #[test]
    fn matching() {
        let cases = [
            ("a.b", "a.b", true),
            ("a.b", "a.c", false),
            ("a.*", "a.b", true),
            ("a.*", "a.b.c", false),
            ("a.*", "a", false),
            ("a.>", "a.b.c", true),
            ("a.>", "a", false),
            (">", "a", true),
            ("*.b.*", "x.b.y", true),
            ("hm.agent.heartbeat.*", "hm.agent.heartbeat.a1", true),
            ("director.d.>", "director.d.a1.r1", true),
            ("director.d.>", "director.e.a1.r1", false),
            ("a.b", "a.b.c", false),
        ];
        for (pattern, subject, expected) in cases {
            assert_eq!(matches(pattern, subject), expected, "{pattern} ~ {subject}");
        }
    }

    #[test]
    fn subsets() {
        let cases = [
            ("agent.a1", "agent.a1", true),
            ("agent.a2", "agent.a1", false),
            ("agent.*", "agent.a1", false),
            ("agent.>", "agent.a1", false),
            (">", "agent.a1", false),
            ("agent.a1", "agent.*", true),
            ("agent.*", "agent.*", true),
            ("agent.>", "agent.*", false),
            ("agent.a1.x", "agent.>", true),
            ("agent.*", "agent.>", true),
            ("agent.>", "agent.>", true),
            ("agent", "agent.>", false),
            ("director.d.a1.r1", "director.*.a1.*", true),
            ("director.d.a2.r1", "director.*.a1.*", false),
            ("anything.at.all", ">", true),
        ];
        for (subscription, allowed, expected) in cases {
            assert_eq!(
                is_subset(subscription, allowed),
                expected,
                "{subscription} within {allowed}"
            );
        }
    }
}
