//! The one output handle: human text on stderr, data on stdout, colors only on a terminal.
//! A closed stdout (`director int m.yml | head`) ends the program quietly with success.

use std::io::{IsTerminal, Write};

use director_core::diagnostics::{Diagnostic, Diagnostics, Severity};

use crate::cli::GlobalArgs;

/// Where output goes and how it looks.
pub struct Ui {
    /// `--json`.
    pub json: bool,
    /// Whether stderr gets ANSI colors.
    pub color_stderr: bool,
    /// Whether stdout gets ANSI colors.
    pub color_stdout: bool,
}

impl Ui {
    /// From the global flags and the environment (`NO_COLOR`, `CI`, terminals).
    pub fn new(global: &GlobalArgs) -> Ui {
        let allowed = !global.no_color
            && std::env::var_os("NO_COLOR").is_none()
            && std::env::var("CI").map_or(true, |v| v != "true");
        Ui {
            json: global.json,
            color_stderr: allowed && std::io::stderr().is_terminal(),
            color_stdout: allowed && std::io::stdout().is_terminal(),
        }
    }

    /// Writes data to stdout.
    pub fn data(&mut self, text: &str) {
        let mut out = std::io::stdout().lock();
        if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("error: cannot write to stdout: {e}");
            std::process::exit(1);
        }
    }

    /// Writes a human line to stderr.
    pub fn say(&mut self, line: &str) {
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }

    fn paint(&self, text: &str, code: &str) -> String {
        if self.color_stderr {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    /// Prints one diagnostic on stderr.
    pub fn diagnostic(&mut self, diagnostic: &Diagnostic) {
        let line = if diagnostic.span.is_none() && diagnostic.severity == Severity::Error {
            format!("{} {diagnostic}", self.paint("error:", "1;31"))
        } else if diagnostic.severity == Severity::Warning {
            diagnostic
                .to_string()
                .replacen("warning:", &self.paint("warning:", "1;33"), 1)
        } else {
            diagnostic.to_string()
        };
        self.say(&line);
    }

    /// Prints every diagnostic, then a count when there is more than one.
    pub fn diagnostics(&mut self, diagnostics: &Diagnostics) {
        for diagnostic in diagnostics.iter() {
            self.diagnostic(diagnostic);
        }
    }

    /// Prints diagnostics as the JSON view on stdout.
    pub fn diagnostics_json(&mut self, valid: bool, diagnostics: &Diagnostics) {
        let items: Vec<serde_json::Value> = diagnostics
            .iter()
            .map(|d| {
                serde_json::json!({
                    "severity": if d.is_error() { "error" } else { "warning" },
                    "file": d.span.as_ref().map(|s| s.file.to_string()),
                    "line": d.span.as_ref().filter(|s| s.has_position()).map(|s| s.line),
                    "column": d.span.as_ref().filter(|s| s.has_position()).map(|s| s.col),
                    "path": d.path,
                    "message": d.message,
                })
            })
            .collect();
        let doc = serde_json::json!({ "valid": valid, "diagnostics": items });
        self.data(&format!(
            "{}\n",
            serde_json::to_string_pretty(&doc).unwrap_or_default()
        ));
    }
}

/// Rows as aligned columns, two spaces apart.
pub fn columns(rows: &[Vec<String>]) -> String {
    let count = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..count)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i] - cell.chars().count() + 2;
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A Unix time as `2026-11-26 18:32:57 UTC`.
pub fn utc(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let seconds = unix.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::utc(1_795_717_977), "2026-11-26 18:32:57 UTC");
        assert_eq!(super::utc(951_782_400), "2000-02-29 00:00:00 UTC");
    }
}
