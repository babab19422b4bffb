//! The verifier: recomputes the chain over one or more files (a writer's rotated segments, in order;
//! several writers' files may be mixed) and checks every checkpoint. It names the first bad record of
//! each chain and what happened to it:
//!
//! * **modified**: a record whose hash is not the next record's `prev` (or that is not in canonical form);
//! * **deleted**: a gap in `seq` whose missing records never show up;
//! * **reordered**: a gap whose missing record shows up later;
//! * **inserted**: a record repeating a `seq`, or from another chain;
//! * **truncated**: a signed checkpoint covers records beyond the end of the files;
//! * **rewritten**: records re-chained after a change, caught by a checkpoint's head;
//! * **forged checkpoint**: a checkpoint whose signature does not verify, by another key, or conflicting
//!   with another for the same position.
//!
//! Streaming: memory is per chain, not per record. Call [`Verifier::add_checkpoint`] before the records.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::Serialize;

use super::chain::Hash;
use super::checkpoint::{self, Checkpoint};
use super::record::{Record, SCHEMA_VERSION};

/// What is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingKind {
    /// A line that is not an audit record of a known schema.
    Malformed,
    Modified,
    Deleted,
    Inserted,
    Reordered,
    Truncated,
    Rewritten,
    ForgedCheckpoint,
}

impl FindingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::Malformed => "malformed",
            FindingKind::Modified => "modified",
            FindingKind::Deleted => "deleted",
            FindingKind::Inserted => "inserted",
            FindingKind::Reordered => "reordered",
            FindingKind::Truncated => "truncated",
            FindingKind::Rewritten => "rewritten",
            FindingKind::ForgedCheckpoint => "forged-checkpoint",
        }
    }
}

/// A place in the input: a file and a 1-based line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    pub file: String,
    pub line: u64,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// One problem, naming the first bad record of its chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub kind: FindingKind,
    /// The bad record (or, for a checkpoint, where the checkpoint came from).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(l) = &self.location {
            write!(f, "{l}: ")?;
        }
        if let Some(s) = self.seq {
            write!(f, "seq {s}: ")?;
        }
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

/// The outcome of a verification.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub records: u64,
    pub chains: usize,
    /// Checkpoints whose head matched the recomputed chain.
    pub checkpoints_verified: u64,
    /// Checkpoints of chains (or positions) not among the files.
    pub checkpoints_not_covered: u64,
    /// Problems, in the order found; empty when intact.
    pub findings: Vec<Finding>,
    /// Things that are not tampering but limit what was proven (e.g. an incomplete last line).
    pub warnings: Vec<String>,
}

impl Report {
    pub fn intact(&self) -> bool {
        self.findings.is_empty()
    }
}

/// Options of a verification.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Accept a chain whose first record given is not seq 0 (older segments removed by retention).
    pub partial: bool,
    /// Base64 Ed25519 public key every checkpoint must be signed by.
    pub trusted_key: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    file: usize,
    line: u64,
}

struct CheckpointEntry {
    head: Hash,
    source: String,
}

#[derive(Default)]
struct ChainCheckpoints {
    key: String,
    at: BTreeMap<u64, CheckpointEntry>,
}

struct ChainState {
    first_seq: u64,
    last_seq: u64,
    head: Hash,
    last_prev: Hash,
    last_loc: Loc,
    broken: bool,
    /// A gap being diagnosed: (finding, first missing seq).
    gap: Option<(usize, u64)>,
    /// Two records claiming one seq: (finding, the earlier one's location, the later one's hash).
    twin: Option<(usize, Loc, Hash)>,
    /// Seq of the last checkpoint that matched, and where the records after it begin.
    last_checkpoint: Option<u64>,
    after_checkpoint: Option<(Loc, u64)>,
}

impl ChainState {
    fn broken_at(loc: Loc) -> Self {
        ChainState {
            first_seq: 0,
            last_seq: 0,
            head: Hash::default(),
            last_prev: Hash::default(),
            last_loc: loc,
            broken: true,
            gap: None,
            twin: None,
            last_checkpoint: None,
            after_checkpoint: None,
        }
    }
}

