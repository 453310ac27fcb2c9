//! [`Node`] tree to text, laid out the way bosh-cli prints YAML.
//!
//! bosh-cli marshals with go-yaml v2, whose emitter is a port of libyaml. Operators compare
//! `bosh int` output with ours and paste it into reviews, so the layout follows the same
//! rules: keys sorted in go-yaml's "natural" order, sequences inside mappings not indented,
//! strings that would read back as something else double-quoted, strings that cannot be
//! plain single-quoted, multi-line strings as `|` blocks, long lines folded after column 80.

use std::cmp::Ordering;

use super::parse::resolve_plain;
use super::{Node, Value};

const BEST_INDENT: isize = 2;
const BEST_WIDTH: usize = 80;

/// Renders a document as bosh-cli does: keys sorted, trailing newline.
pub fn emit(node: &Node) -> String {
    let mut out = String::new();
    emit_to(node, &mut out, true);
    out
}

/// Renders a document into `out`; with `sort_keys` false, mappings keep document order.
pub fn emit_to(node: &Node, out: &mut String, sort_keys: bool) {
    let mut writer = Writer {
        out,
        column: 0,
        whitespace: true,
        indention: true,
        indent: -1,
        indents: Vec::new(),
        flow_level: 0,
        sort_keys,
    };
    writer.node(node, Context::default());
    writer.write_indent();
}

#[derive(Clone, Copy, Default)]
struct Context {
    mapping: bool,
    simple_key: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    Plain,
    SingleQuoted,
    DoubleQuoted,
    Literal,
}

struct Writer<'a> {
    out: &'a mut String,
    column: usize,
    whitespace: bool,
    indention: bool,
    indent: isize,
    indents: Vec<isize>,
    flow_level: usize,
    sort_keys: bool,
}

