//! `((variables))`: finding placeholders, and the read-only variable sources of the command
//! line (`-v`, `--var-file`, `-l`, `--vars-env`) in bosh-cli's order of precedence.

use std::path::Path;
use std::sync::LazyLock;

use regex::Regex;

use crate::diagnostics::Diagnostic;
use crate::yaml::{self, Map, Node, Span, Value};

/// A `((name))` found in a string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placeholder {
    /// Byte range of the whole `((…))` in the string.
    pub start: usize,
    /// End of the range (exclusive).
    pub end: usize,
    /// The name inside, without a leading `!` (may contain `.sub.key` parts).
    pub name: String,
}

/// bosh-cli's `interpolationRegex` (`director/template/template.go`):
/// `\(\((!?[-/\.\w\pL]+)\)\)`, where Go's `\w` is ASCII only. No spaces are allowed inside
/// the parentheses, so `(( name ))` is text, not a variable.
static PLACEHOLDER: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"\(\((!?[-/.0-9A-Za-z_\pL]+)\)\)").ok());

/// Finds every placeholder, as bosh-cli's pattern does (leftmost first, not overlapping).
pub fn placeholders(text: &str) -> Vec<Placeholder> {
    // The pattern is a constant that compiles (a unit test proves it); without it there
    // would be no placeholders rather than a panic.
    let Some(pattern) = PLACEHOLDER.as_ref() else {
        return Vec::new();
    };
    pattern
        .captures_iter(text)
        .filter_map(|captures| {
            let whole = captures.get(0)?;
            let name = captures.get(1)?.as_str();
            Some(Placeholder {
                start: whole.start(),
                end: whole.end(),
                name: name.strip_prefix('!').unwrap_or(name).to_string(),
            })
        })
        .collect()
}

/// One read-only source of variables: a flag or a file.
#[derive(Clone, Debug)]
pub struct VarSource {
    /// What it is, for messages: `-v internal_ip`, `-l vars.yml`, `--vars-env DIRECTOR`.
    pub origin: String,
    /// Name to value.
    pub values: Map,
}

/// The variables given on the command line, highest precedence first.
#[derive(Clone, Debug, Default)]
pub struct VarSources {
    sources: Vec<VarSource>,
}

/// The raw variable flags of a command, in the order they were given.
#[derive(Clone, Debug, Default)]
pub struct VarFlags {
    /// `-v name=value` (values are read as YAML; a string keeps its text).
    pub vars: Vec<String>,
    /// `--var-file name=path` (values are the files' contents).
    pub var_files: Vec<String>,
    /// `-l path` (YAML maps of names to values).
    pub vars_files: Vec<std::path::PathBuf>,
    /// `--vars-env PREFIX` (environment variables `PREFIX_name`, values read as YAML).
    pub vars_env: Vec<String>,
}

/// One variable as a flag or file gives it, before dotted names are folded into maps.
struct Given {
    name: String,
    value: Node,
    /// For messages: `-v a.b`, `-l vars.yml`, `--vars-env P (P_a)`.
    origin: String,
}

impl VarSources {
    /// No variables.
    pub fn new() -> VarSources {
        VarSources::default()
    }

