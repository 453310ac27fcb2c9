//! The comparison: walks the two documents side by side and produces the lines and the
//! change list.
//!
//! Every walk function returns the lines of the changes below a node, without the node's
//! own context line; the caller adds its context line (`key:`, `- name: web`) only when
//! the result is not empty. That is what keeps context to the ancestors of changes.
//! Equality is decided on the real values, text and JSON are made from the shown
//! (redacted) ones.

use std::collections::BTreeMap;

use serde_json::{Value as Json, json};

use super::{Change, ChangeKind, Line, Mark, lcs, render};
use crate::yaml::{Map, Node, Span, Value};

/// A stretch of an array diff: changed lines, or an unchanged item's line that is shown
/// only next to a change.
enum Piece {
    Changed(Vec<Line>),
    Unchanged(Vec<String>),
}

/// Lays out an array diff with one unchanged neighbour on each side of every change, so a
/// reviewer sees where an item was added, removed or moved to (`- - z1` alone does not say).
fn with_neighbours(pieces: Vec<Piece>) -> Vec<Line> {
    let changed =
        |piece: Option<&Piece>| matches!(piece, Some(Piece::Changed(lines)) if !lines.is_empty());
    let mut out = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        match piece {
            Piece::Changed(lines) => out.extend(lines.iter().cloned()),
            Piece::Unchanged(lines) => {
                let before = i.checked_sub(1).and_then(|j| pieces.get(j));
                if changed(before) || changed(pieces.get(i + 1)) {
                    out.extend(marked(lines.clone(), Mark::Context));
                }
            }
        }
    }
    out
}

/// BOSH's order of top-level sections (`changeset.rb`, without the v1 keys).
const SECTIONS: [&str; 13] = [
    "azs",
    "vm_types",
    "vm_extensions",
    "compilation",
    "networks",
    "disk_types",
    "name",
    "stemcells",
    "releases",
    "update",
    "instance_groups",
    "addons",
    "variables",
];

/// Keys that identify the items of an array of maps, in order of preference.
const IDENTITY_KEYS: [&str; 3] = ["name", "alias", "range"];

/// A node of one document: its real value (for comparing) and its shown, redacted copy
/// (for rendering), which has the same shape.
#[derive(Clone, Copy)]
pub(super) struct Side<'a> {
    pub(super) real: &'a Node,
    pub(super) shown: &'a Node,
}