/// Streaming verifier; see the module documentation.
pub struct Verifier {
    options: VerifyOptions,
    files: Vec<String>,
    file_chain: Option<String>,
    /// The current file had a bad line before its first good record.
    file_broken_early: bool,
    chains: HashMap<String, ChainState>,
    checkpoints: HashMap<String, ChainCheckpoints>,
    records: u64,
    checkpoints_verified: u64,
    findings: Vec<Finding>,
    warnings: Vec<String>,
    /// Reused buffer for the canonical form of each record.
    scratch: Vec<u8>,
}

impl Verifier {
    pub fn new(options: VerifyOptions) -> Self {
        Verifier {
            options,
            files: Vec::new(),
            file_chain: None,
            file_broken_early: false,
            chains: HashMap::new(),
            checkpoints: HashMap::new(),
            records: 0,
            checkpoints_verified: 0,
            findings: Vec::new(),
            warnings: Vec::new(),
            scratch: Vec::with_capacity(1024),
        }
    }

    /// Adds a checkpoint (`source` names where it came from, e.g. `file:line` or the object's name). A
    /// checkpoint that does not verify is a finding and is not used.
    pub fn add_checkpoint(&mut self, cp: &Checkpoint, source: &str) {
        let forged = |message: String| Finding {
            kind: FindingKind::ForgedCheckpoint,
            location: None,
            chain: Some(cp.chain.clone()),
            seq: Some(cp.seq),
            message: format!("checkpoint {source}: {message}"),
        };
        let head = match checkpoint::verify(cp, self.options.trusted_key.as_deref()) {
            Ok(h) => h,
            Err(e) => {
                self.findings.push(forged(e.to_string()));
                return;
            }
        };
        let entry = self.checkpoints.entry(cp.chain.clone()).or_default();
        if entry.key.is_empty() {
            entry.key = cp.public_key.clone();
        } else if entry.key != cp.public_key {
            self.findings.push(forged("signed by another key than the chain's other checkpoints".into()));
            return;
        }
        match entry.at.get(&cp.seq) {
            Some(have) if have.head != head => {
                let msg = format!("conflicts with checkpoint {} for the same seq", have.source);
                self.findings.push(forged(msg));
            }
            Some(_) => {}
            None => {
                entry.at.insert(cp.seq, CheckpointEntry { head, source: source.to_string() });
            }
        }
    }

    /// Starts the next file; lines pushed after this are its lines.
    pub fn begin_file(&mut self, name: &str) {
        self.files.push(name.to_string());
        self.file_chain = None;
        self.file_broken_early = false;
    }

    fn loc(&self, line: u64) -> Loc {
        Loc { file: self.files.len().saturating_sub(1), line }
    }

    fn location(&self, l: Loc) -> Location {
        Location { file: self.files.get(l.file).cloned().unwrap_or_default(), line: l.line }
    }

    fn at(&self, l: Loc) -> String {
        self.location(l).to_string()
    }

    /// Records a finding and stops checking the chain's links (the first bad record is what counts).
    fn broken(&mut self, chain: Option<&str>, loc: Loc, kind: FindingKind, seq: Option<u64>, message: String) -> usize {
        self.findings.push(Finding {
            kind,
            location: Some(self.location(loc)),
            chain: chain.map(str::to_string),
            seq,
            message,
        });
        match chain {
            Some(c) => {
                self.chains.entry(c.to_string()).or_insert_with(|| ChainState::broken_at(loc)).broken = true;
            }
            None => self.file_broken_early = true,
        }
        self.findings.len() - 1
    }

