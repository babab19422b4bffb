//! "What did this agent do": the records of one agent (optionally one task, since a time), merged across
//! writers into one chronological sequence, one line per event.
//!
//! Each writer's records are already in time order (the writer stamps them as it appends, never going
//! backwards), so [`Merge`] merges per-chain streams lazily; memory is one record per chain.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write;

use super::record::{Kind, Record};

/// Which records a timeline shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub namespace: String,
    pub agent: String,
    pub task: Option<String>,
    /// Only records at or after this time (RFC 3339 UTC with microseconds, as records carry it).
    pub since: Option<String>,
}

impl Filter {
    /// `NAMESPACE/NAME`.
    pub fn parse_agent(s: &str) -> Option<(String, String)> {
        let (ns, name) = s.split_once('/')?;
        (!ns.is_empty() && !name.is_empty() && !name.contains('/')).then(|| (ns.to_string(), name.to_string()))
    }

    pub fn matches(&self, r: &Record) -> bool {
        r.namespace.as_deref() == Some(self.namespace.as_str())
            && r.agent.as_deref() == Some(self.agent.as_str())
            && self.task.as_ref().is_none_or(|t| r.task.as_ref() == Some(t))
            && self.since.as_ref().is_none_or(|s| r.time.as_str() >= s.as_str())
    }
}

/// `s` safe to print on a terminal: control characters (escape sequences, newlines that would forge a
/// line) and bidirectional overrides are shown as `\u{..}` escapes. Tool names, actions and destinations
/// come from agents' own requests.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    let bad = crate::core::names::is_unsafe_in_text;
    if !s.chars().any(bad) {
        return std::borrow::Cow::Borrowed(s);
    }
    std::borrow::Cow::Owned(
        s.chars().map(|c| if bad(c) { c.escape_unicode().to_string() } else { c.to_string() }).collect(),
    )
}

/// One line of the text timeline:
/// `<time>  <kind>  <decision>  <tool> <action> <destination>  task=… grant=… reasons=… actor=… request=…`.
pub fn text_line(r: &Record) -> String {
    let line = text_line_raw(r);
    printable(&line).into_owned()
}

fn text_line_raw(r: &Record) -> String {
    let mut s = String::with_capacity(160);
    let _ = write!(s, "{}  {:<18}", r.time, r.kind.as_str());
    if let Some(d) = &r.decision {
        let _ = write!(s, "  {d}");
    }
    let call: Vec<&str> = [&r.tool, &r.action, &r.destination].into_iter().filter_map(|x| x.as_deref()).collect();
    if !call.is_empty() {
        let _ = write!(s, "  {}", call.join(" "));
    }
    for (k, v) in [("task", &r.task), ("grant", &r.grant)] {
        if let Some(v) = v {
            let _ = write!(s, "  {k}={v}");
        }
    }
    if !r.reasons.is_empty() {
        let _ = write!(s, "  reasons={}", r.reasons.join(","));
    }
    if !r.delegation.is_empty() {
        let _ = write!(s, "  via={}", r.delegation.join(">"));
    }
    for (k, v) in [("actor", &r.actor), ("request", &r.request), ("credential", &r.credential)] {
        if let Some(v) = v {
            let _ = write!(s, "  {k}={v}");
        }
    }
    let _ = write!(s, "  [{}#{}]", r.chain, r.seq);
    s
}

/// Merges streams that are each in time order into one, ordered by (time, chain, seq).
pub struct Merge<I: Iterator<Item = Record>> {
    streams: Vec<I>,
    heap: BinaryHeap<Reverse<Head>>,
}

struct Head {
    time: String,
    chain: String,
    seq: u64,
    stream: usize,
    record: Box<Record>,
}

impl<I: Iterator<Item = Record>> Merge<I> {
    pub fn new(mut streams: Vec<I>) -> Self {
        let mut heap = BinaryHeap::with_capacity(streams.len());
        for (i, s) in streams.iter_mut().enumerate() {
            if let Some(r) = s.next() {
                heap.push(Reverse(Head::new(r, i)));
            }
        }
        Merge { streams, heap }
    }
}

impl Head {
    fn new(r: Record, stream: usize) -> Self {
        Head { time: r.time.clone(), chain: r.chain.clone(), seq: r.seq, stream, record: Box::new(r) }
    }

