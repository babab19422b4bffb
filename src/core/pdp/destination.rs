//! Where a tool call goes, normalised so that one URL has one spelling, and the
//! patterns a ToolGrant's `destinations` are written in.
//!
//! The parser is deliberately small and strict. A decision point sits in front
//! of servers that each parse URLs their own way; wherever two parsers could
//! disagree about which host or path a string names, [`Destination::parse`]
//! refuses the string instead of guessing: user information (`a@b`), backslashes,
//! control characters and whitespace, non-ASCII, percent-encoded `/`, `\`, `.`
//! and `%`, `..` above the root, `..;` (a path parameter on a dot segment, which
//! Java servers strip), hosts ending in a number that are not plain dotted-quad
//! IPv4 (`0x7f.1`, `2130706433`), and hosts with an empty label or a trailing
//! dot. Everything else has exactly one normal form: lower-case scheme and host,
//! no default port, percent-encoded unreserved characters decoded and the hex
//! of the others upper-cased, `.` and `..` resolved (RFC 3986 5.2.4). Query and
//! fragment never take part in matching; the query is kept apart.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest destination accepted, in bytes.
pub const MAX_DESTINATION_LEN: usize = 8 * 1024;

/// Scheme of a destination: only HTTP and HTTPS are tool destinations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    /// The port a URL of this scheme means when it names none.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// Why a destination (or a pattern's URL) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    #[error("empty destination")]
    Empty,
    #[error("destination longer than {MAX_DESTINATION_LEN} bytes")]
    TooLong,
    #[error("not an absolute URL: expected scheme://host/path")]
    NotAbsolute,
    #[error("scheme {0:?} is not supported: only http and https")]
    UnsupportedScheme(String),
    #[error("user information before the host (user@host) is refused: it hides which host is meant")]
    UserInfo,
    #[error("the URL names no host")]
    EmptyHost,
    #[error("invalid host: {0}")]
    InvalidHost(&'static str),
    #[error("invalid port: {0}")]
    InvalidPort(&'static str),
    #[error("backslashes are refused: servers disagree on whether they separate path segments")]
    Backslash,
    #[error("control characters and whitespace are refused")]
    ControlOrWhitespace,
    #[error("non-ASCII characters are refused: percent-encode the path, write hosts in their xn-- form")]
    NonAscii,
    #[error("invalid character {0:?}: percent-encode it")]
    InvalidCharacter(char),
    #[error("a % must be followed by two hex digits")]
    MalformedPercent,
    #[error("{0} in the path is refused: an encoded '/', '\\', '.' or '%' means different things to different servers")]
    EncodedDelimiter(&'static str),
    #[error("'..' climbs above the root of the path")]
    AboveRoot,
    #[error("a '.' or '..' segment with a ';' parameter is refused: some servers strip the parameter and climb")]
    DotSegmentParameter,
}

/// A normalised absolute http(s) URL: what a tool call goes to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    scheme: Scheme,
    host: String,
    port: Option<u16>,
    path: String,
    query: Option<String>,
}

impl Destination {
    /// Parses and normalises an absolute http(s) URL; see the module documentation for what is refused.
    pub fn parse(input: &str) -> Result<Destination, DestinationError> {
        if input.is_empty() {
            return Err(DestinationError::Empty);
        }
        if input.len() > MAX_DESTINATION_LEN {
            return Err(DestinationError::TooLong);
        }
        check_characters(input)?;
        // Byte scans throughout: every delimiter is ASCII, so each split falls on a character boundary.
        let colon = position(input, b':').ok_or(DestinationError::NotAbsolute)?;
        let (scheme, rest) = split_at(input, colon);
        let rest = rest.strip_prefix("://").ok_or(DestinationError::NotAbsolute)?;
        let scheme = parse_scheme(scheme)?;
        let authority_end = rest.bytes().position(|b| matches!(b, b'/' | b'?' | b'#')).unwrap_or(rest.len());
        let (authority, tail) = split_at(rest, authority_end);
        let (host, port) = parse_authority(authority)?;
        let before_fragment = position(tail, b'#').map_or(tail, |i| split_at(tail, i).0);
        let (raw_path, query) = match position(before_fragment, b'?') {
            Some(i) => {
                let (path, query) = split_at(before_fragment, i);
                (path, Some(query.get(1..).unwrap_or_default().to_string()))
            }
            None => (before_fragment, None),
        };
        let path = normalize_path(raw_path)?;
        let port = port.filter(|p| *p != scheme.default_port());
        Ok(Destination { scheme, host, port, path, query })
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// Lower-case host name, dotted-quad IPv4, or IPv6 in brackets (`[::1]`).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, unless it is the scheme's default.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The normalised path, always starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The query as sent (without `?`); it takes no part in matching.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }
}

/// `scheme://host[:port]/path`, without the query (which may carry secrets).
impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        f.write_str(&self.path)
    }
}

/// Index of the first `byte` in `s`.
fn position(s: &str, byte: u8) -> Option<usize> {
    s.bytes().position(|b| b == byte)
}

/// `s` split before index `i`; `(s, "")` if `i` is not a character boundary (never, for ASCII delimiters).
fn split_at(s: &str, i: usize) -> (&str, &str) {
    s.split_at_checked(i).unwrap_or((s, ""))
}