impl Writer<'_> {
    fn node(&mut self, node: &Node, context: Context) {
        match &node.value {
            Value::Seq(items) if items.is_empty() || self.flow_level > 0 => {
                self.flow_collection('[', ']');
            }
            Value::Map(map) if map.is_empty() || self.flow_level > 0 => {
                self.flow_collection('{', '}');
            }
            Value::Seq(items) => self.block_sequence(items, context),
            Value::Map(_) => self.block_mapping(node),
            _ => self.scalar(node, context),
        }
    }

    fn increase_indent(&mut self, flow: bool, indentless: bool) {
        self.indents.push(self.indent);
        if self.indent < 0 {
            self.indent = if flow { BEST_INDENT } else { 0 };
        } else if !indentless {
            self.indent += BEST_INDENT;
        }
    }

    fn decrease_indent(&mut self) {
        self.indent = self.indents.pop().unwrap_or(-1);
    }

    fn flow_collection(&mut self, open: char, close: char) {
        self.write_indicator(open, true, true, false);
        self.increase_indent(true, false);
        self.flow_level += 1;
        self.flow_level -= 1;
        self.decrease_indent();
        self.write_indicator(close, false, false, false);
    }

    fn block_sequence(&mut self, items: &[Node], context: Context) {
        self.increase_indent(false, context.mapping && !self.indention);
        for item in items {
            self.write_indent();
            self.write_indicator('-', true, false, true);
            self.node(item, Context::default());
        }
        self.decrease_indent();
    }

    fn block_mapping(&mut self, node: &Node) {
        let Value::Map(map) = &node.value else { return };
        let mut entries: Vec<(&Node, &Node)> = map.iter().collect();
        if self.sort_keys {
            entries = merge_sort(entries, &|a: &(&Node, &Node), b: &(&Node, &Node)| {
                go_key_order(a.0, b.0)
            });
        }
        self.increase_indent(false, false);
        for (key, value) in entries {
            self.write_indent();
            let value_context = Context {
                mapping: true,
                ..Context::default()
            };
            if is_simple_key(key) {
                self.node(
                    key,
                    Context {
                        mapping: true,
                        simple_key: true,
                    },
                );
                self.write_indicator(':', false, false, false);
            } else {
                self.write_indicator('?', true, false, true);
                self.node(key, value_context);
                self.write_indent();
                self.write_indicator(':', true, false, true);
            }
            self.node(value, value_context);
        }
        self.decrease_indent();
    }

    fn scalar(&mut self, node: &Node, context: Context) {
        let (text, requested) = scalar_text_and_style(node);
        let analysis = analyze(&text);
        let style = self.select_style(requested, &analysis, &text, context);
        self.increase_indent(true, false);
        let chars: Vec<char> = text.chars().collect();
        match style {
            Style::Plain => self.write_plain(&chars, !context.simple_key),
            Style::SingleQuoted => self.write_single_quoted(&chars, !context.simple_key),
            Style::DoubleQuoted => self.write_double_quoted(&chars, !context.simple_key),
            Style::Literal => self.write_literal(&chars),
        }
        self.decrease_indent();
    }

    fn select_style(
        &self,
        requested: Style,
        analysis: &Analysis,
        text: &str,
        context: Context,
    ) -> Style {
        let mut style = requested;
        if context.simple_key && analysis.multiline {
            style = Style::DoubleQuoted;
        }
        if style == Style::Plain {
            let plain_allowed = if self.flow_level > 0 {
                analysis.flow_plain_allowed
            } else {
                analysis.block_plain_allowed
            };
            if !plain_allowed || (text.is_empty() && (self.flow_level > 0 || context.simple_key)) {
                style = Style::SingleQuoted;
            }
        }
        if style == Style::SingleQuoted && !analysis.single_quoted_allowed {
            style = Style::DoubleQuoted;
        }
        if style == Style::Literal
            && (!analysis.block_allowed || self.flow_level > 0 || context.simple_key)
        {
            style = Style::DoubleQuoted;
        }
        style
    }

    fn put(&mut self, c: char) {
        self.out.push(c);
        self.column += 1;
    }

    fn put_break(&mut self) {
        self.out.push('\n');
        self.column = 0;
    }

    fn write_indent(&mut self) {
        let indent = usize::try_from(self.indent.max(0)).unwrap_or(0);
        if !self.indention || self.column > indent || (self.column == indent && !self.whitespace) {
            self.put_break();
        }
        while self.column < indent {
            self.put(' ');
        }
        self.whitespace = true;
        self.indention = true;
    }

    fn write_indicator(
        &mut self,
        indicator: char,
        need_whitespace: bool,
        is_whitespace: bool,
        is_indention: bool,
    ) {
        if need_whitespace && !self.whitespace {
            self.put(' ');
        }
        self.put(indicator);
        self.whitespace = is_whitespace;
        self.indention = self.indention && is_indention;
    }

    fn write_plain(&mut self, value: &[char], allow_breaks: bool) {
        if !self.whitespace {
            self.put(' ');
        }
        let mut spaces = false;
        for (i, &c) in value.iter().enumerate() {
            if c == ' ' {
                if allow_breaks
                    && !spaces
                    && self.column > BEST_WIDTH
                    && value.get(i + 1) != Some(&' ')
                {
                    self.write_indent();
                } else {
                    self.put(c);
                }
                spaces = true;
            } else {
                self.put(c);
                self.indention = false;
                spaces = false;
            }
        }
        self.whitespace = false;
        self.indention = false;
    }

    fn write_single_quoted(&mut self, value: &[char], allow_breaks: bool) {
        self.write_indicator('\'', true, false, false);
        let mut spaces = false;
        let mut breaks = false;
        let last = value.len().saturating_sub(1);
        for (i, &c) in value.iter().enumerate() {
            if c == ' ' {
                if allow_breaks
                    && !spaces
                    && self.column > BEST_WIDTH
                    && i > 0
                    && i < last
                    && value.get(i + 1) != Some(&' ')
                {
                    self.write_indent();
                } else {
                    self.put(c);
                }
                spaces = true;
            } else if is_break(c) {
                if !breaks && c == '\n' {
                    self.put_break();
                }
                self.write_break(c);
                self.indention = true;
                breaks = true;
            } else {
                if breaks {
                    self.write_indent();
                }
                if c == '\'' {
                    self.put('\'');
                }
                self.put(c);
                self.indention = false;
                spaces = false;
                breaks = false;
            }
        }
        self.write_indicator('\'', false, false, false);
        self.whitespace = false;
        self.indention = false;
    }

    fn write_double_quoted(&mut self, value: &[char], allow_breaks: bool) {
        self.write_indicator('"', true, false, false);
        let mut spaces = false;
        let last = value.len().saturating_sub(1);
        for (i, &c) in value.iter().enumerate() {
            if !is_printable(c) || c == '\u{FEFF}' || is_break(c) || c == '"' || c == '\\' {
                self.put('\\');
                match c {
                    '\0' => self.put('0'),
                    '\u{7}' => self.put('a'),
                    '\u{8}' => self.put('b'),
                    '\t' => self.put('t'),
                    '\n' => self.put('n'),
                    '\u{b}' => self.put('v'),
                    '\u{c}' => self.put('f'),
                    '\r' => self.put('r'),
                    '\u{1b}' => self.put('e'),
                    '"' => self.put('"'),
                    '\\' => self.put('\\'),
                    '\u{85}' => self.put('N'),
                    '\u{a0}' => self.put('_'),
                    '\u{2028}' => self.put('L'),
                    '\u{2029}' => self.put('P'),
                    _ => {
                        let code = u32::from(c);
                        let (letter, width) = if code <= 0xFF {
                            ('x', 2)
                        } else if code <= 0xFFFF {
                            ('u', 4)
                        } else {
                            ('U', 8)
                        };
                        self.put(letter);
                        for digit in format!("{code:0width$X}").chars() {
                            self.put(digit);
                        }
                    }
                }
                spaces = false;
            } else if c == ' ' {
                if allow_breaks && !spaces && self.column > BEST_WIDTH && i > 0 && i < last {
                    self.write_indent();
                    if value.get(i + 1) == Some(&' ') {
                        self.put('\\');
                    }
                } else {
                    self.put(c);
                }
                spaces = true;
            } else {
                self.put(c);
                spaces = false;
            }
        }
        self.write_indicator('"', false, false, false);
        self.whitespace = false;
        self.indention = false;
    }

    fn write_literal(&mut self, value: &[char]) {
        self.write_indicator('|', true, false, false);
        if value.first().is_some_and(|&c| c == ' ' || is_break(c)) {
            self.write_indicator('2', false, false, false);
        }
        let chomp = match value {
            [] => Some('-'),
            [.., last] if !is_break(*last) => Some('-'),
            [_] => Some('+'),
            [.., before, _] if is_break(*before) => Some('+'),
            _ => None,
        };
        if let Some(chomp) = chomp {
            self.write_indicator(chomp, false, false, false);
        }
        self.put_break();
        self.indention = true;
        self.whitespace = true;
        let mut breaks = true;
        for &c in value {
            if is_break(c) {
                self.write_break(c);
                self.indention = true;
                breaks = true;
            } else {
                if breaks {
                    self.write_indent();
                }
                self.put(c);
                self.indention = false;
                breaks = false;
            }
        }
    }

    fn write_break(&mut self, c: char) {
        if c == '\n' {
            self.put_break();
        } else {
            self.out.push(c);
            self.column = 0;
        }
    }
}