    /// Builds the sources from flags, reading files and the environment, as bosh-cli's
    /// `VarFlags.AsVariables` does. Precedence, highest first: `-v`, then `--var-file`, then
    /// `-l`, then `--vars-env` (later flags of a kind win over earlier ones). Then, as
    /// bosh-cli's `StaticVariables`, a dotted name sets a key inside a map: `-v a.b=x -v
    /// a.c=y` gives `a: {b: x, c: y}`, and `-v a.b=x` over `-l` with `a: {b: 1, c: 2}` gives
    /// `a: {b: x, c: 2}`.
    pub fn from_flags(
        flags: &VarFlags,
        env: impl Iterator<Item = (String, String)> + Clone,
        read: &dyn Fn(&Path) -> std::io::Result<String>,
    ) -> Result<VarSources, Diagnostic> {
        // Lowest precedence first: each one may overwrite what came before.
        let mut given = Vec::new();

        for prefix in &flags.vars_env {
            let wanted = format!("{prefix}_");
            let mut pairs: Vec<(String, String)> = env
                .clone()
                .filter(|(k, _)| k.starts_with(&wanted))
                .collect();
            pairs.sort();
            for (key, raw) in pairs {
                let name = key[wanted.len()..].to_string();
                let origin = format!("--vars-env {prefix} ({key})");
                let mut value = yaml::parse(&raw, &origin).map_err(|e| {
                    Diagnostic::general(format!(
                        "--vars-env {prefix}: environment variable {key} is not valid YAML: {}",
                        e.message
                    ))
                })?;
                value.respan(&Span::synthetic(&origin));
                given.push(Given {
                    name,
                    value,
                    origin,
                });
            }
        }

        for path in &flags.vars_files {
            let shown = path.display().to_string();
            let text = read(path).map_err(|e| {
                Diagnostic::general(format!("-l {shown}: cannot read the vars file: {e}"))
            })?;
            let node = yaml::parse(&text, &shown)?;
            let values = match node.value {
                Value::Map(map) => map,
                Value::Null => Map::new(),
                _ => {
                    return Err(Diagnostic::error(
                        &node.span,
                        "",
                        format!(
                            "expected a vars file (a map of variable names to values), found {}",
                            node.kind()
                        ),
                    ));
                }
            };
            for (key, value) in values.into_entries() {
                // As go-yaml reading into bosh-cli's map of strings: a scalar key is its text.
                let Some(name) = key.scalar_text() else {
                    return Err(Diagnostic::error(
                        &key.span,
                        "",
                        format!("expected a variable name, found {}", key.kind()),
                    ));
                };
                given.push(Given {
                    name,
                    value,
                    origin: format!("-l {shown}"),
                });
            }
        }

        for flag in &flags.var_files {
            let (name, path) = split_flag(flag, "--var-file")?;
            let contents = read(Path::new(path)).map_err(|e| {
                Diagnostic::general(format!("--var-file {name}={path}: cannot read {path}: {e}"))
            })?;
            let span = Span::synthetic(&format!("--var-file {name}={path}"));
            given.push(Given {
                name: name.to_string(),
                value: Node::string(contents, span),
                origin: format!("--var-file {name}"),
            });
        }

        for flag in &flags.vars {
            let (name, text) = split_flag(flag, "-v")?;
            let origin = format!("-v {name}");
            let span = Span::synthetic(&origin);
            // As bosh-cli's `VarKV`: the value is read as YAML (`-v instances=3` is a
            // number); a value that reads as a string keeps its text, less one pair of
            // wrapping quotes (`-v v='"7"'` is the string `7`).
            let mut value = yaml::parse(text, &origin).map_err(|e| {
                Diagnostic::general(format!(
                    "-v {name}=…: the value is not valid YAML: {}",
                    e.message
                ))
            })?;
            if matches!(value.value, Value::Str(_)) {
                value = Node::string(trim_wrapping_quotes(text), span.clone());
            }
            value.respan(&span);
            given.push(Given {
                name: name.to_string(),
                value,
                origin,
            });
        }

        let mut values = Map::new();
        for variable in given {
            set_variable(&mut values, variable)?;
        }
        let mut sources = VarSources::new();
        if !values.is_empty() {
            sources.push(VarSource {
                origin: "the command line".to_string(),
                values,
            });
        }
        Ok(sources)
    }

    /// Adds a source with the lowest precedence so far (its names are taken as they are).
    pub fn push(&mut self, source: VarSource) {
        self.sources.push(source);
    }

    /// The value of a variable from the first source that has it.
    pub fn get(&self, name: &str) -> Option<&Node> {
        self.sources.iter().find_map(|s| s.values.get(name))
    }