fn check_characters(input: &str) -> Result<(), DestinationError> {
    for b in input.bytes() {
        if !b.is_ascii() {
            return Err(DestinationError::NonAscii);
        }
        if b == b'\\' {
            return Err(DestinationError::Backslash);
        }
        if b.is_ascii_control() || b == b' ' {
            return Err(DestinationError::ControlOrWhitespace);
        }
    }
    Ok(())
}

fn parse_scheme(scheme: &str) -> Result<Scheme, DestinationError> {
    let mut chars = scheme.chars();
    let well_formed = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !well_formed {
        return Err(DestinationError::NotAbsolute);
    }
    if scheme.eq_ignore_ascii_case("https") {
        Ok(Scheme::Https)
    } else if scheme.eq_ignore_ascii_case("http") {
        Ok(Scheme::Http)
    } else {
        Err(DestinationError::UnsupportedScheme(scheme.to_ascii_lowercase()))
    }
}

/// `host[:port]` or `[v6][:port]`: the normalised host and the port, if any.
fn parse_authority(authority: &str) -> Result<(String, Option<u16>), DestinationError> {
    if position(authority, b'@').is_some() {
        return Err(DestinationError::UserInfo);
    }
    if authority.is_empty() {
        return Err(DestinationError::EmptyHost);
    }
    if let Some(bracketed) = authority.strip_prefix('[') {
        let (inside, after) =
            bracketed.split_once(']').ok_or(DestinationError::InvalidHost("unclosed '[' of an IPv6 address"))?;
        let ip: Ipv6Addr = inside.parse().map_err(|_| DestinationError::InvalidHost("not an IPv6 address"))?;
        let port = match after {
            "" => None,
            _ => {
                let port = after.strip_prefix(':').ok_or(DestinationError::InvalidHost("text after ']'"))?;
                Some(parse_port(port)?)
            }
        };
        return Ok((format!("[{ip}]"), port));
    }
    let (host, port) = match position(authority, b':') {
        Some(i) => {
            let (host, port) = split_at(authority, i);
            (host, Some(parse_port(port.get(1..).unwrap_or_default())?))
        }
        None => (authority, None),
    };
    Ok((normalize_host(host)?, port))
}

fn parse_port(port: &str) -> Result<u16, DestinationError> {
    if port.is_empty() {
        return Err(DestinationError::InvalidPort("empty"));
    }
    if port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DestinationError::InvalidPort("not a number between 1 and 65535"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(DestinationError::InvalidPort("not a number between 1 and 65535")),
        Ok(p) => Ok(p),
    }
}

/// A lower-case DNS name or a dotted-quad IPv4 address.
fn normalize_host(host: &str) -> Result<String, DestinationError> {
    if host.is_empty() {
        return Err(DestinationError::EmptyHost);
    }
    if host.len() > 253 {
        return Err(DestinationError::InvalidHost("longer than 253 characters"));
    }
    if host.ends_with('.') {
        return Err(DestinationError::InvalidHost("trailing dot: write the name without it"));
    }
    let mut label_len = 0usize;
    let mut last_label = 0usize;
    for (i, b) in host.bytes().enumerate() {
        match b {
            b'.' => {
                if label_len == 0 {
                    return Err(DestinationError::InvalidHost("empty label"));
                }
                label_len = 0;
                last_label = i + 1;
            }
            b'%' => return Err(DestinationError::InvalidHost("percent-encoding in a host")),
            _ if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' => {
                label_len += 1;
                if label_len > 63 {
                    return Err(DestinationError::InvalidHost("label longer than 63 characters"));
                }
            }
            _ => return Err(DestinationError::InvalidCharacter(char::from(b))),
        }
    }
    let mut normalized = host.to_string();
    normalized.make_ascii_lowercase();
    // WHATWG URL parsers read a host ending in a number as an IPv4 address in any of several forms
    // (`0x7f.1`, `127.1`, `2130706433`); only the one canonical form is accepted.
    let last = normalized.get(last_label..).unwrap_or_default();
    let numeric = last.bytes().all(|b| b.is_ascii_digit())
        || last.strip_prefix("0x").is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()));
    if numeric {
        let canonical = normalized.parse::<Ipv4Addr>().is_ok_and(|ip| ip.to_string() == normalized);
        if !canonical {
            return Err(DestinationError::InvalidHost("ends in a number but is not a dotted-quad IPv4 address"));
        }
    }
    Ok(normalized)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Characters allowed unencoded in a path: RFC 3986 `pchar` and `/`, except `%` (handled apart).
