//! Object uids held by the thousand: 16 bytes instead of a 36-character string.
//!
//! Kubernetes writes every uid as a canonical lowercase UUID. [`Uid`] keeps those as their 16 bytes
//! (no allocation) and anything else as text, so it compares equal to exactly the strings it was made
//! from: a canonical UUID has one spelling, and nothing else is ever turned into bytes.

use std::fmt;

#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Uid {
    Uuid([u8; 16]),
    Text(Box<str>),
}

impl Uid {
    pub fn new(s: &str) -> Uid {
        match parse_canonical(s) {
            Some(b) => Uid::Uuid(b),
            None => Uid::Text(s.into()),
        }
    }

    /// Whether this is the uid spelled `s`.
    pub fn is(&self, s: &str) -> bool {
        match self {
            Uid::Uuid(b) => parse_canonical(s).as_ref() == Some(b),
            Uid::Text(t) => **t == *s,
        }
    }
}

impl Default for Uid {
    fn default() -> Uid {
        Uid::Text("".into())
    }
}

impl From<&str> for Uid {
    fn from(s: &str) -> Uid {
        Uid::new(s)
    }
}

impl From<String> for Uid {
    fn from(s: String) -> Uid {
        Uid::new(&s)
    }
}

impl PartialEq<str> for Uid {
    fn eq(&self, s: &str) -> bool {
        self.is(s)
    }
}

impl PartialEq<&str> for Uid {
    fn eq(&self, s: &&str) -> bool {
        self.is(s)
    }
}

impl PartialEq<String> for Uid {
    fn eq(&self, s: &String) -> bool {
        self.is(s)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Uid::Text(t) => f.write_str(t),
            Uid::Uuid(b) => {
                let mut out = [0u8; 36];
                let mut i = 0;
                for (n, byte) in b.iter().enumerate() {
                    if matches!(n, 4 | 6 | 8 | 10) {
                        out[i] = b'-';
                        i += 1;
                    }
                    out[i] = HEX[usize::from(byte >> 4)];
                    out[i + 1] = HEX[usize::from(byte & 0xf)];
                    i += 2;
                }
                // Only ASCII hex digits and dashes were written.
                f.write_str(std::str::from_utf8(&out).unwrap_or_default())
            }
        }
    }
}

impl fmt::Debug for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in lowercase hex, and nothing else.
fn parse_canonical(s: &str) -> Option<[u8; 16]> {
    let s = s.as_bytes();
    if s.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    let mut n = 0;
    let mut i = 0;
    while i < 36 {
        if matches!(i, 8 | 13 | 18 | 23) {
            if s[i] != b'-' {
                return None;
            }
            i += 1;
            continue;
        }
        let hi = nibble(s[i])?;
        let lo = nibble(s[i + 1])?;
        out[n] = (hi << 4) | lo;
        n += 1;
        i += 2;
    }
    Some(out)
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_uuids_are_bytes_and_spell_the_same() {
        let s = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
        let u = Uid::new(s);
        assert!(matches!(u, Uid::Uuid(_)));
        assert_eq!(u.to_string(), s);
        assert!(u.is(s));
        assert_eq!(u, s);
        assert!(!u.is("0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0"));
        assert!(!u.is("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f1"));
        assert!(!u.is(""));
        assert_eq!(std::mem::size_of::<Uid>(), 24);
    }

    #[test]
    fn anything_else_is_kept_as_text() {
        for s in [
            "",
            "uid-bot",
            "0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0",
            "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f",
            "0f1e2d3c_4b5a-6978-8796-a5b4c3d2e1f0",
            "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1fg",
        ] {
            let u = Uid::new(s);
            assert!(matches!(u, Uid::Text(_)), "{s}");
            assert!(u.is(s));
            assert_eq!(u.to_string(), s);
        }
        assert!(!Uid::new("uid-bot").is("uid-bo"));
    }
}