fn is_break(c: char) -> bool {
    matches!(c, '\r' | '\n' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

/// libyaml's printable set: LF, ASCII printable, U+A0..U+D7FF, U+E000..U+FFFD but not BOM.
fn is_printable(c: char) -> bool {
    matches!(c, '\n' | '\u{20}'..='\u{7E}' | '\u{A0}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}')
        && c != '\u{FEFF}'
}

struct Analysis {
    multiline: bool,
    flow_plain_allowed: bool,
    block_plain_allowed: bool,
    single_quoted_allowed: bool,
    block_allowed: bool,
}

/// libyaml's scalar analysis: which styles can represent `text` faithfully.
fn analyze(text: &str) -> Analysis {
    if text.is_empty() {
        return Analysis {
            multiline: false,
            flow_plain_allowed: false,
            block_plain_allowed: true,
            single_quoted_allowed: true,
            block_allowed: false,
        };
    }
    let chars: Vec<char> = text.chars().collect();
    let mut block_indicators = false;
    let mut flow_indicators = false;
    let mut line_breaks = false;
    let mut special_characters = false;
    let mut leading_space = false;
    let mut leading_break = false;
    let mut trailing_space = false;
    let mut trailing_break = false;
    let mut break_space = false;
    let mut space_break = false;
    let mut previous_space = false;
    let mut previous_break = false;
    let mut preceded_by_whitespace = true;

    if text.starts_with("---") || text.starts_with("...") {
        block_indicators = true;
        flow_indicators = true;
    }
    let n = chars.len();
    for (i, &c) in chars.iter().enumerate() {
        let followed_by_whitespace = i + 1 >= n || matches!(chars[i + 1], ' ' | '\t');
        if i == 0 {
            match c {
                '#' | ',' | '[' | ']' | '{' | '}' | '&' | '*' | '!' | '|' | '>' | '\'' | '"'
                | '%' | '@' | '`' => {
                    flow_indicators = true;
                    block_indicators = true;
                }
                '?' | ':' => {
                    flow_indicators = true;
                    if followed_by_whitespace {
                        block_indicators = true;
                    }
                }
                '-' if followed_by_whitespace => {
                    flow_indicators = true;
                    block_indicators = true;
                }
                _ => {}
            }
        } else {
            match c {
                ',' | '?' | '[' | ']' | '{' | '}' => flow_indicators = true,
                ':' => {
                    flow_indicators = true;
                    if followed_by_whitespace {
                        block_indicators = true;
                    }
                }
                '#' if preceded_by_whitespace => {
                    flow_indicators = true;
                    block_indicators = true;
                }
                _ => {}
            }
        }
        if !is_printable(c) {
            special_characters = true;
        }
        if c == ' ' {
            if i == 0 {
                leading_space = true;
            }
            if i + 1 == n {
                trailing_space = true;
            }
            if previous_break {
                break_space = true;
            }
            previous_space = true;
            previous_break = false;
        } else if is_break(c) {
            line_breaks = true;
            if i == 0 {
                leading_break = true;
            }
            if i + 1 == n {
                trailing_break = true;
            }
            if previous_space {
                space_break = true;
            }
            previous_space = false;
            previous_break = true;
        } else {
            previous_space = false;
            previous_break = false;
        }
        preceded_by_whitespace = matches!(c, ' ' | '\t') || is_break(c);
    }

    let mut analysis = Analysis {
        multiline: line_breaks,
        flow_plain_allowed: true,
        block_plain_allowed: true,
        single_quoted_allowed: true,
        block_allowed: true,
    };
    if leading_space || leading_break || trailing_space || trailing_break {
        analysis.flow_plain_allowed = false;
        analysis.block_plain_allowed = false;
    }
    if trailing_space {
        analysis.block_allowed = false;
    }
    if break_space {
        analysis.flow_plain_allowed = false;
        analysis.block_plain_allowed = false;
        analysis.single_quoted_allowed = false;
    }
    if space_break || special_characters {
        analysis.flow_plain_allowed = false;
        analysis.block_plain_allowed = false;
        analysis.single_quoted_allowed = false;
        analysis.block_allowed = false;
    }
    if line_breaks {
        analysis.flow_plain_allowed = false;
        analysis.block_plain_allowed = false;
    }
    if flow_indicators {
        analysis.flow_plain_allowed = false;
    }
    if block_indicators {
        analysis.block_plain_allowed = false;
    }
    analysis
}

/// The text of a scalar and the style go-yaml v2 asks the emitter for.
fn scalar_text_and_style(node: &Node) -> (String, Style) {
    match &node.value {
        Value::Null => ("null".to_string(), Style::Plain),
        Value::Bool(b) => (b.to_string(), Style::Plain),
        Value::Int(i) => (i.to_string(), Style::Plain),
        Value::Float(f) => (format_float(*f), Style::Plain),
        Value::Str(s) => {
            let style = if s.contains('\n') {
                Style::Literal
            } else if matches!(resolve_plain_or_null(s), Value::Str(_))
                && !is_base60_float(s)
                && !is_timestamp(s)
            {
                Style::Plain
            } else {
                Style::DoubleQuoted
            };
            (s.clone(), style)
        }
        Value::Seq(_) | Value::Map(_) => (String::new(), Style::Plain),
    }
}

fn resolve_plain_or_null(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        resolve_plain(s)
    }
}

/// YAML 1.1 sexagesimal floats (`1:20`), which go-yaml quotes for other parsers' sake.
fn is_base60_float(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || !(matches!(b[0], b'+' | b'-') || b[0].is_ascii_digit()) || !s.contains(':') {
        return false;
    }
    // ^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$
    let mut i = usize::from(matches!(b[0], b'+' | b'-'));
    if !b.get(i).is_some_and(u8::is_ascii_digit) {
        return false;
    }
    while b.get(i).is_some_and(|c| c.is_ascii_digit() || *c == b'_') {
        i += 1;
    }
    let mut groups = 0;
    while b.get(i) == Some(&b':') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) && i - start < 2 {
            i += 1;
        }
        let group = &b[start..i];
        let valid = match group {
            [d] => d.is_ascii_digit(),
            [a, _] => (b'0'..=b'5').contains(a),
            _ => false,
        };
        if !valid {
            return false;
        }
        groups += 1;
    }
    if groups == 0 {
        return false;
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        while b.get(i).is_some_and(|c| c.is_ascii_digit() || *c == b'_') {
            i += 1;
        }
    }
    i == b.len()
}