    /// One line of the current file (1-based `line`, without its newline). `terminated` is false for a
    /// last line without a newline: if that one does not parse, the writer stopped mid-write, which is a
    /// warning (the line was never part of the chain), not tampering.
    pub fn push(&mut self, line: u64, bytes: &[u8], terminated: bool) {
        let loc = self.loc(line);
        let rec: Record = match serde_json::from_slice(bytes) {
            Ok(r) => r,
            Err(e) => {
                if !terminated {
                    let w = format!("{}: incomplete last line (the writer stopped mid-write?), ignored", self.at(loc));
                    self.warnings.push(w);
                } else {
                    let file_chain = self.file_chain.clone();
                    let msg = format!("not an audit record: {e}");
                    self.broken(file_chain.as_deref(), loc, FindingKind::Malformed, None, msg);
                }
                return;
            }
        };
        if rec.v != SCHEMA_VERSION {
            let msg = format!("schema version {} is not {SCHEMA_VERSION}", rec.v);
            self.broken(Some(&rec.chain), loc, FindingKind::Malformed, Some(rec.seq), msg);
            return;
        }
        let Some(prev) = Hash::from_hex(&rec.prev) else {
            let msg = "prev is not a lowercase hex SHA-256".to_string();
            self.broken(Some(&rec.chain), loc, FindingKind::Malformed, Some(rec.seq), msg);
            return;
        };
        self.records += 1;
        match self.file_chain.as_deref() {
            None => {
                self.file_chain = Some(rec.chain.clone());
                if self.file_broken_early {
                    self.chains.entry(rec.chain.clone()).or_insert_with(|| ChainState::broken_at(loc)).broken = true;
                }
            }
            Some(c) if c != rec.chain => {
                let c = c.to_string();
                let msg = format!("a record of chain {} inside a file of chain {c}", rec.chain);
                self.broken(Some(&c), loc, FindingKind::Inserted, Some(rec.seq), msg);
                return;
            }
            Some(_) => {}
        }
        self.scratch.clear();
        rec.write_canonical(&mut self.scratch);
        if self.scratch != bytes {
            let msg = "not the canonical form agentid writes: the line was edited".to_string();
            self.broken(Some(&rec.chain), loc, FindingKind::Modified, Some(rec.seq), msg);
            return;
        }
        let hash = Hash::of_line(bytes);
        let chain = rec.chain.as_str();
        let Some(st) = self.chains.get_mut(chain) else {
            self.start_chain(&rec, prev, hash, loc);
            return;
        };
        if st.broken {
            self.diagnose(&rec, prev, loc);
            return;
        }
        let (last, last_loc, last_prev) = (st.last_seq, st.last_loc, st.last_prev);
        if rec.seq == last.wrapping_add(1) && prev == st.head {
            st.last_seq = rec.seq;
            st.head = hash;
            st.last_prev = prev;
            st.last_loc = loc;
            if st.after_checkpoint.is_none() {
                st.after_checkpoint = Some((loc, rec.seq));
            }
            self.check_checkpoint(chain, rec.seq, hash, loc);
            return;
        }
        let chain = rec.chain.clone();
        if rec.seq == last.wrapping_add(1) {
            let msg = format!("its hash is not the prev of the next record ({}): it was changed", self.at(loc));
            self.broken(Some(&chain), last_loc, FindingKind::Modified, Some(last), msg);
        } else if rec.seq > last {
            let missing = last + 1;
            let range =
                if rec.seq - 1 == missing { format!("{missing}") } else { format!("{missing}..{}", rec.seq - 1) };
            let msg = format!("records seq {range} are missing before this record (after {})", self.at(last_loc));
            let f = self.broken(Some(&chain), loc, FindingKind::Deleted, Some(rec.seq), msg);
            if let Some(st) = self.chains.get_mut(&chain) {
                st.gap = Some((f, missing));
            }
        } else if rec.seq == last && prev == last_prev {
            let msg = format!("a second record with seq {} after the same record as {}", rec.seq, self.at(last_loc));
            let f = self.broken(Some(&chain), loc, FindingKind::Inserted, Some(rec.seq), msg);
            if let Some(st) = self.chains.get_mut(&chain) {
                st.twin = Some((f, last_loc, hash));
            }
        } else {
            let msg = format!("seq {} was already seen (the chain was at {last}): a copy was inserted", rec.seq);
            self.broken(Some(&chain), loc, FindingKind::Inserted, Some(rec.seq), msg);
        }
    }

    fn start_chain(&mut self, rec: &Record, prev: Hash, hash: Hash, loc: Loc) {
        let st = ChainState {
            first_seq: rec.seq,
            last_seq: rec.seq,
            head: hash,
            last_prev: prev,
            last_loc: loc,
            broken: false,
            gap: None,
            twin: None,
            last_checkpoint: None,
            after_checkpoint: Some((loc, rec.seq)),
        };
        self.chains.insert(rec.chain.clone(), st);
        if rec.seq == 0 && prev != Hash::default() {
            let msg = "the first record of a chain must have the all-zero prev".to_string();
            self.broken(Some(&rec.chain), loc, FindingKind::Modified, Some(0), msg);
            return;
        }
        if rec.seq != 0 && !self.options.partial {
            // Not marked broken: the links from here on are still checked.
            self.findings.push(Finding {
                kind: FindingKind::Deleted,
                location: Some(self.location(loc)),
                chain: Some(rec.chain.clone()),
                seq: Some(rec.seq),
                message: format!(
                    "the chain starts at seq {}: records 0..{} are missing (or their files were not given; --partial accepts this)",
                    rec.seq,
                    rec.seq - 1
                ),
            });
        }
        self.check_checkpoint(&rec.chain, rec.seq, hash, loc);
    }

