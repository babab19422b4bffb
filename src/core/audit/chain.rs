//! The hash chain: each record's `prev` is the SHA-256 of the previous record's line (its canonical
//! JSON), so a record cannot be changed, removed, inserted or moved without breaking the link after it.
//! [`Chain`] is the writer's state; the shell does the I/O.

use ring::digest;

use super::record::{Event, Record, Stamp};

/// `prev` of the first record of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A SHA-256.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The hash of one record line (without its newline).
    pub fn of_line(line: &[u8]) -> Hash {
        let d = digest::digest(&digest::SHA256, line);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Hash(out)
    }

    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parses 64 lowercase hex digits.
    pub fn from_hex(s: &str) -> Option<Hash> {
        let b = s.as_bytes();
        if b.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in b.chunks_exact(2).enumerate() {
            out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Some(Hash(out))
    }

    /// Whether `s` is this hash in lowercase hex (no allocation).
    pub fn eq_hex(&self, s: &str) -> bool {
        Hash::from_hex(s).is_some_and(|h| h == *self)
    }
}

impl std::fmt::Debug for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// A writer's chain: its id, the next sequence number and the hash of the last record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub id: String,
    pub replica: String,
    /// Sequence number of the next record.
    pub next_seq: u64,
    /// Hash of the last record's line ([`GENESIS`] before the first).
    pub head: Hash,
}

impl Chain {
    /// A new chain, before its first record.
    pub fn new(id: impl Into<String>, replica: impl Into<String>) -> Self {
        Chain { id: id.into(), replica: replica.into(), next_seq: 0, head: Hash([0; 32]) }
    }

    /// `prev` of the next record.
    pub fn prev_hex(&self) -> String {
        if self.next_seq == 0 { GENESIS.to_string() } else { self.head.to_hex() }
    }

    /// Appends `event` as the next record: writes its line (canonical JSON and `\n`) to `out` and advances
    /// the chain. Returns the record's sequence number. `id` and `time` come from the shell (random id,
    /// clock).
    pub fn append(&mut self, event: Event, id: String, time: String, out: &mut Vec<u8>) -> u64 {
        let seq = self.next_seq;
        let stamp =
            Stamp { chain: self.id.clone(), seq, prev: self.prev_hex(), id, time, replica: self.replica.clone() };
        let start = out.len();
        Record::new(stamp, event).write_canonical(out);
        self.head = Hash::of_line(&out[start..]);
        out.push(b'\n');
        self.next_seq += 1;
        seq
    }

    /// Sequence number of the last record, if any.
    pub fn last_seq(&self) -> Option<u64> {
        self.next_seq.checked_sub(1)
    }
}

/// A chain id for a writer starting now: `<replica>-<unix seconds>-<4 random hex>`, lowercased and limited to
/// the characters of a Kubernetes object name (the checkpoints are named after it).
pub fn chain_id(replica: &str, unix_secs: i64, random: u16) -> String {
    let mut r: String = replica
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' })
        .take(200)
        .collect();
    let trimmed = r.trim_matches('-').len();
    if trimmed == 0 {
        r = "agentid".into();
    }
    let r = r.trim_matches('-');
    format!("{r}-{unix_secs}-{random:04x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::audit::record::Kind;

    #[test]
    fn records_link_to_the_hash_of_the_previous_line() {
        let mut c = Chain::new("c1", "r1");
        let mut out = Vec::new();
        assert_eq!(c.append(Event::new(Kind::Decision), "a".into(), "t0".into(), &mut out), 0);
        assert_eq!(c.append(Event::new(Kind::Decision), "b".into(), "t1".into(), &mut out), 1);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let first: Record = serde_json::from_str(lines[0]).unwrap();
        let second: Record = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(first.prev, GENESIS);
        assert_eq!(second.prev, Hash::of_line(lines[0].as_bytes()).to_hex());
        assert_eq!(c.head, Hash::of_line(lines[1].as_bytes()));
        assert_eq!(c.last_seq(), Some(1));
    }

    #[test]
    fn hex_round_trips_and_refuses_garbage() {
        let h = Hash::of_line(b"x");
        assert_eq!(Hash::from_hex(&h.to_hex()), Some(h));
        assert!(h.eq_hex(&h.to_hex()));
        assert_eq!(Hash::from_hex("zz"), None);
        assert_eq!(Hash::from_hex(&h.to_hex().to_uppercase()), None);
        assert_eq!(Hash::from_hex(&"é".repeat(32)), None);
    }

    #[test]
    fn chain_ids_are_object_name_safe() {
        assert_eq!(chain_id("agentid-7d9f.X_y", 1700000000, 0xab), "agentid-7d9f-x-y-1700000000-00ab");
        assert_eq!(chain_id("", 1, 1), "agentid-1-0001");
    }
}