/// What go-yaml v2's resolver reads as a timestamp, so its encoder quotes it: the layouts of
/// its `parseTimestamp` (`2006-1-2T15:4:5.999999999Z07:00`, the same with a lower-case `t`,
/// `2006-1-2 15:4:5.999999999` and `2006-1-2`) as Go's `time.Parse` reads them: one- or
/// two-digit month, day, hour, minute and second, each in range (the day for its month),
/// any number of fraction digits after `.` or `,`, a zone `Z` or `±hh:mm`.
fn is_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    // go-yaml's quick check: every layout starts with four digits and a dash.
    if b.len() < 5 || !b[..4].iter().all(u8::is_ascii_digit) || b[4] != b'-' {
        return false;
    }
    let year: u32 = b[..4].iter().fold(0, |n, d| n * 10 + u32::from(d - b'0'));
    let mut rest = &b[5..];
    let Some(month) = take_number(&mut rest) else {
        return false;
    };
    if !(1..=12).contains(&month) || !take_byte(&mut rest, b'-') {
        return false;
    }
    let Some(day) = take_number(&mut rest) else {
        return false;
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if day < 1 || day > days_in_month {
        return false;
    }
    let zoned = match rest.first() {
        None => return true,
        // A space in a Go layout matches a run of spaces.
        Some(b' ') => {
            while rest.first() == Some(&b' ') {
                rest = &rest[1..];
            }
            false
        }
        Some(b'T' | b't') => {
            rest = &rest[1..];
            true
        }
        Some(_) => return false,
    };
    let time_ok = take_number(&mut rest).is_some_and(|hour| hour < 24)
        && take_byte(&mut rest, b':')
        && take_number(&mut rest).is_some_and(|minute| minute < 60)
        && take_byte(&mut rest, b':')
        && take_number(&mut rest).is_some_and(|second| second < 60);
    if !time_ok {
        return false;
    }
    if matches!(rest, [b'.' | b',', digit, ..] if digit.is_ascii_digit()) {
        rest = &rest[1..];
        while rest.first().is_some_and(u8::is_ascii_digit) {
            rest = &rest[1..];
        }
    }
    if !zoned {
        return rest.is_empty();
    }
    match rest {
        [b'Z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => {
            let two = |a: u8, b: u8| {
                (a.is_ascii_digit() && b.is_ascii_digit())
                    .then(|| u32::from(a - b'0') * 10 + u32::from(b - b'0'))
            };
            // Go allows offsets of 24 hours and 60 minutes.
            two(*h1, *h2).is_some_and(|h| h <= 24) && two(*m1, *m2).is_some_and(|m| m <= 60)
        }
        _ => false,
    }
}