    /// After the first break of a chain: say whether a gap's records turn up later (reordered rather
    /// than deleted) and which of two records claiming one seq the chain continues from.
    fn diagnose(&mut self, rec: &Record, prev: Hash, loc: Loc) {
        let here = self.at(loc);
        let Some(st) = self.chains.get_mut(&rec.chain) else { return };
        if let Some((f, earlier, later_hash)) = st.twin.take() {
            if prev == later_hash {
                let earlier_at =
                    Location { file: self.files.get(earlier.file).cloned().unwrap_or_default(), line: earlier.line };
                if let Some(finding) = self.findings.get_mut(f) {
                    finding.message = format!(
                        "this record was inserted: the next records continue from the other record with seq {} ({here} follows it)",
                        rec.seq.saturating_sub(1)
                    );
                    finding.location = Some(earlier_at);
                }
            } else if let Some(finding) = self.findings.get_mut(f) {
                finding.message = format!("{}; the chain continues from the earlier one", finding.message);
            }
        }
        if let Some((f, missing)) = st.gap
            && rec.seq == missing
        {
            st.gap = None;
            if let Some(finding) = self.findings.get_mut(f) {
                finding.kind = FindingKind::Reordered;
                finding.message = format!("record seq {missing} is out of place: it comes later, at {here}");
            }
        }
    }

    fn check_checkpoint(&mut self, chain: &str, seq: u64, hash: Hash, loc: Loc) {
        let Some(cps) = self.checkpoints.get(chain) else { return };
        let Some(cp) = cps.at.get(&seq) else { return };
        let Some(st) = self.chains.get(chain) else { return };
        if cp.head == hash {
            self.checkpoints_verified += 1;
            if let Some(st) = self.chains.get_mut(chain) {
                st.last_checkpoint = Some(seq);
                st.after_checkpoint = None;
            }
            return;
        }
        let (from_loc, from_seq) = st.after_checkpoint.unwrap_or((loc, seq));
        let since = match st.last_checkpoint {
            Some(s) => format!("after the checkpoint at seq {s}"),
            None => "from the start of the files".to_string(),
        };
        let msg = format!(
            "checkpoint {} signs another head for seq {seq} (at {}): a record in seq {from_seq}..{seq} {since} was changed and the chain recomputed",
            cp.source,
            self.at(loc)
        );
        self.broken(Some(chain), from_loc, FindingKind::Rewritten, Some(from_seq), msg);
    }

