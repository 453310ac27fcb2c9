//! `((variables))`: finding placeholders, and the read-only variable sources of the command
//! line (`-v`, `--var-file`, `-l`, `--vars-env`) in bosh-cli's order of precedence.

use std::path::Path;

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

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/') || c.is_alphabetic()
}

/// Finds every placeholder, as bosh-cli's `\(\( ?(!?[-/\.\w\pL]+) ?\)\)` does.
pub fn placeholders(text: &str) -> Vec<Placeholder> {
    let mut found = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(offset) = text[i..].find("((") {
        let start = i + offset;
        let mut j = start + 2;
        if bytes.get(j) == Some(&b' ') {
            j += 1;
        }
        if bytes.get(j) == Some(&b'!') {
            j += 1;
        }
        let name_start = j;
        let name_len: usize = text[j..]
            .chars()
            .take_while(|&c| is_name_char(c))
            .map(char::len_utf8)
            .sum();
        j += name_len;
        let name_end = j;
        if bytes.get(j) == Some(&b' ') {
            j += 1;
        }
        if name_len > 0 && text[j..].starts_with("))") {
            found.push(Placeholder {
                start,
                end: j + 2,
                name: text[name_start..name_end].to_string(),
            });
            i = j + 2;
        } else {
            i = start + 1;
        }
    }
    found
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
    /// `-v name=value` (values are strings).
    pub vars: Vec<String>,
    /// `--var-file name=path` (values are the files' contents).
    pub var_files: Vec<String>,
    /// `-l path` (YAML maps of names to values).
    pub vars_files: Vec<std::path::PathBuf>,
    /// `--vars-env PREFIX` (environment variables `PREFIX_name`, values read as YAML).
    pub vars_env: Vec<String>,
}

impl VarSources {
    /// No variables.
    pub fn new() -> VarSources {
        VarSources::default()
    }

    /// Builds the sources from flags, reading files and the environment. Precedence, highest
    /// first: `-v`, then `--var-file`, then `-l`, then `--vars-env` (later flags of a kind
    /// win over earlier ones), as bosh-cli.
    pub fn from_flags(
        flags: &VarFlags,
        env: impl Iterator<Item = (String, String)> + Clone,
        read: &dyn Fn(&Path) -> std::io::Result<String>,
    ) -> Result<VarSources, Diagnostic> {
        let mut sources = Vec::new();

        let mut kv = Map::new();
        for flag in &flags.vars {
            let (name, text) = split_flag(flag, "-v")?;
            let origin = format!("-v {name}");
            let span = Span::synthetic(&origin);
            // As bosh-cli: the value is read as YAML (`-v instances=3` is a number), and a
            // value that reads as a string is kept exactly as typed.
            let mut value = yaml::parse(text, &origin).map_err(|e| {
                Diagnostic::general(format!(
                    "-v {name}=…: the value is not valid YAML: {}",
                    e.message
                ))
            })?;
            if matches!(value.value, Value::Str(_)) {
                value = Node::string(text, span.clone());
            }
            value.respan(&span);
            kv.insert(Node::string(name, span.clone()), value);
        }
        if !kv.is_empty() {
            sources.push(VarSource {
                origin: "-v".to_string(),
                values: kv,
            });
        }

        for flag in flags.var_files.iter().rev() {
            let (name, path) = split_flag(flag, "--var-file")?;
            let contents = read(Path::new(path)).map_err(|e| {
                Diagnostic::general(format!("--var-file {name}={path}: cannot read {path}: {e}"))
            })?;
            let span = Span::synthetic(&format!("--var-file {name}={path}"));
            let mut values = Map::new();
            values.insert(
                Node::string(name, span.clone()),
                Node::string(contents, span),
            );
            sources.push(VarSource {
                origin: format!("--var-file {name}"),
                values,
            });
        }

        for path in flags.vars_files.iter().rev() {
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
            sources.push(VarSource {
                origin: format!("-l {shown}"),
                values,
            });
        }

        for prefix in flags.vars_env.iter().rev() {
            let wanted = format!("{prefix}_");
            let mut values = Map::new();
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
                values.insert(Node::string(name, Span::synthetic(&origin)), value);
            }
            sources.push(VarSource {
                origin: format!("--vars-env {prefix}"),
                values,
            });
        }
        Ok(VarSources { sources })
    }

    /// Adds a source with the lowest precedence so far.
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
        assert_eq!(names("(( spaced ))"), ["spaced"]);
        assert_eq!(names("((!literal))"), ["literal"]);
        assert_eq!(names("((cert.private_key))"), ["cert.private_key"]);
        assert_eq!(names("((/director/dep/name))"), ["/director/dep/name"]);
        assert!(names("((not valid))").is_empty());
        assert!(names("(())").is_empty());
        assert_eq!(names("(((x)))"), ["x"]);
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