/// Go's `getnum` for a non-fixed field: one or two digits.
fn take_number(rest: &mut &[u8]) -> Option<u32> {
    let digits = rest
        .iter()
        .take(2)
        .take_while(|c| c.is_ascii_digit())
        .count();
    if digits == 0 {
        return None;
    }
    let value = rest[..digits]
        .iter()
        .fold(0, |n, d| n * 10 + u32::from(d - b'0'));
    *rest = &rest[digits..];
    Some(value)
}

fn take_byte(rest: &mut &[u8], byte: u8) -> bool {
    match rest.split_first() {
        Some((first, tail)) if *first == byte => {
            *rest = tail;
            true
        }
        _ => false,
    }
}

fn is_simple_key(key: &Node) -> bool {
    match &key.value {
        Value::Seq(items) => items.is_empty(),
        Value::Map(map) => map.is_empty(),
        _ => {
            let (text, _) = scalar_text_and_style(key);
            !analyze(&text).multiline && text.len() <= 128
        }
    }
}

/// Go's `strconv.FormatFloat(f, 'g', -1, 64)` with YAML's names for infinities and NaN.
pub(crate) fn format_float(f: f64) -> String {
    if f.is_nan() {
        return ".nan".to_string();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            ".inf".to_string()
        } else {
            "-.inf".to_string()
        };
    }
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0".to_string()
        } else {
            "0".to_string()
        };
    }
    // Shortest round-trip digits and decimal exponent, from Rust's `{:e}`.
    let scientific = format!("{f:e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if negative { "-" } else { "" };
    // Go picks %e when the exponent is < -4 or >= 6 (the precision it assumes for
    // shortest formatting), else %f.
    if !(-4..6).contains(&exponent) {
        let (first, rest) = digits.split_at(1);
        let fraction = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        return format!("{sign}{first}{fraction}e{exp_sign}{:02}", exponent.abs());
    }
    let point = exponent + 1;
    if point <= 0 {
        let zeros = "0".repeat(usize::try_from(-point).unwrap_or(0));
        format!("{sign}0.{zeros}{digits}")
    } else if point as usize >= digits.len() {
        let zeros = "0".repeat(point as usize - digits.len());
        format!("{sign}{digits}{zeros}")
    } else {
        let (whole, fraction) = digits.split_at(point as usize);
        format!("{sign}{whole}.{fraction}")
    }
}