    /// Ends the verification: checkpoints beyond the end of a chain mean it was truncated.
    pub fn finish(mut self) -> Report {
        let mut not_covered = 0;
        let mut chains: Vec<&String> = self.checkpoints.keys().collect();
        chains.sort();
        let mut truncated = Vec::new();
        for chain in chains {
            let cps = &self.checkpoints[chain];
            let Some(st) = self.chains.get(chain) else {
                not_covered += cps.at.len() as u64;
                continue;
            };
            not_covered += cps.at.range(..st.first_seq).count() as u64;
            if st.broken {
                continue;
            }
            if let Some((&seq, cp)) = cps.at.iter().next_back()
                && seq > st.last_seq
            {
                truncated.push(Finding {
                    kind: FindingKind::Truncated,
                    location: Some(Location {
                        file: self.files.get(st.last_loc.file).cloned().unwrap_or_default(),
                        line: st.last_loc.line + 1,
                    }),
                    chain: Some(chain.clone()),
                    seq: Some(st.last_seq + 1),
                    message: format!(
                        "the records end at seq {} but checkpoint {} covers up to seq {seq}: records {}..{seq} were removed",
                        st.last_seq,
                        cp.source,
                        st.last_seq + 1
                    ),
                });
            }
        }
        self.findings.extend(truncated);
        for (chain, st) in &self.chains {
            if !st.broken && self.checkpoints.get(chain).is_none_or(|c| c.at.range(st.first_seq..).next().is_none()) {
                self.warnings.push(format!(
                    "chain {chain}: no checkpoint covers these records; truncation of its end cannot be detected"
                ));
            }
        }
        self.warnings.sort();
        Report {
            records: self.records,
            chains: self.chains.len(),
            checkpoints_verified: self.checkpoints_verified,
            checkpoints_not_covered: not_covered,
            findings: self.findings,
            warnings: self.warnings,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::audit::chain::Chain;
    use crate::core::audit::checkpoint::{public_key_b64, sign, tests::key};
    use crate::core::audit::record::{Event, Kind};

    /// `n` records of one chain, as lines.
    fn lines(chain: &str, n: u64) -> (Vec<Vec<u8>>, Chain) {
        let mut c = Chain::new(chain, "r1");
        let mut out = Vec::new();
        for i in 0..n {
            let mut e = Event::new(Kind::Decision);
            e.tool = Some(format!("tool-{i}"));
            c.append(e, format!("id{i}"), format!("2026-01-01T00:00:{i:02}.000000Z"), &mut out);
        }
        let lines = out.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec).collect();
        (lines, c)
    }

    fn verify(files: &[(&str, &[Vec<u8>])], cps: &[Checkpoint], options: VerifyOptions) -> Report {
        let mut v = Verifier::new(options);
        for (i, cp) in cps.iter().enumerate() {
            v.add_checkpoint(cp, &format!("cps:{}", i + 1));
        }
        for (name, lines) in files {
            v.begin_file(name);
            for (i, l) in lines.iter().enumerate() {
                v.push(i as u64 + 1, l, true);
            }
        }
        v.finish()
    }

    fn first(r: &Report) -> &Finding {
        r.findings.first().unwrap_or_else(|| panic!("no finding: {r:?}"))
    }

    fn at(f: &Finding) -> (FindingKind, String, Option<u64>) {
        (f.kind, f.location.as_ref().map(|l| l.to_string()).unwrap_or_default(), f.seq)
    }

    #[test]
    fn an_intact_chain_verifies_with_its_checkpoints() {
        let k = key();
        let (l, c) = lines("c1", 10);
        let cp = sign(&k, "c1", 9, &c.head, "t");
        let mid = sign(&k, "c1", 4, &Hash::of_line(&l[4]), "t");
        let r = verify(&[("a", &l)], &[cp, mid], VerifyOptions::default());
        assert!(r.intact(), "{r:?}");
        assert_eq!((r.records, r.chains, r.checkpoints_verified), (10, 1, 2));
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    }

    #[test]
    fn rotated_segments_continue_the_chain() {
        let (l, _) = lines("c1", 10);
        let r = verify(&[("s1", &l[..4]), ("s2", &l[4..])], &[], VerifyOptions::default());
        assert!(r.intact(), "{r:?}");
        // Segments in the wrong order: the first one given starts mid-chain, and seq 0 comes back later.
        let r = verify(&[("s2", &l[4..]), ("s1", &l[..4])], &[], VerifyOptions::default());
        assert_eq!(at(first(&r)), (FindingKind::Deleted, "s2:1".into(), Some(4)));
    }

    #[test]
    fn a_modified_record_is_named() {
        let (mut l, _) = lines("c1", 6);
        let text = String::from_utf8(l[2].clone()).unwrap().replace("tool-2", "tool-X");
        l[2] = text.into_bytes();
        let r = verify(&[("a", &l)], &[], VerifyOptions::default());
        assert_eq!(at(first(&r)), (FindingKind::Modified, "a:3".into(), Some(2)));
        assert_eq!(r.findings.len(), 1);
    }

    #[test]
    fn a_hand_edited_line_is_named_even_without_a_successor() {
        let (mut l, _) = lines("c1", 3);
        let text = String::from_utf8(l[2].clone()).unwrap().replace("\"kind\"", " \"kind\"");
        l[2] = text.into_bytes();
        let r = verify(&[("a", &l)], &[], VerifyOptions::default());
        assert_eq!(at(first(&r)), (FindingKind::Modified, "a:3".into(), Some(2)));
    }

    #[test]
    fn a_deleted_record_is_named() {
        let (mut l, _) = lines("c1", 6);
        l.remove(3);
        let r = verify(&[("a", &l)], &[], VerifyOptions::default());
        let f = first(&r);
        assert_eq!(at(f), (FindingKind::Deleted, "a:4".into(), Some(4)));
        assert!(f.message.contains("seq 3 are missing"), "{}", f.message);
    }

    #[test]
    fn reordered_records_are_named() {
        let (mut l, _) = lines("c1", 6);
        l.swap(2, 3);
        let r = verify(&[("a", &l)], &[], VerifyOptions::default());
        let f = first(&r);
        assert_eq!(at(f), (FindingKind::Reordered, "a:3".into(), Some(3)));
        assert!(f.message.contains("a:4"), "{}", f.message);
    }

    #[test]
    fn inserted_records_are_named() {
        let (l, _) = lines("c1", 6);
        // A copy of an earlier record.
        let mut copy = l.clone();
        copy.insert(4, l[1].clone());
        let r = verify(&[("a", &copy)], &[], VerifyOptions::default());
        assert_eq!(at(first(&r)), (FindingKind::Inserted, "a:5".into(), Some(1)));

        // A well-formed forgery chained onto record 2, taking seq 3.
        let mut forger = Chain::new("c1", "r1");
        forger.next_seq = 3;
        forger.head = Hash::of_line(&l[2]);
        let mut out = Vec::new();
        forger.append(Event::new(Kind::TaskTokenIssued), "forged".into(), "t".into(), &mut out);
        out.pop();
        let mut forged = l.clone();
        forged.insert(3, out.clone());
        let r = verify(&[("a", &forged)], &[], VerifyOptions::default());
        let f = first(&r);
        assert_eq!(at(f), (FindingKind::Inserted, "a:4".into(), Some(3)), "{}", f.message);

        // The same forgery after the original record 3 (claiming seq 3 too): the later one is named.
        let mut after = l.clone();
        after.insert(4, out);
        let r = verify(&[("a", &after)], &[], VerifyOptions::default());
        assert_eq!(at(first(&r)), (FindingKind::Inserted, "a:5".into(), Some(3)));

        // A record of another chain.
        let (other, _) = lines("c2", 3);
        let mut mixed = l.clone();
        mixed.insert(2, other[1].clone());
        let r = verify(&[("a", &mixed)], &[], VerifyOptions::default());
        assert_eq!(at(first(&r)), (FindingKind::Inserted, "a:3".into(), Some(1)));
    }

    #[test]
    fn truncation_is_detected_against_the_last_checkpoint() {
        let k = key();
        let (l, c) = lines("c1", 10);
        let cp = sign(&k, "c1", 9, &c.head, "t");
        let r = verify(&[("a", &l[..7])], std::slice::from_ref(&cp), VerifyOptions::default());
        let f = first(&r);
        assert_eq!(at(f), (FindingKind::Truncated, "a:8".into(), Some(7)));
        assert!(f.message.contains("7..9"), "{}", f.message);
        // Without checkpoints a truncated chain looks intact, and the report says so.
        let r = verify(&[("a", &l[..7])], &[], VerifyOptions::default());
        assert!(r.intact());
        assert!(r.warnings[0].contains("truncation"), "{:?}", r.warnings);
    }

    #[test]
    fn a_rewritten_and_rechained_trail_is_caught_by_its_checkpoint() {
        let k = key();
        let (l, c) = lines("c1", 10);
        let cps = [sign(&k, "c1", 3, &Hash::of_line(&l[3]), "t"), sign(&k, "c1", 9, &c.head, "t")];
        // Rewrite record 5 and re-chain everything after it.
        let mut forger = Chain::new("c1", "r1");
        let mut out = Vec::new();
        for i in 0..10u64 {
            let mut e = Event::new(Kind::Decision);
            e.tool = Some(if i == 5 { "tool-X".into() } else { format!("tool-{i}") });
            forger.append(e, format!("id{i}"), format!("2026-01-01T00:00:{i:02}.000000Z"), &mut out);
        }
        let rewritten: Vec<Vec<u8>> =
            out.split(|b| *b == b'\n').filter(|x| !x.is_empty()).map(<[u8]>::to_vec).collect();
        let r = verify(&[("a", &rewritten)], &cps, VerifyOptions::default());
        let f = first(&r);
        assert_eq!(at(f), (FindingKind::Rewritten, "a:5".into(), Some(4)), "{}", f.message);
        assert!(f.message.contains("4..9"), "{}", f.message);
        assert_eq!(r.checkpoints_verified, 1);
    }

    #[test]
    fn forged_checkpoints_are_findings() {
        let (k, other) = (key(), key());
        let (l, c) = lines("c1", 5);
        let mut cp = sign(&k, "c1", 4, &c.head, "t");
        cp.seq = 9;
        let r = verify(&[("a", &l)], &[cp], VerifyOptions::default());
        assert_eq!(first(&r).kind, FindingKind::ForgedCheckpoint);
        assert!(first(&r).message.contains("cps:1"));

        let good = sign(&k, "c1", 4, &c.head, "t");
        let by_other = sign(&other, "c1", 2, &Hash::of_line(&l[2]), "t");
        let r = verify(&[("a", &l)], &[good.clone(), by_other.clone()], VerifyOptions::default());
        assert_eq!(at(first(&r)), (FindingKind::ForgedCheckpoint, String::new(), Some(2)));
        let trusted = VerifyOptions { trusted_key: Some(public_key_b64(&other)), partial: false };
        let r = verify(&[("a", &l)], &[good], trusted);
        assert_eq!(first(&r).kind, FindingKind::ForgedCheckpoint);
        assert!(first(&r).message.contains("another key"), "{}", first(&r).message);

        let conflicting = sign(&k, "c1", 4, &Hash::of_line(b"x"), "t");
        let r = verify(&[("a", &l)], &[sign(&k, "c1", 4, &c.head, "t"), conflicting], VerifyOptions::default());
        assert!(first(&r).message.contains("conflicts"), "{}", first(&r).message);
    }

    #[test]
    fn malformed_lines_and_torn_tails() {
        let (mut l, _) = lines("c1", 4);
        l[1] = b"{not json".to_vec();
        let r = verify(&[("a", &l)], &[], VerifyOptions::default());
        assert_eq!(at(first(&r)), (FindingKind::Malformed, "a:2".into(), None));
        assert_eq!(r.findings.len(), 1, "{r:?}");

        let (l, _) = lines("c1", 4);
        let mut v = Verifier::new(VerifyOptions::default());
        v.begin_file("a");
        for (i, x) in l.iter().enumerate() {
            v.push(i as u64 + 1, x, true);
        }
        v.push(5, b"{\"v\":1,\"cha", false);
        let r = v.finish();
        assert!(r.intact(), "{r:?}");
        assert!(r.warnings.iter().any(|w| w.contains("a:5: incomplete")), "{:?}", r.warnings);

        // Garbage of any kind never panics.
        let mut v = Verifier::new(VerifyOptions::default());
        v.begin_file("g");
        for (i, junk) in
            [&b""[..], b"null", b"[]", b"\xff\xfe", b"{\"v\":1}", b"{\"v\":2,\"chain\":\"c\"}"].iter().enumerate()
        {
            v.push(i as u64 + 1, junk, true);
        }
        assert!(!v.finish().intact());
    }

    #[test]
    fn partial_chains_and_several_writers() {
        let (l, c) = lines("c1", 8);
        let r = verify(&[("a", &l[3..])], &[], VerifyOptions::default());
        assert_eq!(at(first(&r)), (FindingKind::Deleted, "a:1".into(), Some(3)));
        let k = key();
        let cps = [sign(&k, "c1", 1, &Hash::of_line(&l[1]), "t"), sign(&k, "c1", 7, &c.head, "t")];
        let r = verify(&[("a", &l[3..])], &cps, VerifyOptions { partial: true, trusted_key: None });
        assert!(r.intact(), "{r:?}");
        assert_eq!((r.checkpoints_verified, r.checkpoints_not_covered), (1, 1));

        let (m, _) = lines("c2", 3);
        let r = verify(&[("a", &l), ("b", &m)], &cps, VerifyOptions::default());
        assert!(r.intact(), "{r:?}");
        assert_eq!(r.chains, 2);
    }
}