    fn key(&self) -> (&str, &str, u64, usize) {
        (&self.time, &self.chain, self.seq, self.stream)
    }
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Head {}

impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Head {
    /// Chronological: time, then chain, then seq (then stream, for identical copies).
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

impl<I: Iterator<Item = Record>> Iterator for Merge<I> {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        let Reverse(head) = self.heap.pop()?;
        if let Some(next) = self.streams.get_mut(head.stream).and_then(Iterator::next) {
            self.heap.push(Reverse(Head::new(next, head.stream)));
        }
        Some(*head.record)
    }
}

/// Joins an agent's API calls to the task whose token made them, then applies the task and time filter.
///
/// The broker records each task token it issues with the token's credential id (`JTI=…`); the apiserver
/// names the same id on every call made with that token. A token is issued before it is used, so in a
/// chronological stream the issue record always comes first: one pass, memory one entry per token of
/// the agent. Records are fed unfiltered by task and time (the issue record may be older than `since`).
pub struct Joined<I: Iterator<Item = Record>> {
    inner: I,
    filter: Filter,
    tasks_by_credential: std::collections::HashMap<String, String>,
}

impl<I: Iterator<Item = Record>> Joined<I> {
    pub fn new(inner: I, filter: Filter) -> Self {
        Joined { inner, filter, tasks_by_credential: Default::default() }
    }
}

impl<I: Iterator<Item = Record>> Iterator for Joined<I> {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        loop {
            let mut r = self.inner.next()?;
            match r.kind {
                Kind::TaskTokenIssued => {
                    if let (Some(c), Some(t)) = (&r.credential, &r.task) {
                        self.tasks_by_credential.insert(c.clone(), t.clone());
                    }
                }
                Kind::ApiCall if r.task.is_none() => {
                    r.task = r.credential.as_ref().and_then(|c| self.tasks_by_credential.get(c)).cloned();
                }
                _ => {}
            }
            if self.filter.matches(&r) {
                return Some(r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::audit::record::{Event, Kind, Stamp};

    fn rec(chain: &str, seq: u64, time: &str, agent: &str, task: Option<&str>) -> Record {
        let mut e = Event::new(Kind::Decision);
        e.namespace = Some("agents".into());
        e.agent = Some(agent.into());
        e.task = task.map(Into::into);
        e.tool = Some("github".into());
        e.action = Some("create".into());
        e.decision = Some("allow".into());
        e.reasons = vec!["granted".into()];
        let stamp = Stamp {
            chain: chain.into(),
            seq,
            prev: String::new(),
            id: format!("{chain}{seq}"),
            time: time.into(),
            replica: "r".into(),
        };
        Record::new(stamp, e)
    }

    #[test]
    fn filters_by_agent_task_and_time() {
        let f = Filter {
            namespace: "agents".into(),
            agent: "bot".into(),
            task: Some("t1".into()),
            since: Some("2026-01-01T00:00:01.000000Z".into()),
        };
        assert!(f.matches(&rec("c", 0, "2026-01-01T00:00:02.000000Z", "bot", Some("t1"))));
        assert!(!f.matches(&rec("c", 0, "2026-01-01T00:00:00.000000Z", "bot", Some("t1"))));
        assert!(!f.matches(&rec("c", 0, "2026-01-01T00:00:02.000000Z", "other", Some("t1"))));
        assert!(!f.matches(&rec("c", 0, "2026-01-01T00:00:02.000000Z", "bot", Some("t2"))));
        assert!(!f.matches(&rec("c", 0, "2026-01-01T00:00:02.000000Z", "bot", None)));
        assert_eq!(Filter::parse_agent("agents/bot"), Some(("agents".into(), "bot".into())));
        for bad in ["bot", "/bot", "agents/", "a/b/c"] {
            assert_eq!(Filter::parse_agent(bad), None, "{bad}");
        }
    }

    #[test]
    fn merges_writers_chronologically() {
        let a = vec![rec("a", 0, "t1", "bot", None), rec("a", 1, "t4", "bot", None)];
        let b = vec![rec("b", 0, "t2", "bot", None), rec("b", 1, "t3", "bot", None), rec("b", 2, "t4", "bot", None)];
        let merged: Vec<String> =
            Merge::new(vec![a.into_iter(), b.into_iter()]).map(|r| format!("{}{}", r.chain, r.seq)).collect();
        assert_eq!(merged, ["a0", "b0", "b1", "a1", "b2"]);
    }

    #[test]
    fn api_calls_join_the_task_whose_token_made_them() {
        let mut issued = rec("a", 0, "2026-01-01T00:00:01.000000Z", "bot", Some("t1"));
        issued.kind = Kind::TaskTokenIssued;
        issued.credential = Some("JTI=1".into());
        let call = |seq: u64, time: &str, cred: Option<&str>| {
            let mut r = rec("b", seq, time, "bot", None);
            r.kind = Kind::ApiCall;
            r.credential = cred.map(Into::into);
            r
        };
        let records = vec![
            call(0, "2026-01-01T00:00:00.500000Z", Some("JTI=1")),
            issued,
            call(1, "2026-01-01T00:00:02.000000Z", Some("JTI=1")),
            call(2, "2026-01-01T00:00:03.000000Z", Some("JTI=2")),
            call(3, "2026-01-01T00:00:04.000000Z", None),
        ];
        let all = Filter { namespace: "agents".into(), agent: "bot".into(), task: None, since: None };
        let tasks: Vec<Option<String>> = Joined::new(records.clone().into_iter(), all).map(|r| r.task).collect();
        assert_eq!(tasks, [None, Some("t1".into()), Some("t1".into()), None, None]);
        // The task filter sees the joined calls; `since` later than the issue still joins.
        let t1 = Filter {
            namespace: "agents".into(),
            agent: "bot".into(),
            task: Some("t1".into()),
            since: Some("2026-01-01T00:00:01.500000Z".into()),
        };
        let seqs: Vec<(String, u64)> = Joined::new(records.into_iter(), t1).map(|r| (r.chain, r.seq)).collect();
        assert_eq!(seqs, [("b".to_string(), 1)]);
    }

    #[test]
    fn agent_supplied_text_cannot_forge_lines_or_drive_the_terminal() {
        let mut r = rec("c", 1, "2026-01-01T00:00:02.000000Z", "bot", None);
        r.tool = Some("crm\n2026-01-01T00:00:03.000000Z  decision  allow\u{1b}[2J\u{202e}".into());
        let line = text_line(&r);
        assert!(!line.contains('\n') && !line.contains('\u{1b}') && !line.contains('\u{202e}'), "{line:?}");
        assert!(line.contains("crm\\u{a}2026") && line.contains("\\u{1b}[2J"), "{line}");
        assert_eq!(printable("plain ünïcode"), "plain ünïcode");
    }

    #[test]
    fn text_lines_say_what_happened() {
        let line = text_line(&rec("c", 7, "2026-01-01T00:00:02.000000Z", "bot", Some("t1")));
        assert_eq!(
            line,
            "2026-01-01T00:00:02.000000Z  decision            allow  github create  task=t1  reasons=granted  [c#7]"
        );
    }
}