impl<'a> Side<'a> {
    /// Map entries: the key and the value on both trees.
    fn entries(self) -> Vec<(&'a Node, Side<'a>)> {
        match (&self.real.value, &self.shown.value) {
            (Value::Map(real), Value::Map(shown)) => real
                .iter()
                .zip(shown.iter())
                .map(|((key, real), (_, shown))| (key, Side { real, shown }))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Array items on both trees.
    fn items(self) -> Vec<Side<'a>> {
        match (&self.real.value, &self.shown.value) {
            (Value::Seq(real), Value::Seq(shown)) => real
                .iter()
                .zip(shown)
                .map(|(real, shown)| Side { real, shown })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The value under a string key, on both trees.
    fn get(self, key: &str) -> Option<Side<'a>> {
        Some(Side {
            real: self.real.get(key)?,
            shown: self.shown.get(key)?,
        })
    }
}

/// Where the walk is: the indentation of the lines it writes and what changes are filed
/// under.
#[derive(Clone, Default)]
struct Ctx {
    indent: usize,
    /// go-patch tokens, already escaped.
    path: Vec<String>,
    section: Option<String>,
    instance_group: Option<String>,
}

impl Ctx {
    fn at(&self, token: String) -> Ctx {
        let mut ctx = self.clone();
        ctx.path.push(token);
        ctx
    }

    fn indented(&self) -> Ctx {
        let mut ctx = self.clone();
        ctx.indent += 2;
        ctx
    }

    fn pointer(&self) -> String {
        if self.path.is_empty() {
            "/".to_string()
        } else {
            format!("/{}", self.path.join("/"))
        }
    }
}

/// The lines and changes between two documents.
pub(super) fn compute(old: Side<'_>, new: Side<'_>) -> (Vec<Line>, Vec<Change>) {
    let mut differ = Differ {
        changes: Vec::new(),
    };
    let lines = differ.root(old, new);
    (lines, differ.changes)
}

fn marked(lines: Vec<String>, mark: Mark) -> impl Iterator<Item = Line> {
    lines.into_iter().map(move |text| Line { mark, text })
}

/// A go-patch token: `~` `/` `?` `=` `:` escaped as the pointer parser expects.
fn escape(text: &str) -> String {
    text.replace('~', "~0")
        .replace('/', "~1")
        .replace('?', "~2")
        .replace('=', "~3")
        .replace(':', "~7")
}

/// Where a key goes in the merged order of two maps.
enum Slot {
    Both(usize, usize),
    OldOnly(usize),
    NewOnly(usize),
}

/// The order keys are shown in. Top level: BOSH's sections, then the new document's other
/// keys in its order, then keys only in the old one in its order. Below: the new document's
/// order, each key only in the old document right after the kept key that preceded it
/// there (or first, when none did).
fn key_order(old: &[&Node], new: &[&Node], top: bool) -> Vec<Slot> {
    // Scalar keys are looked up by value; others (null, collections) compared one by one.
    let by_value: BTreeMap<String, usize> = old
        .iter()
        .enumerate()
        .rev()
        .filter_map(|(o, k)| Some((identity_value(k)?, o)))
        .collect();
    let old_of_new: Vec<Option<usize>> = new
        .iter()
        .map(|k| match identity_value(k) {
            Some(v) => by_value.get(&v).copied(),
            None => old.iter().position(|o| o.same_value(k)),
        })
        .collect();
    let mut kept = vec![false; old.len()];
    for o in old_of_new.iter().flatten() {
        kept[*o] = true;
    }
    let slot = |n: usize| match old_of_new[n] {
        Some(o) => Slot::Both(o, n),
        None => Slot::NewOnly(n),
    };
    let mut order = Vec::with_capacity(old.len() + new.len());
    if top {
        let is_section = |k: &Node| k.as_str().is_some_and(|s| SECTIONS.contains(&s));
        for section in SECTIONS {
            if let Some(n) = new.iter().position(|k| k.as_str() == Some(section)) {
                order.push(slot(n));
            } else if let Some(o) = old.iter().position(|k| k.as_str() == Some(section)) {
                order.push(Slot::OldOnly(o));
            }
        }
        order.extend((0..new.len()).filter(|&n| !is_section(new[n])).map(slot));
        order.extend(
            (0..old.len())
                .filter(|&o| !kept[o] && !is_section(old[o]))
                .map(Slot::OldOnly),
        );
    } else {
        // Removed keys grouped by the kept key they follow in the old document (the
        // first group: those before any kept key).
        let mut leading = Vec::new();
        let mut following: Vec<Vec<usize>> = vec![Vec::new(); old.len()];
        let mut last_kept = None;
        for (o, is_kept) in kept.iter().enumerate() {
            match (*is_kept, last_kept) {
                (true, _) => last_kept = Some(o),
                (false, None) => leading.push(o),
                (false, Some(anchor)) => following[anchor].push(o),
            }
        }
        order.extend(leading.into_iter().map(Slot::OldOnly));
        for (n, old_index) in old_of_new.iter().enumerate() {
            order.push(slot(n));
            if let Some(o) = *old_index {
                order.extend(following[o].iter().copied().map(Slot::OldOnly));
            }
        }
    }
    order
}

/// A scalar identity value as a lookup key (kind-tagged, so `1` and `"1"` differ).
fn identity_value(node: &Node) -> Option<String> {
    match &node.value {
        Value::Str(s) => Some(format!("s{s}")),
        Value::Int(i) => Some(format!("i{i}")),
        Value::Float(f) => Some(format!("f{}", f.to_bits())),
        Value::Bool(b) => Some(format!("b{b}")),
        Value::Null | Value::Seq(_) | Value::Map(_) => None,
    }
}

/// The identity values of `items` under `key`, when every item is a map with a unique
/// scalar there.
fn identities(items: &[Side<'_>], key: &str) -> Option<Vec<String>> {
    let mut seen = std::collections::BTreeSet::new();
    let mut ids = Vec::with_capacity(items.len());
    for item in items {
        let id = identity_value(item.real.as_map()?.get(key)?)?;
        if !seen.insert(id.clone()) {
            return None;
        }
        ids.push(id);
    }
    Some(ids)
}

struct Differ {
    changes: Vec<Change>,
}

impl Differ {
    fn record(&mut self, kind: ChangeKind, ctx: &Ctx, old: Json, new: Json) {
        self.changes.push(Change {
            kind,
            path: ctx.pointer(),
            section: ctx.section.clone(),
            instance_group: ctx.instance_group.clone(),
            old,
            new,
        });
    }

    fn root(&mut self, old: Side<'_>, new: Side<'_>) -> Vec<Line> {
        if old.real.same_value(new.real) {
            return Vec::new();
        }
        // An empty document compares as an empty map, so that a first manifest shows its
        // sections as added rather than `- null`.
        let empty = Node::new(Value::Map(Map::new()), Span::synthetic("empty document"));
        let empty_side = Side {
            real: &empty,
            shown: &empty,
        };
        let (old, new) = match (old.real.is_null(), new.real.is_null()) {
            (true, false) if new.real.as_map().is_some() => (empty_side, new),
            (false, true) if old.real.as_map().is_some() => (old, empty_side),
            _ => (old, new),
        };
        let ctx = Ctx::default();
        match (&old.real.value, &new.real.value) {
            (Value::Map(_), Value::Map(_)) => self.map(old, new, &ctx, true),
            (Value::Seq(_), Value::Seq(_)) => self.seq(old, new, &ctx),
            _ => {
                self.record(
                    ChangeKind::Changed,
                    &ctx,
                    render::json(old.shown),
                    render::json(new.shown),
                );
                let mut out: Vec<Line> =
                    marked(render::document(old.shown), Mark::Removed).collect();
                out.extend(marked(render::document(new.shown), Mark::Added));
                out
            }
        }
    }

    /// Changes between two maps whose keys are written at `ctx.indent`.
    fn map(&mut self, old: Side<'_>, new: Side<'_>, ctx: &Ctx, top: bool) -> Vec<Line> {
        let old_entries = old.entries();
        let new_entries = new.entries();
        let old_keys: Vec<&Node> = old_entries.iter().map(|(k, _)| *k).collect();
        let new_keys: Vec<&Node> = new_entries.iter().map(|(k, _)| *k).collect();
        let mut out = Vec::new();
        for slot in key_order(&old_keys, &new_keys, top) {
            let key = match slot {
                Slot::Both(_, n) | Slot::NewOnly(n) => new_keys[n],
                Slot::OldOnly(o) => old_keys[o],
            };
            let name = render::key_text(key);
            let mut child = ctx.at(escape(&name));
            if top {
                child.section = Some(name);
            }
            match slot {
                Slot::Both(o, n) => {
                    out.extend(self.entry(key, old_entries[o].1, new_entries[n].1, &child));
                }
                Slot::OldOnly(o) => {
                    let value = old_entries[o].1.shown;
                    self.record(ChangeKind::Removed, &child, render::json(value), Json::Null);
                    out.extend(marked(render::entry(key, value, ctx.indent), Mark::Removed));
                }
                Slot::NewOnly(n) => {
                    let value = new_entries[n].1.shown;
                    self.record(ChangeKind::Added, &child, Json::Null, render::json(value));
                    out.extend(marked(render::entry(key, value, ctx.indent), Mark::Added));
                }
            }
        }
        out
    }

    /// Changes of the value under `key` (written at `ctx.indent`), present in both maps.
    fn entry(&mut self, key: &Node, old: Side<'_>, new: Side<'_>, ctx: &Ctx) -> Vec<Line> {
        if old.real.same_value(new.real) {
            return Vec::new();
        }
        let nested = match (&old.real.value, &new.real.value) {
            (Value::Map(_), Value::Map(_)) => self.map(old, new, &ctx.indented(), false),
            // go-yaml does not indent a sequence inside a mapping.
            (Value::Seq(_), Value::Seq(_)) => self.seq(old, new, ctx),
            _ => {
                self.record(
                    ChangeKind::Changed,
                    ctx,
                    render::json(old.shown),
                    render::json(new.shown),
                );
                let mut out: Vec<Line> =
                    marked(render::entry(key, old.shown, ctx.indent), Mark::Removed).collect();
                out.extend(marked(
                    render::entry(key, new.shown, ctx.indent),
                    Mark::Added,
                ));
                return out;
            }
        };
        if nested.is_empty() {
            return nested;
        }
        let mut out: Vec<Line> = marked(render::header(key, ctx.indent), Mark::Context).collect();
        out.extend(nested);
        out
    }

    /// Changes between two arrays whose items are written at `ctx.indent`.
    fn seq(&mut self, old: Side<'_>, new: Side<'_>, ctx: &Ctx) -> Vec<Line> {
        let old_items = old.items();
        let new_items = new.items();
        for key in IDENTITY_KEYS {
            if let (Some(old_ids), Some(new_ids)) =
                (identities(&old_items, key), identities(&new_items, key))
            {
                return self.matched_seq(&old_items, &new_items, &old_ids, &new_ids, key, ctx);
            }
        }
        self.plain_seq(&old_items, &new_items, ctx)
    }

    /// The context of an item matched by `key`: `name=web` in paths (its position when its
    /// identity is redacted), and the instance group it is.
    fn item_ctx(&self, ctx: &Ctx, key: &str, item: Side<'_>, index: usize) -> Ctx {
        let id = item.get(key).filter(|id| id.real.same_value(id.shown));
        let Some(text) = id.and_then(|id| id.real.scalar_text()) else {
            return ctx.at(index.to_string());
        };
        let mut item_ctx = ctx.at(format!("{}={}", escape(key), escape(&text)));
        if key == "name" && ctx.path.len() == 1 && ctx.section.as_deref() == Some("instance_groups")
        {
            item_ctx.instance_group = Some(text);
        }
        item_ctx
    }

    /// `- name: web`, for an item matched by `key`.
    fn identity_line(key: &str, item: Side<'_>, indent: usize) -> Vec<String> {
        let key_node = Node::string(key, item.shown.span.clone());
        match item.get(key) {
            Some(id) => render::identity(&key_node, id.shown, indent),
            None => render::item(item.shown, indent),
        }
    }

    /// Arrays of maps matched by identity: items only in one array are added or removed
    /// whole, matched ones are compared under their identity line, and matched ones off
    /// the longest common subsequence are moved.
    fn matched_seq(
        &mut self,
        old: &[Side<'_>],
        new: &[Side<'_>],
        old_ids: &[String],
        new_ids: &[String],
        key: &str,
        ctx: &Ctx,
    ) -> Vec<Line> {
        let old_index: BTreeMap<&str, usize> = old_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        let new_index: BTreeMap<&str, usize> = new_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        let old_of_new: Vec<Option<usize>> = new_ids
            .iter()
            .map(|id| old_index.get(id.as_str()).copied())
            .collect();
        let new_of_old: Vec<Option<usize>> = old_ids
            .iter()
            .map(|id| new_index.get(id.as_str()).copied())
            .collect();
        let anchors = lcs::increasing(&old_of_new);

        let mut pieces = Vec::new();
        let (mut old_next, mut new_next) = (0, 0);
        for anchor in anchors.iter().copied().map(Some).chain([None]) {
            let (old_end, new_end) = anchor.unwrap_or((old.len(), new.len()));
            let mut out = Vec::new();
            for o in old_next..old_end {
                if new_of_old[o].is_some() {
                    // Moved: the change is filed at its new position.
                    out.extend(marked(
                        Self::identity_line(key, old[o], ctx.indent),
                        Mark::Removed,
                    ));
                } else {
                    let item_ctx = self.item_ctx(ctx, key, old[o], o);
                    self.record(
                        ChangeKind::Removed,
                        &item_ctx,
                        render::json(old[o].shown),
                        Json::Null,
                    );
                    out.extend(marked(
                        render::item(old[o].shown, ctx.indent),
                        Mark::Removed,
                    ));
                }
            }
            for n in new_next..new_end {
                let item_ctx = self.item_ctx(ctx, key, new[n], n);
                if let Some(o) = old_of_new[n] {
                    self.record(ChangeKind::Moved, &item_ctx, json!(o), json!(n));
                    out.extend(marked(
                        Self::identity_line(key, new[n], ctx.indent),
                        Mark::Added,
                    ));
                    out.extend(self.map(old[o], new[n], &item_ctx.indented(), false));
                } else {
                    self.record(
                        ChangeKind::Added,
                        &item_ctx,
                        Json::Null,
                        render::json(new[n].shown),
                    );
                    out.extend(marked(render::item(new[n].shown, ctx.indent), Mark::Added));
                }
            }
            pieces.push(Piece::Changed(out));
            if let Some((o, n)) = anchor {
                let item_ctx = self.item_ctx(ctx, key, new[n], n);
                let nested = self.map(old[o], new[n], &item_ctx.indented(), false);
                let identity = Self::identity_line(key, new[n], ctx.indent);
                if nested.is_empty() {
                    pieces.push(Piece::Unchanged(identity));
                } else {
                    let mut out: Vec<Line> = marked(identity, Mark::Context).collect();
                    out.extend(nested);
                    pieces.push(Piece::Changed(out));
                }
                old_next = o + 1;
                new_next = n + 1;
            }
        }
        with_neighbours(pieces)
    }

    /// Other arrays: whole items compared, those off the longest common subsequence
    /// removed and added (so a reordering shows).
    fn plain_seq(&mut self, old: &[Side<'_>], new: &[Side<'_>], ctx: &Ctx) -> Vec<Line> {
        let anchors = lcs::common(old.len(), new.len(), |i, j| {
            old[i].real.same_value(new[j].real)
        });
        let mut pieces = Vec::new();
        let (mut old_next, mut new_next) = (0, 0);
        for anchor in anchors.iter().copied().map(Some).chain([None]) {
            let (old_end, new_end) = anchor.unwrap_or((old.len(), new.len()));
            let mut out = Vec::new();
            for (o, item) in old.iter().enumerate().take(old_end).skip(old_next) {
                self.record(
                    ChangeKind::Removed,
                    &ctx.at(o.to_string()),
                    render::json(item.shown),
                    Json::Null,
                );
                out.extend(marked(render::item(item.shown, ctx.indent), Mark::Removed));
            }
            for (n, item) in new.iter().enumerate().take(new_end).skip(new_next) {
                self.record(
                    ChangeKind::Added,
                    &ctx.at(n.to_string()),
                    Json::Null,
                    render::json(item.shown),
                );
                out.extend(marked(render::item(item.shown, ctx.indent), Mark::Added));
            }
            pieces.push(Piece::Changed(out));
            if let Some((o, n)) = anchor {
                // Only one-line items serve as neighbours; a whole unchanged map would
                // bury the change.
                let lines = render::item(new[n].shown, ctx.indent);
                if lines.len() == 1 {
                    pieces.push(Piece::Unchanged(lines));
                }
                old_next = o + 1;
                new_next = n + 1;
            }
        }
        with_neighbours(pieces)
    }
}