    /// Every name any source provides.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .sources
            .iter()
            .flat_map(|s| s.values.string_keys().map(str::to_string))
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// bosh-cli's `trimWrappingQuotes`: one pair of matching `"` or `'` around the whole value.
fn trim_wrapping_quotes(text: &str) -> &str {
    for quote in ['"', '\''] {
        if text.len() >= 2 && text.starts_with(quote) && text.ends_with(quote) {
            return &text[1..text.len() - 1];
        }
    }
    text
}

/// Sets one variable into `values`: a plain name replaces the whole value, a dotted name
/// (`a.b.c`) sets a key inside maps, creating them where missing.
fn set_variable(values: &mut Map, variable: Given) -> Result<(), Diagnostic> {
    let Given {
        name,
        value,
        origin,
    } = variable;
    let parts: Vec<&str> = name.split('.').collect();
    let Some((last, parents)) = parts.split_last() else {
        return Ok(());
    };
    if parents.is_empty() {
        values.insert(Node::string(name.as_str(), value.span.clone()), value);
        return Ok(());
    }
    if parts.iter().any(|part| part.is_empty()) {
        return Err(Diagnostic::general(format!(
            "{origin}: variable name {name:?} has an empty part between dots (expected a.b.c)"
        )));
    }
    let mut current = values;
    for (depth, part) in parents.iter().enumerate() {
        if current.get(part).is_none() {
            current.insert(
                Node::string(*part, value.span.clone()),
                Node::new(Value::Map(Map::new()), value.span.clone()),
            );
        }
        let Some(next) = current.get_mut(part) else {
            return Ok(());
        };
        let span = next.span.clone();
        current = match &mut next.value {
            Value::Map(map) => map,
            other => {
                let walked = parts[..=depth].join(".");
                return Err(Diagnostic::general(format!(
                    "{origin}: cannot set {name}: {walked} is {} (from {span}), not a map",
                    other.kind()
                )));
            }
        };
    }
    current.insert(Node::string(*last, value.span.clone()), value);
    Ok(())
}

fn split_flag<'a>(flag: &'a str, name: &str) -> Result<(&'a str, &'a str), Diagnostic> {
    match flag.split_once('=') {
        Some((key, value)) if !key.is_empty() && !value.is_empty() => Ok((key, value)),
        Some((key, _)) if !key.is_empty() => Err(Diagnostic::general(format!(
            "{name} {flag:?}: expected a non-empty value after '='"
        ))),
        _ => Err(Diagnostic::general(format!(
            "{name} {flag:?}: expected name=value"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_placeholders_like_bosh_cli() {
        let names = |t: &str| {
            placeholders(t)
                .into_iter()
                .map(|p| p.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(names("((a))"), ["a"]);
        assert_eq!(names("https://mbus:((pw))@((ip)):6868"), ["pw", "ip"]);
        assert_eq!(names("((!literal))"), ["literal"]);
        assert_eq!(names("((cert.private_key))"), ["cert.private_key"]);
        assert_eq!(names("((/director/dep/name))"), ["/director/dep/name"]);
        assert_eq!(names("((Ω-ß_1))"), ["Ω-ß_1"]);
        assert!(names("((not valid))").is_empty());
        assert!(names("(())").is_empty());
        assert_eq!(names("(((x)))"), ["x"]);
        // bosh-cli's pattern has no room for spaces: none, one or two, it is text.
        assert!(names("(( spaced ))").is_empty());
        assert!(names("((spaced ))").is_empty());
        assert!(names("(( spaced))").is_empty());
        assert!(names("((  spaced  ))").is_empty());
        // `\w` is ASCII in Go; `\pL` is letters only: not digits of other scripts, not
        // letter-like numbers (U+2162 ROMAN NUMERAL THREE is alphabetic, not a letter).
        assert!(names("((x\u{0663}))").is_empty());
        assert!(names("((x\u{2162}))").is_empty());
        let found = placeholders("a-((b))-((!c))");
        assert_eq!((found[0].start, found[0].end), (2, 7));
        assert_eq!((found[1].start, found[1].end), (8, 14));
    }

    #[test]
    fn v_values_are_yaml_and_strings_lose_one_pair_of_wrapping_quotes() {
        let value = |flag: &str| {
            let flags = VarFlags {
                vars: vec![flag.to_string()],
                ..VarFlags::default()
            };
            let sources =
                VarSources::from_flags(&flags, std::iter::empty(), &|_| unreachable!()).unwrap();
            let node = sources.get("v").unwrap().clone();
            (node.kind(), node.scalar_text().unwrap_or_default())
        };
        assert_eq!(value(r#"v="7""#), ("a string", "7".to_string()));
        assert_eq!(value("v='7'"), ("a string", "7".to_string()));
        assert_eq!(value("v=7"), ("an integer", "7".to_string()));
        assert_eq!(value("v='it''s'"), ("a string", "it''s".to_string()));
        assert_eq!(value(r#"v="a b""#), ("a string", "a b".to_string()));
        assert_eq!(value("v=one\ntwo"), ("a string", "one\ntwo".to_string()));
        assert_eq!(
            value("v=ssh-rsa AA/+B=="),
            ("a string", "ssh-rsa AA/+B==".to_string())
        );
    }

    #[test]
    fn dotted_names_set_keys_inside_maps() {
        let flags = VarFlags {
            vars: vec!["a.b=x".into(), "a.c=z".into(), "m.k.deep=1".into()],
            vars_files: vec!["vars.yml".into()],
            ..VarFlags::default()
        };
        let read = |_: &Path| -> std::io::Result<String> {
            Ok("m: {k: {other: 2}, z: 3}\nplain: p\n".into())
        };
        let sources = VarSources::from_flags(&flags, std::iter::empty(), &read).unwrap();
        assert_eq!(crate::yaml::emit(sources.get("a").unwrap()), "b: x\nc: z\n");
        assert_eq!(
            crate::yaml::emit(sources.get("m").unwrap()),
            "k:\n  deep: 1\n  other: 2\nz: 3\n"
        );
        assert!(sources.get("a.b").is_none());
        assert_eq!(sources.names(), ["a", "m", "plain"]);

        let clash = VarFlags {
            vars: vec!["a=text".into(), "a.b=x".into()],
            ..VarFlags::default()
        };
        let error =
            VarSources::from_flags(&clash, std::iter::empty(), &|_| unreachable!()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "-v a.b: cannot set a.b: a is a string (from -v a), not a map"
        );
        let empty = VarFlags {
            vars: vec!["a..b=x".into()],
            ..VarFlags::default()
        };
        let error =
            VarSources::from_flags(&empty, std::iter::empty(), &|_| unreachable!()).unwrap_err();
        assert!(error.to_string().contains("empty part"), "{error}");
    }

    #[test]
    fn precedence_follows_bosh_cli() {
        let flags = VarFlags {
            vars: vec![
                "a=from-v".into(),
                "a=later-v".into(),
                "n=3".into(),
                "ip=10.0.0.1".into(),
            ],
            var_files: vec!["b=b.txt".into()],
            vars_files: vec!["one.yml".into(), "two.yml".into()],
            vars_env: vec!["PFX".into()],
        };
        let env = vec![
            ("PFX_a".to_string(), "env".to_string()),
            ("PFX_e".to_string(), "{k: 1}".to_string()),
        ];
        let read = |p: &Path| -> std::io::Result<String> {
            Ok(match p.to_str().unwrap() {
                "b.txt" => "file-b".into(),
                "one.yml" => "b: one\nc: one\nd: one\n".into(),
                _ => "c: two\n".into(),
            })
        };
        let sources = VarSources::from_flags(&flags, env.into_iter(), &read).unwrap();
        let get = |n: &str| sources.get(n).and_then(|n| n.scalar_text());
        assert_eq!(get("a").as_deref(), Some("later-v"));
        assert_eq!(get("b").as_deref(), Some("file-b"));
        assert_eq!(get("c").as_deref(), Some("two"));
        assert_eq!(get("d").as_deref(), Some("one"));
        assert!(sources.get("e").unwrap().get("k").is_some());
        assert!(matches!(sources.get("n").unwrap().value, Value::Int(3)));
        assert_eq!(get("ip").as_deref(), Some("10.0.0.1"));
    }
}