fn is_path_char(b: u8) -> bool {
    is_unreserved(b)
        || matches!(b, b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=')
        || matches!(b, b':' | b'@' | b'/')
}

const UPPER_HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Percent-decoding of unreserved characters, upper-case hex elsewhere, then dot segments.
fn normalize_path(raw: &str) -> Result<String, DestinationError> {
    if raw.is_empty() {
        return Ok("/".to_string());
    }
    if let Some(b) = raw.bytes().find(|b| !is_path_char(*b) && *b != b'%') {
        return Err(DestinationError::InvalidCharacter(char::from(b)));
    }
    if !raw.contains('%') {
        return remove_dot_segments(raw.to_string());
    }
    let mut decoded = String::with_capacity(raw.len());
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = bytes.next().and_then(hex_value);
            let lo = bytes.next().and_then(hex_value);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(DestinationError::MalformedPercent);
            };
            let v = (hi << 4) | lo;
            match v {
                b'/' => return Err(DestinationError::EncodedDelimiter("%2F")),
                b'\\' => return Err(DestinationError::EncodedDelimiter("%5C")),
                b'.' => return Err(DestinationError::EncodedDelimiter("%2E")),
                b'%' => return Err(DestinationError::EncodedDelimiter("%25")),
                _ if is_unreserved(v) => decoded.push(char::from(v)),
                _ => {
                    decoded.push('%');
                    for nibble in [v >> 4, v & 0xf] {
                        decoded.push(char::from(UPPER_HEX.get(usize::from(nibble)).copied().unwrap_or(b'0')));
                    }
                }
            }
        } else if is_path_char(b) {
            decoded.push(char::from(b));
        } else {
            return Err(DestinationError::InvalidCharacter(char::from(b)));
        }
    }
    remove_dot_segments(decoded)
}

/// Whether a segment is `.` or `..`, or one of them with a `;` parameter.
fn is_dot_segment(segment: &str) -> bool {
    let name = segment.split_once(';').map_or(segment, |(name, _)| name);
    name == "." || name == ".."
}

/// Whether a segment of `path` is a dot segment ([`is_dot_segment`]), in one byte scan.
fn has_dot_segment(path: &str) -> bool {
    let bytes = path.as_bytes();
    let ends_segment = |i: usize| matches!(bytes.get(i), None | Some(b'/' | b';'));
    bytes.iter().enumerate().any(|(i, b)| {
        *b == b'.'
            && (i == 0 || bytes.get(i - 1) == Some(&b'/'))
            && (ends_segment(i + 1) || (bytes.get(i + 1) == Some(&b'.') && ends_segment(i + 2)))
    })
}

/// RFC 3986 5.2.4 on an absolute path; climbing above the root is an error rather than clamped.
fn remove_dot_segments(path: String) -> Result<String, DestinationError> {
    if !has_dot_segment(&path) {
        return Ok(path);
    }
    let Some(relative) = path.strip_prefix('/') else {
        // An authority always ends at '/', '?' or '#', so a non-empty path starts with '/'.
        return Err(DestinationError::NotAbsolute);
    };
    let segments: Vec<&str> = relative.split('/').collect();
    let count = segments.len();
    let mut out: Vec<&str> = Vec::with_capacity(count);
    for (i, segment) in segments.into_iter().enumerate() {
        let last = i + 1 == count;
        if segment.contains(';') && is_dot_segment(segment) {
            return Err(DestinationError::DotSegmentParameter);
        }
        match segment {
            "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(DestinationError::AboveRoot);
                }
            }
            _ => {
                out.push(segment);
                continue;
            }
        }
        // `/a/.` and `/a/b/..` keep their trailing slash: they name a directory.
        if last {
            out.push("");
        }
    }
    let mut normalized = String::with_capacity(path.len());
    for segment in out {
        normalized.push('/');
        normalized.push_str(segment);
    }
    if normalized.is_empty() {
        normalized.push('/');
    }
    Ok(normalized)
}

/// Why a destination pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("empty destination pattern")]
    Empty,
    #[error("'*' is only allowed as the whole first label of a host pattern without scheme (*.example.com)")]
    Wildcard,
    #[error("a destination pattern matches scheme, host, port and path: remove the query or fragment")]
    QueryOrFragment,
    #[error("a host pattern has no path: write a URL prefix such as https://host/path/ instead")]
    HostWithPath,
    #[error("*. must be followed by a host name, not an IP address")]
    WildcardAddress,
    #[error(transparent)]
    Url(#[from] DestinationError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PatternKind {
    /// Scheme, host and port exact; path prefix on a segment boundary.
    Prefix { scheme: Scheme, host: String, port: Option<u16>, path: String },
    /// HTTPS to exactly this host, any path.
    Host { host: String, port: Option<u16> },
    /// HTTPS to one more label in front of `suffix` (which starts with `.`), any path.
    Subdomain { suffix: String, port: Option<u16> },
}

/// One entry of a ToolGrant's `destinations`.
///
/// * a URL prefix, `https://crm.internal/api/`: scheme, host and port exact (default port dropped), and a
///   path that starts with the pattern's path on a segment boundary: `/api/` matches `/api/` and `/api/x`;
///   `/api` matches `/api`, `/api/` and `/api/x`, never `/apix`;
/// * a host, `crm.internal`, or a host glob, `*.example.com` (exactly one more label: `a.example.com`, not
///   `example.com` nor `a.b.example.com`), optionally with a port: HTTPS only, any path. Plain HTTP is
///   granted only by a URL prefix written with `http://`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationPattern {
    kind: PatternKind,
}

impl DestinationPattern {
    pub fn parse(input: &str) -> Result<DestinationPattern, PatternError> {
        if input.is_empty() {
            return Err(PatternError::Empty);
        }
        let kind = if input.contains("://") {
            if input.contains('*') {
                return Err(PatternError::Wildcard);
            }
            if input.contains(['?', '#']) {
                return Err(PatternError::QueryOrFragment);
            }
            let d = Destination::parse(input)?;
            PatternKind::Prefix { scheme: d.scheme, host: d.host, port: d.port, path: d.path }
        } else {
            if input.contains(['/', '?', '#']) {
                return Err(PatternError::HostWithPath);
            }
            let (glob, host) = match input.strip_prefix("*.") {
                Some(rest) => (true, rest),
                None => (false, input),
            };
            if host.contains('*') {
                return Err(PatternError::Wildcard);
            }
            let d = Destination::parse(&format!("https://{host}/"))?;
            if glob {
                if d.host.starts_with('[') || d.host.parse::<Ipv4Addr>().is_ok() {
                    return Err(PatternError::WildcardAddress);
                }
                PatternKind::Subdomain { suffix: format!(".{}", d.host), port: d.port }
            } else {
                PatternKind::Host { host: d.host, port: d.port }
            }
        };
        Ok(DestinationPattern { kind })
    }