/// go-yaml v2's map key order: numbers and booleans by value, before strings; strings
/// rune by rune, letters by code point, a non-letter before a letter (unless it follows
/// a digit), and runs of digits compared as numbers.
pub fn go_key_order(a: &Node, b: &Node) -> Ordering {
    if key_less(a, b) {
        Ordering::Less
    } else if key_less(b, a) {
        Ordering::Greater
    } else {
        Ordering::Equal
    }
}

fn key_rank(node: &Node) -> u8 {
    // Go reflect kinds: Bool 1, Int 2, Float64 14, String 24; collections and nil elsewhere.
    match node.value {
        Value::Null => 0,
        Value::Bool(_) => 1,
        Value::Int(_) => 2,
        Value::Float(_) => 14,
        Value::Map(_) => 21,
        Value::Seq(_) => 23,
        Value::Str(_) => 24,
    }
}

fn key_number(node: &Node) -> Option<f64> {
    match node.value {
        Value::Bool(b) => Some(if b { 1.0 } else { 0.0 }),
        Value::Int(i) => Some(i as f64),
        Value::Float(f) => Some(f),
        _ => None,
    }
}

fn key_less(a: &Node, b: &Node) -> bool {
    if let (Some(af), Some(bf)) = (key_number(a), key_number(b)) {
        if af != bf {
            return af < bf;
        }
        if key_rank(a) != key_rank(b) {
            return key_rank(a) < key_rank(b);
        }
        return match (&a.value, &b.value) {
            (Value::Int(x), Value::Int(y)) => x < y,
            (Value::Float(x), Value::Float(y)) => x < y,
            (Value::Bool(x), Value::Bool(y)) => !x && *y,
            _ => false,
        };
    }
    let (Value::Str(sa), Value::Str(sb)) = (&a.value, &b.value) else {
        return key_rank(a) < key_rank(b);
    };
    let ar: Vec<char> = sa.chars().collect();
    let br: Vec<char> = sb.chars().collect();
    let mut digits = false;
    let mut i = 0;
    while i < ar.len() && i < br.len() {
        if ar[i] == br[i] {
            digits = ar[i].is_ascii_digit();
            i += 1;
            continue;
        }
        let al = ar[i].is_alphabetic();
        let bl = br[i].is_alphabetic();
        if al && bl {
            return ar[i] < br[i];
        }
        if al || bl {
            return if digits { al } else { bl };
        }
        let mut an: i64 = 0;
        let mut bn: i64 = 0;
        if ar[i] == '0' || br[i] == '0' {
            let mut j = i;
            while j > 0 && ar[j - 1].is_ascii_digit() {
                j -= 1;
                if ar[j] != '0' {
                    an = 1;
                    bn = 1;
                    break;
                }
            }
        }
        let mut ai = i;
        while ai < ar.len() && ar[ai].is_ascii_digit() {
            an = an
                .wrapping_mul(10)
                .wrapping_add(i64::from(ar[ai] as u8 - b'0'));
            ai += 1;
        }
        let mut bi = i;
        while bi < br.len() && br[bi].is_ascii_digit() {
            bn = bn
                .wrapping_mul(10)
                .wrapping_add(i64::from(br[bi] as u8 - b'0'));
            bi += 1;
        }
        if an != bn {
            return an < bn;
        }
        if ai != bi {
            return ai < bi;
        }
        return ar[i] < br[i];
    }
    ar.len() < br.len()
}

