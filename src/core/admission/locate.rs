//! Where a field sits in the text it was read from, so a finding of `agentid check` points at the
//! line (and column) of the field it names instead of the start of its document. Pure.
//!
//! Field paths are the ones admission and lint write: `spec.template.spec.containers[0].env[1]`,
//! `spec.template.metadata.labels[agentid.dev/agent]` (a bracket holding anything but a number is a map
//! key). A field that is not written (a missing `serviceAccountName`) is located at its nearest written
//! ancestor; a mapping value at its key, a sequence item at the item.

use std::collections::{HashMap, HashSet};

use saphyr_parser::{Event, Parser};

/// 1-based line and column (columns count characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// Splits `a.b[0].c[agentid.dev/agent]` into segments. Never fails: text it cannot read is a key.
pub fn parse_path(path: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut key = String::new();
    let mut chars = path.chars();
    let flush = |key: &mut String, out: &mut Vec<Segment>| {
        if !key.is_empty() {
            out.push(Segment::Key(std::mem::take(key)));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '.' => flush(&mut key, &mut out),
            '[' => {
                flush(&mut key, &mut out);
                let mut inner = String::new();
                for c in chars.by_ref() {
                    if c == ']' {
                        break;
                    }
                    inner.push(c);
                }
                match inner.parse::<usize>() {
                    Ok(i) => out.push(Segment::Index(i)),
                    Err(_) => out.push(Segment::Key(inner)),
                }
            }
            c => key.push(c),
        }
    }
    flush(&mut key, &mut out);
    out
}

/// The positions of every node of one YAML (or JSON) document.
#[derive(Debug, Default, Clone)]
pub struct Locator {
    nodes: HashMap<Vec<Segment>, Position>,
    /// Line offset added to every position (the document's first line in its file, minus one).
    offset: usize,
}

enum Frame {
    /// `key` is the key whose value comes next (None while a key is expected).
    Map {
        key: Option<(Segment, Position)>,
    },
    Seq {
        next: usize,
    },
}

impl Locator {
    /// Reads `text` (one document, or a stream whose first document is wanted), whose first line is
    /// line `first_line` of its file. Text the parser refuses yields the nodes read before the error.
    pub fn new(text: &str, first_line: usize) -> Locator {
        Locator::read(text, first_line, None)
    }