    pub fn matches(&self, d: &Destination) -> bool {
        match &self.kind {
            PatternKind::Prefix { scheme, host, port, path } => {
                d.scheme == *scheme && d.host == *host && d.port == *port && path_has_prefix(&d.path, path)
            }
            PatternKind::Host { host, port } => d.scheme == Scheme::Https && d.port == *port && d.host == *host,
            PatternKind::Subdomain { suffix, port } => {
                d.scheme == Scheme::Https
                    && d.port == *port
                    && d.host
                        .strip_suffix(suffix.as_str())
                        .is_some_and(|label| !label.is_empty() && !label.contains('.') && !label.starts_with('['))
            }
        }
    }
}

/// The pattern in its normalised form (what it matches): `https://crm.internal/api/`, `crm.internal:8443`,
/// `*.example.com`. Not kept as written, to keep a grant's memory small.
impl fmt::Display for DestinationPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let port = |f: &mut fmt::Formatter<'_>, port: &Option<u16>| match port {
            Some(p) => write!(f, ":{p}"),
            None => Ok(()),
        };
        match &self.kind {
            PatternKind::Prefix { scheme, host, port: p, path } => {
                write!(f, "{}://{host}", scheme.as_str())?;
                port(f, p)?;
                f.write_str(path)
            }
            PatternKind::Host { host, port: p } => {
                f.write_str(host)?;
                port(f, p)
            }
            PatternKind::Subdomain { suffix, port: p } => {
                write!(f, "*{suffix}")?;
                port(f, p)
            }
        }
    }
}

