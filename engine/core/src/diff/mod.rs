//! Manifest diffs: what `director diff OLD NEW` shows a reviewer before a deploy.
//!
//! This module owns the comparison of two evaluated documents (two [`Node`] trees) and its
//! three renderings: text lines as `bosh deploy` prints them (`+ ` added, `- ` removed,
//! `  ` context), a Markdown block for a pull-request comment, and JSON for tools.
//!
//! The comparison follows BOSH's (`changeset.rb`): top-level sections in BOSH's order,
//! maps compared key by key, arrays of maps matched by their identity key (`name`, `alias`
//! or `range`), and only the ancestors of a change shown as context. It goes further where
//! a reviewer needs it: a matched array item that changed position is shown as moved
//! (instance groups deploy in order), other arrays are compared item by item with a longest
//! common subsequence so that reordering `[z1, z2]` is visible, and every change is also
//! listed with a go-patch path (`/instance_groups/name=web/jobs/name=app/properties/port`).
//!
//! Redaction (unless [`DiffOptions::redact`] is false): every scalar under a `properties`
//! key, under `env.bosh`, or that came from a `((variable))` is shown as `"<redacted>"`,
//! and credentials in URLs (`https://user:pass@host`) as `<redacted>`. A redacted value
//! that changed still shows as a `-`/`+` pair, so a reviewer sees that it changed but never
//! what it was or became. Redaction is applied to a copy of each tree before anything is
//! rendered, so no rendering (text, Markdown or JSON) can see a secret.
//!
//! Invariant: pure. No IO, no clock, no hash-order iteration; the same inputs give the same
//! bytes.

mod compute;
mod lcs;
mod redact;
mod render;
#[cfg(test)]
mod tests;

use serde_json::{Value as Json, json};

use crate::yaml::Node;

/// How to compute a diff.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiffOptions {
    /// Hide secrets (`properties`, `env.bosh`, values from variables, URL credentials).
    pub redact: bool,
}

impl Default for DiffOptions {
    /// Redaction on, as `bosh deploy` without `--no-redact`.
    fn default() -> DiffOptions {
        DiffOptions { redact: true }
    }
}

/// What changed between two documents: the lines a reviewer reads and the list of changes.
#[derive(Clone, Debug)]
pub struct ManifestDiff {
    lines: Vec<Line>,
    changes: Vec<Change>,
}

/// How a line of the diff relates to the two documents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mark {
    Added,
    Removed,
    Context,
}

impl Mark {
    fn prefix(self) -> &'static str {
        match self {
            Mark::Added => "+ ",
            Mark::Removed => "- ",
            Mark::Context => "  ",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mark::Added => "added",
            Mark::Removed => "removed",
            Mark::Context => "context",
        }
    }
}

/// One line: a mark and YAML text (indented, without the mark).
#[derive(Clone, Debug)]
struct Line {
    mark: Mark,
    text: String,
}

impl Line {
    /// The line with its mark, without trailing spaces (an empty line of a block scalar
    /// becomes `+`, not `+ `).
    fn marked(&self) -> String {
        let mut out = format!("{}{}", self.mark.prefix(), self.text);
        out.truncate(out.trim_end().len());
        out
    }
}

/// The kinds of change listed in [`ManifestDiff::to_json`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChangeKind {
    /// A key or array item only in the new document (`old` is null).
    Added,
    /// A key or array item only in the old document (`new` is null).
    Removed,
    /// A value that differs (a scalar, or a value that changed kind).
    Changed,
    /// A matched array item at another position (`old` and `new` are 0-based positions).
    Moved,
}

impl ChangeKind {
    fn name(self) -> &'static str {
        match self {
            ChangeKind::Added => "added",
            ChangeKind::Removed => "removed",
            ChangeKind::Changed => "changed",
            ChangeKind::Moved => "moved",
        }
    }
}

/// One entry of the change list; values are already redacted.
#[derive(Clone, Debug)]
struct Change {
    kind: ChangeKind,
    /// go-patch pointer; array items matched by identity as `name=web`.
    path: String,
    /// The top-level key the change is under; `None` for a change of the whole document.
    section: Option<String>,
    /// The instance group the change is in, when it is in one (and its name is not redacted).
    instance_group: Option<String>,
    old: Json,
    new: Json,
}

