//! The one URL redaction.
//!
//! Every `scheme://` in a text is looked at: the password of its user info becomes
//! `<redacted>` (a user info without a password is a token and becomes `<redacted>` whole),
//! and so does the value of every query parameter that carries a secret (`password`,
//! `token`, signatures of signed URLs). Passwords are often written unescaped, with `/`, `?`,
//! `#` or `@` in them: when the host part has an `@`, or a `:` that is not a port,
//! everything up to the last `@` of the URL counts as user info. This errs towards hiding too much, never too
//! little.

/// Query parameters whose values are secrets (compared without case).
const SECRET_PARAMETERS: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "secret",
    "client_secret",
    "token",
    "access_token",
    "sig",
    "signature",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
];

/// `text` with the secrets of every URL in it replaced by `<redacted>`.
pub fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let start = at + 3;
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let url_end = after
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>'))
            .unwrap_or(after.len());
        out.push_str(&redact_one(&after[..url_end]));
        rest = &after[url_end..];
    }
    out.push_str(rest);
    out
}

/// One URL without its `scheme://`.
fn redact_one(url: &str) -> String {
    let authority_end = url.find(['/', '?', '#']).unwrap_or(url.len());
    let authority = &url[..authority_end];
    let userinfo_end = if authority.contains('@') || has_non_port_colon(authority) {
        url.rfind('@')
    } else {
        None
    };
    let mut out = String::with_capacity(url.len());
    let location = match userinfo_end {
        Some(at) if at > 0 => {
            let userinfo = &url[..at];
            match userinfo.split_once(':') {
                Some((user, _password)) => {
                    out.push_str(user);
                    out.push_str(":<redacted>");
                }
                None => out.push_str("<redacted>"),
            }
            &url[at..]
        }
        _ => url,
    };
    match location.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            out.push_str(&redact_query(query));
        }
        None => out.push_str(location),
    }
    out
}

fn redact_query(query: &str) -> String {
    let (query, fragment) = match query.split_once('#') {
        Some((query, fragment)) => (query, Some(fragment)),
        None => (query, None),
    };
    let mut out = query
        .split('&')
        .map(|parameter| match parameter.split_once('=') {
            Some((key, _)) if is_secret_parameter(key) => format!("{key}=<redacted>"),
            _ => parameter.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&");
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

fn is_secret_parameter(key: &str) -> bool {
    SECRET_PARAMETERS
        .iter()
        .any(|secret| secret.eq_ignore_ascii_case(key))
}

/// `host:port` has a port colon; `user:pa` (the start of a URL whose password holds a `/`,
/// `?` or `#`) does not.
fn has_non_port_colon(authority: &str) -> bool {
    match authority.split_once(':') {
        Some((_, after)) => !after.chars().all(|c| c.is_ascii_digit()),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::redact_urls as r;

    #[test]
    fn passwords_in_user_info_are_hidden_and_users_kept() {
        assert_eq!(
            r("cannot connect to nats://director:s3cret@10.0.0.1:4222/x: refused"),
            "cannot connect to nats://director:<redacted>@10.0.0.1:4222/x: refused"
        );
        assert_eq!(
            r("'nats://token@host:4222' and nats://host:4222"),
            "'nats://<redacted>@host:4222' and nats://host:4222"
        );
        assert_eq!(
            r("nats://a:b@h nats://c:d:e@i"),
            "nats://a:<redacted>@h nats://c:<redacted>@i"
        );
        assert_eq!(r("no url here"), "no url here");
        assert_eq!(r("http://host:8080/path"), "http://host:8080/path");
    }

    #[test]
    fn a_slash_or_at_sign_in_a_password_does_not_leak_it() {
        for (url, secret) in [
            ("postgres://u:pa/ss@db:5432/x", "pa/ss"),
            ("postgres://u:p@@ss@db:5432/x", "ss"),
            ("https://u:a/b@c/d@host/path", "a/b@c/d"),
            ("https://u:x?y#z@host/path", "x?y#z"),
            ("nats://u:%2Fsecret@h:4222", "secret"),
        ] {
            let shown = r(url);
            assert!(!shown.contains(secret), "{url} -> {shown}");
            assert!(
                shown.starts_with("postgres://u:<redacted>@") || shown.contains("u:<redacted>@"),
                "{url} -> {shown}"
            );
        }
    }

    #[test]
    fn urls_without_secrets_are_left_alone() {
        assert_eq!(
            r("git+https://token@github.com/org/repo"),
            "git+https://<redacted>@github.com/org/repo"
        );
        assert_eq!(
            r("https://host:8443/users/a@b"),
            "https://host:8443/users/a@b"
        );
        assert_eq!(
            r("https://example.com/release.tgz"),
            "https://example.com/release.tgz"
        );
        assert_eq!(r("no url here: a@b"), "no url here: a@b");
        assert_eq!(r("http://[::1]:8080/x"), "http://[::1]:8080/x");
    }

    #[test]
    fn secret_query_parameters_are_hidden() {
        assert_eq!(
            r("GET http://127.0.0.1:1/blobs/abc?exp=1&sig=s3cr3t failed"),
            "GET http://127.0.0.1:1/blobs/abc?exp=1&sig=<redacted> failed"
        );
        assert_eq!(
            r("postgres://u:p@db/x?sslmode=require&password=p"),
            "postgres://u:<redacted>@db/x?sslmode=require&password=<redacted>"
        );
        assert_eq!(
            r("https://b.s3/k?X-Amz-Credential=AK&X-Amz-Signature=f00#frag"),
            "https://b.s3/k?X-Amz-Credential=<redacted>&X-Amz-Signature=<redacted>#frag"
        );
    }
}