/// Whether `path` lies under `prefix`, on a segment boundary.
fn path_has_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(s: &str) -> Destination {
        match Destination::parse(s) {
            Ok(d) => d,
            Err(e) => panic!("{s:?} refused: {e}"),
        }
    }

    #[test]
    fn normalises_to_one_spelling() {
        let cases = [
            ("https://crm.internal/api/x", "https://crm.internal/api/x"),
            ("HTTPS://CRM.Internal/api/x", "https://crm.internal/api/x"),
            ("https://crm.internal:443/api/", "https://crm.internal/api/"),
            ("http://crm.internal:80/", "http://crm.internal/"),
            ("http://crm.internal:443/", "http://crm.internal:443/"),
            ("https://crm.internal:8443/a", "https://crm.internal:8443/a"),
            ("https://crm.internal:08443/a", "https://crm.internal:8443/a"),
            ("https://crm.internal", "https://crm.internal/"),
            ("https://crm.internal?q=1", "https://crm.internal/"),
            ("https://crm.internal#frag", "https://crm.internal/"),
            ("https://crm.internal/a/./b/../c", "https://crm.internal/a/c"),
            ("https://crm.internal/a/b/..", "https://crm.internal/a/"),
            ("https://crm.internal/a/.", "https://crm.internal/a/"),
            ("https://crm.internal/a/../", "https://crm.internal/"),
            ("https://crm.internal/./", "https://crm.internal/"),
            ("https://crm.internal/api/../admin/", "https://crm.internal/admin/"),
            ("https://crm.internal//a//b/", "https://crm.internal//a//b/"),
            ("https://crm.internal/%41%7e%2d%5F%30", "https://crm.internal/A~-_0"),
            ("https://crm.internal/a%3ab%c3%a9", "https://crm.internal/a%3Ab%C3%A9"),
            ("https://crm.internal/a%20b", "https://crm.internal/a%20b"),
            ("https://crm.internal/x;y=1/@me:1", "https://crm.internal/x;y=1/@me:1"),
            ("https://crm.internal/..a/a../...", "https://crm.internal/..a/a../..."),
            ("https://[::1]:8443/x", "https://[::1]:8443/x"),
            ("https://[0:0::1]/x", "https://[::1]/x"),
            ("https://[2001:DB8::1]:443/", "https://[2001:db8::1]/"),
            ("https://10.0.0.1/x", "https://10.0.0.1/x"),
            ("https://evil.net/https://crm.internal/api/", "https://evil.net/https://crm.internal/api/"),
            ("https://a_b.internal/", "https://a_b.internal/"),
        ];
        for (input, want) in cases {
            assert_eq!(parsed(input).to_string(), want, "{input}");
        }
        let d = parsed("https://crm.internal/api?q=1&r=%2f#f");
        assert_eq!((d.scheme(), d.host(), d.port(), d.path()), (Scheme::Https, "crm.internal", None, "/api"));
        assert_eq!(d.query(), Some("q=1&r=%2f"), "the query is kept apart, as sent");
        assert_eq!(parsed("http://h:8080/").port(), Some(8080));
    }

    #[test]
    fn refuses_what_parsers_disagree_on() {
        use DestinationError as E;
        let cases: &[(&str, DestinationError)] = &[
            ("", E::Empty),
            ("crm.internal/api", E::NotAbsolute),
            ("//crm.internal/api", E::NotAbsolute),
            ("https:/crm.internal/api", E::NotAbsolute),
            ("1http://crm.internal/", E::NotAbsolute),
            ("ftp://crm.internal/", E::UnsupportedScheme("ftp".into())),
            ("https://crm.internal@evil.net/api/", E::UserInfo),
            ("https://evil.net@crm.internal/api/", E::UserInfo),
            ("https://@crm.internal/", E::UserInfo),
            ("https://user:pw@crm.internal/", E::UserInfo),
            ("https:///api", E::EmptyHost),
            ("https://", E::EmptyHost),
            ("https://:443/", E::EmptyHost),
            ("https://crm.internal\\@evil.net/", E::Backslash),
            ("https://crm.internal/a\\..\\admin", E::Backslash),
            ("https://crm.internal/a b", E::ControlOrWhitespace),
            ("https://crm.internal/a\tb", E::ControlOrWhitespace),
            ("https://crm.internal/a\nb", E::ControlOrWhitespace),
            (" https://crm.internal/", E::ControlOrWhitespace),
            ("https://crm.internal/\u{7f}", E::ControlOrWhitespace),
            ("https://bücher.example/", E::NonAscii),
            ("https://crm.internal/é", E::NonAscii),
            ("https://crm.internal/api/%2e%2e/admin", E::EncodedDelimiter("%2E")),
            ("https://crm.internal/api/%2E./admin", E::EncodedDelimiter("%2E")),
            ("https://crm.internal/api%2fadmin", E::EncodedDelimiter("%2F")),
            ("https://crm.internal/api%5cadmin", E::EncodedDelimiter("%5C")),
            ("https://crm.internal/api%252e", E::EncodedDelimiter("%25")),
            ("https://crm.internal/a%2", E::MalformedPercent),
            ("https://crm.internal/a%zz", E::MalformedPercent),
            ("https://crm.internal/a%", E::MalformedPercent),
            ("https://crm.internal/..", E::AboveRoot),
            ("https://crm.internal/a/../../b", E::AboveRoot),
            ("https://crm.internal/api/..;/admin", E::DotSegmentParameter),
            ("https://crm.internal/api/.;x=1/admin", E::DotSegmentParameter),
            ("https://crm.internal/a<b", E::InvalidCharacter('<')),
            ("https://crm.internal/a\"b", E::InvalidCharacter('"')),
            ("https://crm.internal/a|b", E::InvalidCharacter('|')),
            ("https://crm.internal/a{b}", E::InvalidCharacter('{')),
            ("https://crm.internal/a[0]", E::InvalidCharacter('[')),
            ("https://crm.internal/a^b", E::InvalidCharacter('^')),
            ("https://crm.internal/a`b", E::InvalidCharacter('`')),
            ("https://crm.inter*nal/", E::InvalidCharacter('*')),
            ("https://crm.internal:/", E::InvalidPort("empty")),
            ("https://crm.internal:0/", E::InvalidPort("not a number between 1 and 65535")),
            ("https://crm.internal:65536/", E::InvalidPort("not a number between 1 and 65535")),
            ("https://crm.internal:+443/", E::InvalidPort("not a number between 1 and 65535")),
            ("https://crm.internal:443:1/", E::InvalidPort("not a number between 1 and 65535")),
            ("https://crm.internal./", E::InvalidHost("trailing dot: write the name without it")),
            ("https://crm..internal/", E::InvalidHost("empty label")),
            ("https://.crm.internal/", E::InvalidHost("empty label")),
            ("https://crm%2einternal/", E::InvalidHost("percent-encoding in a host")),
            ("https://[::1/", E::InvalidHost("unclosed '[' of an IPv6 address")),
            ("https://[not-v6]/", E::InvalidHost("not an IPv6 address")),
            ("https://[::1]x/", E::InvalidHost("text after ']'")),
            ("https://[fe80::1%25eth0]/", E::InvalidHost("not an IPv6 address")),
        ];
        for (input, want) in cases {
            assert_eq!(Destination::parse(input).as_ref(), Err(want), "{input:?}");
        }
        let numeric = E::InvalidHost("ends in a number but is not a dotted-quad IPv4 address");
        for host in ["2130706433", "127.1", "0x7f.0.0.1", "127.0.0.01", "1.2.3.256", "a.0x10", "example.123"] {
            assert_eq!(Destination::parse(&format!("https://{host}/")), Err(numeric.clone()), "{host}");
        }
        assert!(Destination::parse(&format!("https://h/{}", "a".repeat(MAX_DESTINATION_LEN))).is_err());
        assert!(Destination::parse(&format!("https://{}.example/", "a".repeat(64))).is_err());
    }

    #[test]
    fn the_dot_segment_scan_agrees_with_splitting() {
        let paths = [
            "/", "/a", "/.", "/..", "/...", "/.a", "/a.", "/..a", "/a/./b", "/a/../b", "/a/.;x/b", "/a/..;x", "/a/b.",
            "/a/.b/", "/a/x./", "/;./", "/.;", "//.", "/a/..../", "/%2E",
        ];
        for path in paths {
            assert_eq!(has_dot_segment(path), path.split('/').any(is_dot_segment), "{path}");
        }
    }

    fn pattern(s: &str) -> DestinationPattern {
        match DestinationPattern::parse(s) {
            Ok(p) => p,
            Err(e) => panic!("pattern {s:?} refused: {e}"),
        }
    }

    fn matches(p: &str, d: &str) -> bool {
        pattern(p).matches(&parsed(d))
    }

    #[test]
    fn url_prefixes_match_on_segment_boundaries() {
        let cases = [
            ("https://crm.internal/api/", "https://crm.internal/api/", true),
            ("https://crm.internal/api/", "https://crm.internal/api/x", true),
            ("https://crm.internal/api/", "https://crm.internal/api/x/y?q=1", true),
            ("https://crm.internal/api/", "HTTPS://CRM.INTERNAL:443/api/x", true),
            ("https://crm.internal/api/", "https://crm.internal/api/a/../b", true),
            ("https://crm.internal/api/", "https://crm.internal/api/%78", true),
            ("https://crm.internal/api/", "https://crm.internal/api", false),
            ("https://crm.internal/api/", "https://crm.internal/apix", false),
            ("https://crm.internal/api", "https://crm.internal/api", true),
            ("https://crm.internal/api", "https://crm.internal/api/", true),
            ("https://crm.internal/api", "https://crm.internal/api/x", true),
            ("https://crm.internal/api", "https://crm.internal/apix", false),
            ("https://crm.internal/api", "https://crm.internal/ap", false),
            ("https://crm.internal", "https://crm.internal/anything", true),
            ("https://crm.internal/", "https://crm.internal/", true),
            ("https://CRM.internal:443/api/", "https://crm.internal/api/x", true),
            ("https://crm.internal:8443/api/", "https://crm.internal:8443/api/x", true),
            ("https://crm.internal:8443/api/", "https://crm.internal/api/x", false),
            ("http://crm.internal/api/", "http://crm.internal/api/x", true),
            ("http://crm.internal/api/", "https://crm.internal/api/x", false),
            ("https://[::1]:8443/", "https://[0::1]:8443/x", true),
        ];
        for (p, d, want) in cases {
            assert_eq!(matches(p, d), want, "{p} vs {d}");
        }
    }

    #[test]
    fn host_patterns_mean_https_to_that_host_or_one_more_label() {
        let cases = [
            ("crm.internal", "https://crm.internal/", true),
            ("crm.internal", "https://crm.internal/any/path?q", true),
            ("crm.internal", "https://CRM.Internal:443/x", true),
            ("crm.internal", "http://crm.internal/", false),
            ("crm.internal", "https://crm.internal:8443/", false),
            ("crm.internal", "https://a.crm.internal/", false),
            ("crm.internal:8443", "https://crm.internal:8443/x", true),
            ("crm.internal:8443", "https://crm.internal/x", false),
            ("*.example.com", "https://a.example.com/", true),
            ("*.example.com", "https://A.Example.COM/x/y", true),
            ("*.example.com", "https://example.com/", false),
            ("*.example.com", "https://a.b.example.com/", false),
            ("*.example.com", "http://a.example.com/", false),
            ("*.example.com", "https://a.example.com:8443/", false),
            ("*.example.com", "https://example.com.evil.net/", false),
            ("*.example.com", "https://evilexample.com/", false),
            ("*.example.com", "https://a.evilexample.com/", false),
            ("*.example.com", "https://a.example.com.evil.net/", false),
            ("*.EXAMPLE.com", "https://a.example.com/", true),
        ];
        for (p, d, want) in cases {
            assert_eq!(matches(p, d), want, "{p} vs {d}");
        }
    }

    #[test]
    fn attacks_do_not_match() {
        let prefix = pattern("https://crm.internal/api/");
        let glob = pattern("*.example.com");
        let attacks = [
            "https://crm.internal.evil.net/api/",
            "https://evil.net/https://crm.internal/api/",
            "https://crm.internal@evil.net/api/",
            "https://evil.net@crm.internal/api/",
            "https://crm.internal/api/../admin/",
            "https://crm.internal/api/%2e%2e/admin",
            "https://crm.internal/api/..;/admin/",
            "https://crm.internal/apix",
            "http://crm.internal/api/",
            "https://crm.internal:8443/api/",
            "https://example.com.evil.net/",
            "https://evilexample.com/",
            "https://evil.net/.example.com",
            "https://evil.net\\.example.com/",
            "https://evil.net#.example.com",
            "https://evil.net?.example.com",
            "https://a.example.com@evil.net/",
        ];
        for attack in attacks {
            if let Ok(d) = Destination::parse(attack) {
                assert!(!prefix.matches(&d), "{attack} matched {prefix}");
                assert!(!glob.matches(&d), "{attack} matched {glob}");
            }
        }
        // The userinfo and encoded-dot forms are refused outright, not just unmatched.
        for refused in [
            "https://crm.internal@evil.net/api/",
            "https://evil.net@crm.internal/api/",
            "https://crm.internal/api/%2e%2e/admin",
        ] {
            assert!(Destination::parse(refused).is_err(), "{refused}");
        }
        assert_eq!(parsed("https://crm.internal/api/../admin/").path(), "/admin/");
    }

    #[test]
    fn invalid_patterns_are_refused() {
        use PatternError as P;
        let cases: &[(&str, PatternError)] = &[
            ("", P::Empty),
            ("https://*.example.com/", P::Wildcard),
            ("https://crm.internal/api/*", P::Wildcard),
            ("*", P::Wildcard),
            ("*example.com", P::Wildcard),
            ("a.*.example.com", P::Wildcard),
            ("*.*.example.com", P::Wildcard),
            ("example.*", P::Wildcard),
            ("https://crm.internal/api?x=1", P::QueryOrFragment),
            ("https://crm.internal/api#x", P::QueryOrFragment),
            ("crm.internal/api", P::HostWithPath),
            ("crm.internal?x", P::HostWithPath),
            ("*.10.0.0.1", P::WildcardAddress),
            ("*.[::1]", P::WildcardAddress),
            ("user@crm.internal", P::Url(DestinationError::UserInfo)),
            ("ftp://crm.internal/", P::Url(DestinationError::UnsupportedScheme("ftp".into()))),
            ("https://crm.internal/a/../../", P::Url(DestinationError::AboveRoot)),
            ("*.", P::Url(DestinationError::EmptyHost)),
            ("crm.internal.", P::Url(DestinationError::InvalidHost("trailing dot: write the name without it"))),
        ];
        for (input, want) in cases {
            assert_eq!(DestinationPattern::parse(input).as_ref(), Err(want), "{input:?}");
        }
        assert_eq!(pattern("*.example.com").to_string(), "*.example.com");
        assert_eq!(pattern("https://crm.internal/api/").to_string(), "https://crm.internal/api/");
    }
}