/// Compares `old` with `new`.
pub fn diff(old: &Node, new: &Node, options: &DiffOptions) -> ManifestDiff {
    let old_shown = redact::shown(old, options.redact);
    let new_shown = redact::shown(new, options.redact);
    let (lines, changes) = compute::compute(
        compute::Side {
            real: old,
            shown: &old_shown,
        },
        compute::Side {
            real: new,
            shown: &new_shown,
        },
    );
    ManifestDiff { lines, changes }
}

impl ManifestDiff {
    /// Whether nothing was added, removed, changed or moved.
    pub fn is_empty(&self) -> bool {
        !self.lines.iter().any(|l| l.mark != Mark::Context)
    }

    /// The lines as `bosh deploy` prints them, joined with `\n`, with a trailing newline
    /// unless empty. With `color`, added lines are green and removed lines red (ANSI).
    pub fn render_text(&self, color: bool) -> String {
        let mut out = String::new();
        for line in &self.lines {
            let text = line.marked();
            match (color, line.mark) {
                (true, Mark::Added) => out.push_str(&format!("\x1b[32m{text}\x1b[0m")),
                (true, Mark::Removed) => out.push_str(&format!("\x1b[31m{text}\x1b[0m")),
                _ => out.push_str(&text),
            }
            out.push('\n');
        }
        out
    }

    /// A pull-request comment: a one-line summary, a blank line and a fenced `diff` block;
    /// `No changes.` when there are none.
    pub fn render_markdown(&self) -> String {
        if self.is_empty() {
            return "No changes.\n".to_string();
        }
        let text = self.render_text(false);
        // A fence longer than any run of backticks in the text, so a value cannot close it.
        let longest_run = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
        let fence = "`".repeat(longest_run.max(2) + 1);
        format!("{}\n\n{fence}diff\n{text}{fence}\n", self.summary())
    }

    /// `{"changed": bool, "lines": [{"change", "text"}], "changes": [{"kind", "path",
    /// "section", "instance_group", "old", "new"}]}`; values are redacted as in the text.
    pub fn to_json(&self) -> Json {
        let lines: Vec<Json> = self
            .lines
            .iter()
            .map(|l| json!({"change": l.mark.name(), "text": l.text}))
            .collect();
        let changes: Vec<Json> = self
            .changes
            .iter()
            .map(|c| {
                json!({
                    "kind": c.kind.name(),
                    "path": c.path,
                    "section": c.section,
                    "instance_group": c.instance_group,
                    "old": c.old,
                    "new": c.new,
                })
            })
            .collect();
        json!({"changed": !self.is_empty(), "lines": lines, "changes": changes})
    }

    /// `**Manifest diff**: 3 lines added, 2 removed in instance_groups (web, db), variables`.
    fn summary(&self) -> String {
        let added = self.lines.iter().filter(|l| l.mark == Mark::Added).count();
        let removed = self
            .lines
            .iter()
            .filter(|l| l.mark == Mark::Removed)
            .count();
        let noun = if added == 1 { "line" } else { "lines" };
        let mut summary = format!("**Manifest diff**: {added} {noun} added, {removed} removed");
        let mut sections: Vec<(&str, Vec<&str>)> = Vec::new();
        for change in &self.changes {
            let Some(section) = change.section.as_deref() else {
                continue;
            };
            let index = match sections.iter().position(|(s, _)| *s == section) {
                Some(index) => index,
                None => {
                    sections.push((section, Vec::new()));
                    sections.len() - 1
                }
            };
            if let Some(group) = change.instance_group.as_deref() {
                let groups = &mut sections[index].1;
                if !groups.contains(&group) {
                    groups.push(group);
                }
            }
        }
        if !sections.is_empty() {
            let parts: Vec<String> = sections
                .iter()
                .map(|(section, groups)| {
                    let section = escape_markdown(section);
                    if groups.is_empty() {
                        section
                    } else {
                        let groups: Vec<String> =
                            groups.iter().map(|g| escape_markdown(g)).collect();
                        format!("{section} ({})", groups.join(", "))
                    }
                })
                .collect();
            summary.push_str(" in ");
            summary.push_str(&parts.join(", "));
        }
        summary
    }
}

/// Escapes the characters that Markdown (or GitHub's HTML) would interpret in a name.
fn escape_markdown(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '\\' | '`' | '*' | '[' | ']' | '<' | '>' | '|' | '~') {
            out.push('\\');
        }
        if c == '\n' || c == '\r' {
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out
}