/// A stable merge sort that tolerates comparators that are not total orders (go-yaml's
/// key order is not one for every input, and the standard sort may panic on those).
fn merge_sort<T: Copy>(items: Vec<T>, compare: &dyn Fn(&T, &T) -> Ordering) -> Vec<T> {
    if items.len() <= 1 {
        return items;
    }
    let mut right = items;
    let left = right.drain(..right.len() / 2).collect::<Vec<_>>();
    let left = merge_sort(left, compare);
    let right = merge_sort(right, compare);
    let mut merged = Vec::with_capacity(left.len() + right.len());
    let (mut i, mut j) = (0, 0);
    while i < left.len() && j < right.len() {
        if compare(&right[j], &left[i]) == Ordering::Less {
            merged.push(right[j]);
            j += 1;
        } else {
            merged.push(left[i]);
            i += 1;
        }
    }
    merged.extend_from_slice(&left[i..]);
    merged.extend_from_slice(&right[j..]);
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::{Span, parse};

    fn round_trip(input: &str) -> String {
        emit(&parse(input, "t.yml").unwrap())
    }

    #[test]
    fn layout_matches_go_yaml_v2() {
        let input = "b: 1\na:\n  - x: 1\n    z: [a, b]\n  - - nested\nc: {}\nd: []\n";
        assert_eq!(
            round_trip(input),
            "a:\n- x: 1\n  z:\n  - a\n  - b\n- - nested\nb: 1\nc: {}\nd: []\n"
        );
        // `y` is a boolean in YAML 1.1, as bosh-cli reads it: it sorts first and prints as
        // `true`, while the string "y" is quoted.
        assert_eq!(
            round_trip("x: 1\ny: 2\n'y': 3\n"),
            "true: 2\nx: 1\n\"y\": 3\n"
        );
    }

    #[test]
    fn quotes_strings_that_would_read_back_as_something_else() {
        let input =
            "a: 'true'\nb: '1.0'\nc: ''\nd: '*'\ne: 'a: b'\nf: 283.1.6\ng: '12'\nh: '1:20'\n";
        assert_eq!(
            round_trip(input),
            "a: \"true\"\nb: \"1.0\"\nc: \"\"\nd: '*'\ne: 'a: b'\nf: 283.1.6\ng: \"12\"\nh: \"1:20\"\n"
        );
    }

    #[test]
    fn quotes_what_go_yaml_reads_as_a_timestamp() {
        for timestamp in [
            "2001-12-14",
            "2001-1-2",
            "2000-02-29",
            "2001-12-14t21:59:43.10-05:00",
            "2001-12-15T02:59:43.1Z",
            "2001-12-15T2:9:3Z",
            "2001-12-14 21:59:43.10",
            "2001-12-14  21:59:43,5",
            "2001-12-14T21:59:43+24:60",
        ] {
            let node = Node::string(timestamp, Span::synthetic("test"));
            assert_eq!(emit(&node), format!("\"{timestamp}\"\n"), "{timestamp}");
            assert!(round_trip(&format!("a: {timestamp}\n")).starts_with("a: \""));
        }
        for text in [
            "2001-02-29",
            "2001-13-01",
            "2001-12-32",
            "2001-00-10",
            "20011-12-14",
            "2001-12-144",
            "2001-12-14 21:59:43.10 -5",
            "2001-12-14 24:00:00",
            "2001-12-14T21:59:43",
            "2001-12-14T21:59:43+0500",
            "2001-12-14T21:59:43z",
            "2001-12-14x",
            "2001-12-14 21:59:43.",
            "2001-",
        ] {
            let node = Node::string(text, Span::synthetic("test"));
            assert_eq!(emit(&node), format!("{text}\n"), "{text}");
        }
    }

    #[test]
    fn multi_line_strings_are_literal_blocks() {
        let input = "a: \"line1\\nline2\\n\"\nb: \"x\\ny\"\nc: \" lead\\n\"\n";
        assert_eq!(
            round_trip(input),
            "a: |\n  line1\n  line2\nb: |-\n  x\n  y\nc: |2\n   lead\n"
        );
    }

    #[test]
    fn long_plain_strings_fold_after_column_80() {
        let words = vec!["word"; 30].join(" ");
        let out = round_trip(&format!("key: {words}\n"));
        assert!(out.lines().count() > 1);
        assert!(out.lines().nth(1).unwrap().starts_with("  word"));
        assert_eq!(
            parse(&out, "t").unwrap().get("key").unwrap().as_str(),
            Some(words.as_str())
        );
    }

    #[test]
    fn floats_print_like_go() {
        assert_eq!(format_float(1.0), "1");
        assert_eq!(format_float(1.5), "1.5");
        assert_eq!(format_float(100000.0), "100000");
        assert_eq!(format_float(1234567.0), "1.234567e+06");
        assert_eq!(format_float(0.0001), "0.0001");
        assert_eq!(format_float(0.00001), "1e-05");
        assert_eq!(format_float(-2.5e10), "-2.5e+10");
    }

    #[test]
    fn keys_sort_naturally() {
        let out = round_trip("b10: 1\nb9: 1\nB: 1\na_b: 1\naB: 1\n_x: 1\n");
        assert_eq!(out, "_x: 1\nB: 1\na_b: 1\naB: 1\nb9: 1\nb10: 1\n");
    }
}