    /// Like [`Locator::new`], keeping only the nodes on the way to `wanted` (prefix + path, as
    /// [`Locator::find`] takes them): a large document (a List of thousands of objects) costs no more
    /// memory than the fields asked for.
    pub fn for_paths<'a>(
        text: &str,
        first_line: usize,
        wanted: impl IntoIterator<Item = (&'a [Segment], &'a str)>,
    ) -> Locator {
        let mut keep: HashSet<Vec<Segment>> = HashSet::new();
        for (prefix, path) in wanted {
            let mut full: Vec<Segment> = prefix.to_vec();
            full.extend(parse_path(path));
            while keep.insert(full.clone()) {
                if full.pop().is_none() {
                    break;
                }
            }
        }
        Locator::read(text, first_line, Some(&keep))
    }

    fn read(text: &str, first_line: usize, keep: Option<&HashSet<Vec<Segment>>>) -> Locator {
        let mut loc = Locator { nodes: HashMap::new(), offset: first_line.saturating_sub(1) };
        let mut path: Vec<Segment> = Vec::new();
        let mut stack: Vec<Frame> = Vec::new();
        // Nesting inside a complex (non-scalar) mapping key, whose nodes are not fields.
        let mut skip = 0usize;
        let mut documents = 0usize;
        for ev in Parser::new_from_str(text) {
            let Ok((ev, span)) = ev else { break };
            let pos = Position { line: span.start.line(), column: span.start.col() + 1 };
            match ev {
                Event::DocumentStart(_) => {
                    documents += 1;
                    if documents > 1 {
                        break;
                    }
                }
                Event::Scalar(value, ..) => {
                    if skip > 0 {
                        continue;
                    }
                    if let Some(Frame::Map { key: key @ None }) = stack.last_mut() {
                        *key = Some((Segment::Key(value.into_owned()), pos));
                        continue;
                    }
                    loc.enter_value(&mut stack, &mut path, pos, keep);
                    loc.leave_value(&mut stack, &mut path);
                }
                Event::Alias(_) => {
                    if skip > 0 {
                        continue;
                    }
                    if let Some(Frame::Map { key: key @ None }) = stack.last_mut() {
                        // An alias as a key: a key we cannot name.
                        *key = Some((Segment::Key(String::new()), pos));
                        continue;
                    }
                    loc.enter_value(&mut stack, &mut path, pos, keep);
                    loc.leave_value(&mut stack, &mut path);
                }
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    if skip > 0 {
                        skip += 1;
                        continue;
                    }
                    if let Some(Frame::Map { key: None }) = stack.last() {
                        // A mapping or sequence used as a key: not a field.
                        skip = 1;
                        continue;
                    }
                    loc.enter_value(&mut stack, &mut path, pos, keep);
                    stack.push(if matches!(ev, Event::MappingStart(..)) {
                        Frame::Map { key: None }
                    } else {
                        Frame::Seq { next: 0 }
                    });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    if skip > 0 {
                        skip -= 1;
                        if skip == 0
                            && let Some(Frame::Map { key }) = stack.last_mut()
                        {
                            *key = Some((Segment::Key(String::new()), pos));
                        }
                        continue;
                    }
                    stack.pop();
                    loc.leave_value(&mut stack, &mut path);
                }
                _ => {}
            }
        }
        loc
    }

    /// A value starts at `pos`: record it under its path (a mapping value at its key).
    fn enter_value(
        &mut self,
        stack: &mut [Frame],
        path: &mut Vec<Segment>,
        pos: Position,
        keep: Option<&HashSet<Vec<Segment>>>,
    ) {
        let at = match stack.last_mut() {
            None => pos,
            Some(Frame::Map { key }) => {
                let (seg, key_pos) = key.clone().unwrap_or((Segment::Key(String::new()), pos));
                path.push(seg);
                key_pos
            }
            Some(Frame::Seq { next }) => {
                path.push(Segment::Index(*next));
                *next += 1;
                pos
            }
        };
        if keep.is_none_or(|k| k.contains(path.as_slice())) {
            self.nodes.entry(path.clone()).or_insert(at);
        }
    }

    /// The value at the end of `path` is complete.
    fn leave_value(&self, stack: &mut [Frame], path: &mut Vec<Segment>) {
        match stack.last_mut() {
            None => {}
            Some(Frame::Map { key }) => {
                *key = None;
                path.pop();
            }
            Some(Frame::Seq { .. }) => {
                path.pop();
            }
        }
    }

    /// The position of `path` (segments after `prefix`, e.g. `items[3]` of a List), or of its nearest
    /// written ancestor, in file coordinates. `None` only when the document had no node at all.
    pub fn find(&self, prefix: &[Segment], path: &str) -> Option<Position> {
        let mut full: Vec<Segment> = prefix.to_vec();
        full.extend(parse_path(path));
        loop {
            if let Some(p) = self.nodes.get(&full) {
                return Some(Position { line: p.line + self.offset, column: p.column });
            }
            full.pop()?;
        }
    }

    /// Like [`Locator::find`], true only when the field itself is written (not an ancestor).
    pub fn has(&self, prefix: &[Segment], path: &str) -> bool {
        let mut full: Vec<Segment> = prefix.to_vec();
        full.extend(parse_path(path));
        self.nodes.contains_key(&full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: usize, column: usize) -> Option<Position> {
        Some(Position { line, column })
    }

    const DOC: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: d, namespace: agents}