/// Property: a pattern never matches a destination on another host (or scheme, or port).
#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    /// Host labels, some of them tricky: upper case, numeric, hex, underscores, empty.
    fn label() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => prop_oneof![Just("crm"), Just("internal"), Just("example"), Just("com"), Just("evil"), Just("net"), Just("a")],
            3 => prop_oneof![Just("CRM"), Just("Example"), Just("EVIL"), Just("a_b"), Just("x-y"), Just("xn--bcher-kva")],
            1 => prop_oneof![Just("0x7f"), Just("127"), Just("1"), Just(""), Just("%2e")],
        ]
        .prop_map(str::to_string)
    }

    fn host() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => (prop::collection::vec(label(), 1..4), prop::bool::weighted(0.1)).prop_map(|(labels, dot)| {
                let mut h = labels.join(".");
                if dot {
                    h.push('.');
                }
                h
            }),
            1 => prop_oneof![
                Just("10.0.0.1"),
                Just("127.0.0.1"),
                Just("127.1"),
                Just("2130706433"),
                Just("[::1]"),
                Just("[0:0::1]"),
                Just("[2001:DB8::1]"),
                Just("[::ffff:10.0.0.1]"),
            ]
            .prop_map(str::to_string),
        ]
    }

    /// `:port` or nothing, including default, zero-padded and invalid ports.
    fn port() -> impl Strategy<Value = String> {
        prop_oneof![
            12 => Just(""),
            2 => Just(":8443"),
            1 => Just(":443"),
            1 => Just(":80"),
            1 => Just(":8443"),
            1 => Just(":08443"),
            1 => Just(":0"),
            1 => Just(":65536"),
            1 => Just(":"),
            1 => Just(":443:1"),
        ]
        .prop_map(str::to_string)
    }

    fn scheme() -> impl Strategy<Value = String> {
        prop_oneof![6 => Just("https"), 2 => Just("http"), 1 => Just("HTTPS"), 1 => Just("Http"), 1 => Just("ftp")]
            .prop_map(str::to_string)
    }

    fn path() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(""),
            Just("/"),
            Just("/api"),
            Just("/api/"),
            Just("/api/x"),
            Just("/apix"),
            Just("/a/../api/"),
            Just("/api/../admin/"),
            Just("/api/%2e%2e/admin"),
            Just("/api/..;/admin"),
            Just("/%61pi/x"),
            Just("/api%2fx"),
            Just("/https://crm.internal/api/"),
            Just("/@crm.internal/"),
            Just("/.example.com"),
        ]
        .prop_map(str::to_string)
    }

    /// A pattern: a URL prefix, a host or a `*.` glob, with its host written as `host`.
    fn pattern_with(host: String) -> impl Strategy<Value = String> {
        (0..3u8, scheme(), port(), path()).prop_map(move |(kind, scheme, port, path)| match kind {
            0 => format!("{scheme}://{host}{port}{path}"),
            1 => format!("{host}{port}"),
            _ => format!("*.{host}{port}"),
        })
    }

    /// A destination whose host is derived from the pattern's host `h`, in ways that should and should not
    /// match, or is unrelated.
    fn destination_near(h: String) -> impl Strategy<Value = String> {
        let hosts = prop_oneof![
            Just(h.clone()),
            Just(h.clone()),
            Just(format!("b.{h}")),
            Just(h.to_ascii_uppercase()),
            Just(format!("a.{h}")),
            Just(format!("A.b.{h}")),
            Just(format!("{h}.evil.net")),
            Just(format!("a.{h}.evil.net")),
            Just(format!("evil{h}")),
            Just(format!("{h}.")),
            Just(format!("{h}@evil.net")),
            Just(format!("evil.net@{h}")),
            Just(format!("a.{h}@evil.net")),
            Just(format!("evil.net%2f{h}")),
            Just(format!("evil.net#.{h}")),
            Just(format!("evil.net?.{h}")),
            Just(format!("evil.net/.{h}")),
            host(),
        ];
        (scheme(), hosts, port(), path(), prop_oneof![Just(""), Just("?q=@evil.net"), Just("#@evil.net")])
            .prop_map(|(scheme, host, port, path, tail)| format!("{scheme}://{host}{port}{path}{tail}"))
    }

    /// The simplest reading of an accepted URL, independent of the parser: scheme, host (lower case,
    /// IPv6 canonical), and effective port.
    fn naive(url: &str) -> (String, String, u16) {
        let (scheme, rest) = url.split_once("://").expect("accepted URLs have ://");
        let scheme = scheme.to_ascii_lowercase();
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (inside, after) = v6.split_once(']').expect("closed bracket");
            (format!("[{}]", inside.parse::<Ipv6Addr>().expect("IPv6")), after.strip_prefix(':'))
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h.to_ascii_lowercase(), Some(p)),
                None => (authority.to_ascii_lowercase(), None),
            }
        };
        let default = if scheme == "https" { 443 } else { 80 };
        let port = port.map_or(default, |p| p.parse::<u16>().expect("accepted port"));
        (scheme, host, port)
    }

    /// A destination written from the pattern's own text, with something appended.
    fn destination_from(p: String) -> impl Strategy<Value = String> {
        let written = if p.contains("://") {
            p
        } else if let Some(suffix) = p.strip_prefix("*.") {
            format!("https://a.{suffix}")
        } else {
            format!("https://{p}")
        };
        prop_oneof![
            Just(""),
            Just("/x"),
            Just("x"),
            Just("/../x"),
            Just("/..;/x"),
            Just("@evil.net"),
            Just("@evil.net/"),
            Just(".evil.net"),
            Just(".evil.net/"),
            Just(".:8443"),
            Just(":8443/"),
            Just("%2fx"),
            Just("%2e%2e/x"),
            Just("?x"),
            Just("#x"),
            Just("/%2E%2E/x"),
        ]
        .prop_map(move |extra| format!("{written}{extra}"))
    }

    fn case() -> impl Strategy<Value = (String, String)> {
        host().prop_flat_map(pattern_with).prop_flat_map(|p| {
            let h = match p.split_once("://") {
                Some((_, rest)) => rest.split(['/', ':']).next().unwrap_or_default().to_string(),
                None => p.trim_start_matches("*.").split(':').next().unwrap_or_default().to_string(),
            };
            (Just(p.clone()), prop_oneof![destination_near(h), destination_from(p)])
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// If pattern and destination are both accepted and the pattern matches, the destination goes to the
        /// pattern's host (for `*.suffix`: exactly one label in front of the suffix), with the pattern's
        /// scheme (HTTPS for host patterns) and the same effective port, read the simplest way from the
        /// strings; and the parser read the destination's host and port that way too.
        #[test]
        fn matching_never_reaches_another_host((p, d) in case()) {
            let (Ok(pattern), Ok(dest)) = (DestinationPattern::parse(&p), Destination::parse(&d)) else {
                return Ok(());
            };
            let (d_scheme, d_host, d_port) = naive(&d);
            prop_assert_eq!(dest.host(), d_host.as_str(), "parser and naive reading disagree on the host of {}", d);
            prop_assert_eq!(dest.port().unwrap_or(dest.scheme().default_port()), d_port);
            prop_assert_eq!(dest.scheme().as_str(), d_scheme.as_str());
            if !pattern.matches(&dest) {
                return Ok(());
            }
            if p.contains("://") {
                let (p_scheme, p_host, p_port) = naive(&p);
                prop_assert_eq!((&d_scheme, &d_host, d_port), (&p_scheme, &p_host, p_port), "{} matched {}", p, d);
            } else {
                let (glob, written) = match p.strip_prefix("*.") {
                    Some(rest) => (true, rest),
                    None => (false, p.as_str()),
                };
                let (_, p_host, p_port) = naive(&format!("https://{written}/"));
                prop_assert_eq!(d_scheme.as_str(), "https", "{} matched {}", p, d);
                prop_assert_eq!(d_port, p_port, "{} matched {}", p, d);
                if glob {
                    let label = d_host.strip_suffix(&format!(".{p_host}"));
                    prop_assert!(
                        label.is_some_and(|l| !l.is_empty() && !l.contains(['.', '[', ']', ':'])),
                        "{} matched {}", p, d
                    );
                } else {
                    prop_assert_eq!(&d_host, &p_host, "{} matched {}", p, d);
                }
            }
        }

        /// The other direction, so the property above is not vacuous: an accepted pattern matches the
        /// destination it names (for a glob, one label in front of its suffix).
        #[test]
        fn a_pattern_matches_what_it_names(p in host().prop_flat_map(pattern_with)) {
            let Ok(pattern) = DestinationPattern::parse(&p) else {
                return Ok(());
            };
            let named = if p.contains("://") {
                p.clone()
            } else if let Some(suffix) = p.strip_prefix("*.") {
                format!("https://Sub.{suffix}/x")
            } else {
                format!("https://{p}/x")
            };
            let dest = Destination::parse(&named);
            prop_assert!(dest.as_ref().is_ok_and(|d| pattern.matches(d)), "{} vs {}: {:?}", p, named, dest);
        }
    }
}