spec:
  template:
    metadata:
      labels: {app: x, agentid.dev/agent: billing}
    spec:
      containers:
      - name: app
        image: x
        env:
        - {name: A, value: b}
        - name: DB
          valueFrom: {secretKeyRef: {name: db, key: p}}
      volumes: [{name: v, secret: {secretName: s}}]
"#;

    #[test]
    fn paths_parse_with_dotted_keys_in_brackets() {
        assert_eq!(
            parse_path("spec.containers[0].labels[agentid.dev/agent]"),
            vec![
                Segment::Key("spec".into()),
                Segment::Key("containers".into()),
                Segment::Index(0),
                Segment::Key("labels".into()),
                Segment::Key("agentid.dev/agent".into()),
            ]
        );
        assert_eq!(parse_path(""), vec![]);
        assert_eq!(parse_path("a[unclosed"), vec![Segment::Key("a".into()), Segment::Key("unclosed".into())]);
    }

    #[test]
    fn finds_fields_block_and_flow() {
        let l = Locator::new(DOC, 1);
        assert_eq!(l.find(&[], "spec.template.spec.containers[0].env[1]"), at(14, 11));
        assert_eq!(l.find(&[], "spec.template.spec.containers[0].env[0]"), at(13, 11));
        assert_eq!(l.find(&[], "spec.template.metadata.labels[agentid.dev/agent]"), at(7, 24));
        assert_eq!(l.find(&[], "spec.template.spec.volumes[0]"), at(16, 17));
        assert_eq!(l.find(&[], "spec.template.spec.containers[0]"), at(10, 9));
        // Not written: the nearest ancestor, here the pod spec's key.
        assert_eq!(l.find(&[], "spec.template.spec.serviceAccountName"), at(8, 5));
        assert!(!l.has(&[], "spec.template.spec.serviceAccountName"));
        assert!(l.has(&[], "spec.template.spec.containers[0].env[1]"));
        assert_eq!(l.find(&[], ""), at(1, 1));
    }

    #[test]
    fn offsets_and_list_items() {
        let list = "apiVersion: v1\nkind: List\nitems:\n- kind: Pod\n  spec:\n    serviceAccountName: default\n";
        let l = Locator::new(list, 10);
        let prefix = [Segment::Key("items".into()), Segment::Index(0)];
        assert_eq!(l.find(&prefix, "spec.serviceAccountName"), at(15, 5));
        assert_eq!(l.find(&prefix, "metadata.name"), at(13, 3));
    }

    #[test]
    fn for_paths_keeps_only_what_was_asked() {
        let l = Locator::for_paths(DOC, 1, [(&[][..], "spec.template.spec.containers[0].env[1]")]);
        assert_eq!(l.find(&[], "spec.template.spec.containers[0].env[1]"), at(14, 11));
        assert_eq!(l.find(&[], "spec.template.spec.serviceAccountName"), at(8, 5));
        assert!(!l.has(&[], "spec.template.spec.volumes[0]"));
        assert_eq!(l.nodes.len(), 8, "the root, each ancestor and the field");
    }

    #[test]
    fn json_and_odd_input_never_panic() {
        let l = Locator::new("{\n  \"spec\": {\n    \"a\": [1, {\"b\": 2}]\n  }\n}\n", 1);
        assert_eq!(l.find(&[], "spec.a[1].b"), at(3, 15));
        for text in
            ["", "a: [", "? [a, b]\n: c\nd: e\n", "a: &x {b: 1}\nc: *x\n", "- - - x", ":::", "a: b\n---\nc: d\n"]
        {
            let l = Locator::new(text, 1);
            let _ = l.find(&[], "a.b[3]");
        }
        let l = Locator::new("? [a, b]\n: c\nd: e\n", 1);
        assert_eq!(l.find(&[], "d"), at(3, 1));
        let l = Locator::new("a: b\n---\nc: d\n", 1);
        assert!(!l.has(&[], "c"));
    }
}
