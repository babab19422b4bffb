//! Hard-coded credential detection for the literal strings of a pod spec
//! (`env[].value`, `args`, `command`). Pure: no I/O, no clock; regexes are
//! compiled once. Nothing returned ever contains the secret itself.
//!
//! Two entry points: [`scan_value`] judges the value of a named variable (an
//! env var, or the KEY of a `KEY=VALUE` word); [`scan_text`] judges free text
//! (one `args`/`command` element, which may be a whole shell script, `--flag=value`
//! or `--flag value` pairs, JSON/YAML snippets or a multi-line PEM block).
//!
//! # Detectors (stable ids)
//!
//! - `private-key`: a `-----BEGIN [RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP ]PRIVATE KEY[ BLOCK]-----`
//!   header followed by key material (optional `Name: value` header lines, then at least
//!   20 base64 characters; literal `\n` escapes count as line breaks). A bare header is not a finding.
//! - `aws-access-key-id`: `AKIA`/`ASIA`/`ABIA`/`ACCA` + 16 of `[A-Z0-9]`, word-bounded.
//! - `github-token`: `gh[pousr]_` + 36 alphanumerics, or `github_pat_` + 82 of `[A-Za-z0-9_]`.
//! - `anthropic-api-key`: `sk-ant-api03-` / `sk-ant-admin01-` + 80 or more of `[A-Za-z0-9_-]` ending in `AA`
//!   (checked before OpenAI, so an Anthropic key is never labelled OpenAI).
//! - `openai-api-key`: `sk-proj-` / `sk-svcacct-` / `sk-admin-` + 20 or more of `[A-Za-z0-9_-]`, or the
//!   legacy `sk-` + 48 alphanumerics containing `T3BlbkFJ`.
//! - `slack-webhook-url`: `https://hooks.slack.com/(services|workflows|triggers)/` with at least three
//!   path segments.
//! - `slack-token`: `xox[abeprs]-<digits>-…` (bot, user, legacy, refresh… tokens) and app-level
//!   `xapp-<n>-…-<digits>-…`.
//! - `google-api-key`: `AIza` + 35 of `[0-9A-Za-z_-]`.
//! - `stripe-key`: `sk_` / `rk_` + `test_` / `live_` + 10–99 alphanumerics.
//! - `jwt`: three base64url segments `eyJ….eyJ….<signature>`, each at least 10 characters
//!   (unsigned tokens with an empty signature are not reported).
//! - `url-credentials`: a URL whose user-info carries a password, `scheme://user:password@host`
//!   (the user may be empty, as in `redis://:password@host`).
//! - `generic-secret`: a secret-ish variable name holding a high-entropy literal (see below).
//!
//! All but `generic-secret` are *specific* detectors: they look at the text alone, whatever the
//! variable is called. They also look inside base64: every run of 24 or more base64 characters
//! (standard or URL-safe alphabet, optional `=` padding) that decodes to UTF-8 is decoded and the
//! specific detectors run on the result, reporting the same id (a base64-wrapped PEM key is
//! `private-key`). Decoding nests twice, enough for a docker config JSON in base64 whose `auth`
//! field is itself base64.
//!
//! # `generic-secret`
//!
//! The name — [`scan_value`]'s `name`, or inside text the KEY of `KEY=VALUE`, `KEY: VALUE`,
//! `"KEY": "VALUE"`, `--flag=VALUE`, `--flag VALUE`, `-Dprop=VALUE` — is normalised (camelCase,
//! `-`, `.` become `_`; lower case; leading dashes dropped) and is secret-ish when it contains
//! `password`, `passwd`, `passphrase`, `pwd`, `secret`, `token`, `api_key`/`apikey`,
//! `access_key`/`accesskey`, `private_key`/`privatekey`, `credential` or `auth` (but not `author`
//! or `tokenizer`), or when its last segment is `key`, `keys`, `pass`, `pw` or `pat`
//! (`OPENAI_KEY`, `DB_PASS`). It is *not* secret-ish when it mentions `public`/`publishable`, or when
//! its last segment says the value is about a secret rather than the secret itself: `url`, `uri`,
//! `endpoint`, `host`, `port`, `server`, `file`, `path`, `dir`, `mount`, `audience`, `issuer`, `ttl`,
//! `expiry`/`expiration`, `timeout`, `length`, `size`, `name`, `namespace`, `id`, `type`, `mode`,
//! `enabled`, `header`, `scope`, `version`, `user`, `hash`, `image`, … (see `NAME_EXCLUDED_LAST`).
//! So `PASSWORD_FILE`, `TOKEN_AUDIENCE`, `TOKEN_URL`, `AWS_ACCESS_KEY_ID` are never generic secrets.
//!
//! The value (quotes and a `Bearer `/`Basic `/`Token ` scheme stripped) must be 8–512 bytes, have
//! no whitespace, contain a digit or both upper and lower case, not be a placeholder, e-mail
//! address, URL, file path, host name, UUID or number (below), and reach the **entropy floor**:
//! Shannon entropy of at least **3.0 bits per byte for values of 12 bytes or more**, and
//! `0.85 × log2(len)` bits (2.55 to 2.94) for values of 8 to 11 bytes, whose maximum possible entropy
//! is `log2(len)`. Values shorter than 8 bytes are never reported.
//!
//! # False-positive controls
//!
//! - Placeholders are never secrets, but a placeholder must read as one *as a whole*; a real key
//!   that merely contains a marker word or sits next to a reference is still reported:
//!   - References: `$(VAR)` (Kubernetes, balanced), `${VAR}` (shell), `{{ … }}` (templates),
//!     `<fill-in>` (a letter, then letters, digits, spaces, `_.-`), runs of three or more `*` or `.`,
//!     and `…` are removed, and what remains is judged by the same rules. `$(API_KEY)`, `${A}:${B}`,
//!     `<your-token>`, `********`, `abc...xyz` are not reported; `<secret>$(UNDEFINED)` is, since
//!     Kubernetes leaves an undefined reference as literal text. A whole value `$VAR` or `%VAR%` is
//!     a reference too.
//!   - Marker words — `xxxx`, `changeme`, `replace`, `placeholder`, `example`, `sample`, `your`,
//!     `dummy`, `redacted`, `todo`, `fixme`, any case — count only when, after removing a leading
//!     known key prefix (`sk-proj-`, `ghp_`, `AKIA`, …), the separators `-_./+=: `, the marker words
//!     and filler words (`api`, `key`, `token`, `here`, `goes`, `insert`, `secret`, …), what remains is
//!     not random key material: shorter than 8 bytes, fewer than min(8, ⌈len/2⌉) distinct bytes,
//!     lower-case letters only, or CamelCase words (every capital starts a word of 3+ letters with a
//!     vowel). So `YOUR_API_KEY_HERE`, `ChangeMe123!`, `example-token`, `sk-proj-your-api-key-goes-right-here`
//!     are placeholders; 36 random characters with `todo` somewhere inside are not.
//!   - Values with at most 3 distinct characters; values made only of letters and `_.-` (plain
//!     words, booleans, `CorrectHorseBatteryStaple`) — except those of 16+ letters that look generated
//!     (25–75 % upper case, or mixed case that does not split into words) and those whose marker word
//!     hides random letters (judged as above); numbers, dates and IP addresses (only digits and
//!     `.,:+-/_`); empty values.
//! - Specific detectors skip matches whose secret part is obviously fake: at most 3 distinct
//!   characters, a key published in AWS's documentation (exactly `AKIAIOSFODNN7EXAMPLE`,
//!   `wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY`, …), or a body that reads as a placeholder by the
//!   marker rule above (e.g. `sk_test_xxxxxxxxxxxx`, `xoxb-123-xxxxxxxxxxxxxxxx`). The jwt.io sample
//!   token (payload `"sub":"1234567890"`, `"name":"John Doe"`) is not reported.
//! - E-mail addresses, URLs without a password (`https://api.example.com/v1`), file paths
//!   (`/var/run/secrets/tokens/agent`, `config/app.yaml`, `projects/p/secrets/db/versions/3`), host
//!   names (`db.svc.cluster.local:5432`), UUIDs, AWS ARNs and ISO-8601 dates are not secrets.
//! - A URL password, references removed, must be 6 bytes or more and not a placeholder as above
//!   (`postgres:postgres`, `user:$(PW)`, `user:****` are not reported); no entropy floor applies to it.
//! - A generic finding is suppressed where a specific detector already matched (a JWT in `TOKEN=`
//!   is reported once, as `jwt`); an overlapping later specific match is dropped too (a GitHub token
//!   in `https://x-access-token:<token>@github.com` is `github-token`, not `url-credentials`).
//!
//! # Cost
//!
//! Strings shorter than 10 bytes skip the specific detectors. One pass over the bytes (a table of
//! the first two bytes of every detector's literal prefixes) picks the detectors that may match;
//! each then confirms a full prefix before running its regex. Every pass is linear in the input, so a
//! 1 MiB string is fine; the function never panics on any input.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::{Captures, Regex};

/// One credential found. Never contains the secret itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    /// stable detector id, kebab-case, e.g. "aws-access-key-id"
    pub detector: &'static str,
    /// human description, e.g. "AWS access key id"
    pub description: &'static str,
}

const fn finding(detector: &'static str, description: &'static str) -> Finding {
    Finding { detector, description }
}

const PRIVATE_KEY: Finding = finding("private-key", "private key");
const AWS_ACCESS_KEY_ID: Finding = finding("aws-access-key-id", "AWS access key id");
const GITHUB_TOKEN: Finding = finding("github-token", "GitHub token");
const ANTHROPIC_API_KEY: Finding = finding("anthropic-api-key", "Anthropic API key");
const OPENAI_API_KEY: Finding = finding("openai-api-key", "OpenAI API key");
const SLACK_WEBHOOK_URL: Finding = finding("slack-webhook-url", "Slack webhook URL");
const SLACK_TOKEN: Finding = finding("slack-token", "Slack token");
const GOOGLE_API_KEY: Finding = finding("google-api-key", "Google API key");
const STRIPE_KEY: Finding = finding("stripe-key", "Stripe API key");
const JWT: Finding = finding("jwt", "JSON Web Token");
const URL_CREDENTIALS: Finding = finding("url-credentials", "password embedded in a URL");
const GENERIC_SECRET: Finding = finding("generic-secret", "high-entropy secret in a secret-named variable");

/// Judge the value of a named variable (env var name, or the KEY of a KEY=VALUE word). `name` may be None.
///
/// Specific detectors win over `generic-secret`; a value that is itself text (`JAVA_OPTS=-Dpassword=…`)
/// is also searched for secret-named assignments.
pub fn scan_value(name: Option<&str>, value: &str) -> Option<Finding> {
    let mut found = Vec::new();
    let mut cover = Vec::new();
    scan_specific(value, BASE64_DEPTH, &mut found, &mut cover);
    if let Some(f) = first(&found) {
        return Some(f);
    }
    if name.is_some_and(name_is_secretish) && value_is_secret(value) {
        return Some(GENERIC_SECRET);
    }
    scan_pairs(value, &Cover::new(cover), &mut found);
    first(&found)
}

/// Judge free text (one args/command element, possibly a shell script like `sh -c "export TOKEN=abc...; run"`,
/// or `--api-key=...`/`--token abc` flags, or multi-line PEM). Returns each distinct detector found once, in order found.
pub fn scan_text(text: &str) -> Vec<Finding> {
    let mut found = Vec::new();
    let mut cover = Vec::new();
    scan_specific(text, BASE64_DEPTH, &mut found, &mut cover);
    scan_pairs(text, &Cover::new(cover), &mut found);
    found.sort_by_key(|&(pos, _)| pos);
    found.into_iter().map(|(_, f)| f).collect()
}

fn first(found: &[(usize, Finding)]) -> Option<Finding> {
    found.iter().min_by_key(|&&(pos, _)| pos).map(|&(_, f)| f)
}

/// Records `f` at byte offset `pos`, keeping one entry per detector (its earliest position).
fn note(out: &mut Vec<(usize, Finding)>, pos: usize, f: Finding) {
    match out.iter_mut().find(|(_, g)| g.detector == f.detector) {
        Some(slot) => slot.0 = slot.0.min(pos),
        None => out.push((pos, f)),
    }
}

// ---------------------------------------------------------------------------------------------
// Specific detectors
// ---------------------------------------------------------------------------------------------

/// How many times base64 is unwrapped.
const BASE64_DEPTH: u8 = 2;
/// Shortest base64 run worth decoding.
const BASE64_MIN_RUN: usize = 24;
/// No specific detector matches fewer bytes than this (the shortest is `url-credentials`).
const MIN_SPECIFIC_LEN: usize = 10;

struct Rule {
    finding: Finding,
    /// The regex runs only when one of these occurs (case-sensitive) in the text.
    needles: &'static [&'static str],
    /// Texts shorter than this cannot match.
    min_len: usize,
    re: Regex,
    /// Judges a match (placeholder bodies, documented examples…).
    accept: fn(&Captures<'_>) -> bool,
}

fn rule(
    finding: Finding,
    needles: &'static [&'static str],
    min_len: usize,
    pattern: &str,
    accept: fn(&Captures<'_>) -> bool,
) -> Rule {
    let re = Regex::new(pattern).unwrap_or_else(|e| panic!("detector {}: bad pattern: {e}", finding.detector));
    Rule { finding, needles, min_len, re, accept }
}

/// In priority order: a match overlapping an earlier rule's match is dropped.
static RULES: LazyLock<[Rule; 11]> = LazyLock::new(|| {
    [
        rule(
            PRIVATE_KEY,
            &["PRIVATE KEY"],
            51,
            r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----(?:[ \t\r\n]|\\[rn])*(?:[A-Za-z][A-Za-z0-9-]*:[^\r\n\\]*(?:[ \t\r\n]|\\[rn])+)*([A-Za-z0-9+/=]{20,})",
            accept_body,
        ),
        rule(
            AWS_ACCESS_KEY_ID,
            &["AKIA", "ASIA", "ABIA", "ACCA"],
            20,
            r"(?-u:\b)((?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16})(?-u:\b)",
            accept_body,
        ),
        rule(
            GITHUB_TOKEN,
            &["gh", "github_pat_"],
            40,
            r"(?-u:\b)(?:gh[pousr]_([A-Za-z0-9]{36})|github_pat_([A-Za-z0-9_]{82}))(?-u:\b)",
            accept_body,
        ),
        rule(
            ANTHROPIC_API_KEY,
            &["sk-ant-"],
            95,
            r"(?-u:\b)sk-ant-(?:api03|admin01)-([A-Za-z0-9_-]{80,}AA)",
            accept_body,
        ),
        rule(
            OPENAI_API_KEY,
            &["sk-"],
            29,
            r"(?-u:\b)sk-(?:(?:proj|svcacct|admin)-([A-Za-z0-9_-]{20,})|([A-Za-z0-9]{48})(?-u:\b))",
            accept_openai,
        ),
        rule(
            SLACK_WEBHOOK_URL,
            &["hooks.slack.com"],
            40,
            r"https?://hooks\.slack\.com/(?:services|workflows|triggers)((?:/[A-Za-z0-9_-]+){3,})",
            accept_body,
        ),
        rule(
            SLACK_TOKEN,
            &["xox", "xapp-"],
            15,
            r"(?-u:\b)(?:xox[abeprs]-([0-9]+-[0-9A-Za-z][0-9A-Za-z-]{9,})|xapp-[0-9]+-([A-Za-z0-9]+-[0-9]+-[A-Za-z0-9]{10,}))",
            accept_body,
        ),
        rule(GOOGLE_API_KEY, &["AIza"], 39, r"(?-u:\b)AIza([0-9A-Za-z_-]{35})", accept_body),
        rule(
            STRIPE_KEY,
            &["_test_", "_live_"],
            18,
            r"(?-u:\b)(?:sk|rk)_(?:test|live)_([0-9A-Za-z]{10,99})(?-u:\b)",
            accept_body,
        ),
        rule(
            JWT,
            &["eyJ"],
            38,
            r"(?-u:\b)eyJ[A-Za-z0-9_-]{10,}\.(eyJ[A-Za-z0-9_-]{10,})\.([A-Za-z0-9_-]{10,})",
            accept_jwt,
        ),
        rule(
            URL_CREDENTIALS,
            &["://"],
            MIN_SPECIFIC_LEN,
            r#"(?-u:\b)[A-Za-z][A-Za-z0-9+.-]{0,30}://([^\s/?#@:'"]*):([^\s/?#'"]+)@[A-Za-z0-9\[]"#,
            accept_url_credentials,
        ),
    ]
});

/// For each pair of bytes, the rules with a needle starting with it.
static PAIR_MASK: LazyLock<Box<[u16]>> = LazyLock::new(|| {
    let mut table = vec![0u16; 1 << 16];
    for (i, rule) in RULES.iter().enumerate() {
        for needle in rule.needles {
            let b = needle.as_bytes();
            table[usize::from(b[0]) << 8 | usize::from(b[1])] |= 1 << i;
        }
    }
    table.into_boxed_slice()
});

/// One pass over `b`: bit `i` is set when rule `i` may match (some needle's first two bytes occur).
fn rule_mask(b: &[u8]) -> u16 {
    let table = &**PAIR_MASK;
    b.windows(2).fold(0, |mask, w| mask | table[usize::from(w[0]) << 8 | usize::from(w[1])])
}

/// The secret part of a match: its first participating capture group, else the whole match.
fn body<'h>(c: &Captures<'h>) -> &'h str {
    c.iter().skip(1).flatten().next().or_else(|| c.get(0)).map_or("", |m| m.as_str())
}

fn accept_body(c: &Captures<'_>) -> bool {
    !fake_body(body(c))
}

fn accept_openai(c: &Captures<'_>) -> bool {
    match c.get(2) {
        Some(legacy) => legacy.as_str().contains("T3BlbkFJ") && !fake_body(legacy.as_str()),
        None => accept_body(c),
    }
}

fn accept_jwt(c: &Captures<'_>) -> bool {
    let (Some(payload), Some(sig)) = (c.get(1), c.get(2)) else { return false };
    !fake_body(sig.as_str()) && !is_sample_jwt_payload(payload.as_str())
}

/// The jwt.io sample token, printed in countless docs: `{"sub":"1234567890","name":"John Doe",…}`.
fn is_sample_jwt_payload(payload: &str) -> bool {
    b64_decode(payload.as_bytes()).is_some_and(|json| {
        let json = String::from_utf8_lossy(&json);
        json.contains(r#""sub":"1234567890""#) && json.contains(r#""name":"John Doe""#)
    })
}

/// The password, with every reference (`$(PW)`, `${PW}`, `<password>`, `****`) removed, must still be
/// 6 bytes or more and not a placeholder.
fn accept_url_credentials(c: &Captures<'_>) -> bool {
    c.get(2).is_some_and(|p| {
        let p = p.as_str();
        let rest = strip_references(p);
        let rest = rest.as_deref().unwrap_or(p);
        rest.len() >= 6 && !is_placeholder(rest)
    })
}

/// Obviously fake secret parts, as found in docs and templates: at most 3 distinct characters, a
/// published example key, or a body that reads as a placeholder as a whole ([`reads_as_placeholder`]).
/// A marker word that merely occurs inside random key material does not make it fake.
fn fake_body(body: &str) -> bool {
    distinct_at_most(body.as_bytes(), 3) || is_documented_example(body) || reads_as_placeholder(body)
}

/// Specific detectors over `text`; records findings in `out` and the byte ranges they cover
/// (the match, and for a PEM key its whole body up to `-----END`) in `cover`.
fn scan_specific(text: &str, depth: u8, out: &mut Vec<(usize, Finding)>, cover: &mut Vec<(usize, usize)>) {
    if text.len() < MIN_SPECIFIC_LEN {
        return;
    }
    // Accepted matches, start -> end; disjoint by construction.
    let mut spans: BTreeMap<usize, usize> = BTreeMap::new();
    let mut no_pem_end = false;
    let mask = rule_mask(text.as_bytes());
    for (i, rule) in RULES.iter().enumerate() {
        if mask & (1 << i) == 0 || text.len() < rule.min_len || !rule.needles.iter().any(|n| has(text, n)) {
            continue;
        }
        let mut at = 0;
        while at < text.len() {
            let Some(c) = rule.re.captures_at(text, at) else { break };
            let Some(m) = c.get(0) else { break };
            if m.end() <= at {
                break; // empty match: impossible with these patterns, but never loop
            }
            let mut next = m.end();
            let overlaps = spans.range(..m.end()).next_back().is_some_and(|(_, &end)| end > m.start());
            if !overlaps && (rule.accept)(&c) {
                spans.insert(m.start(), m.end());
                cover.push((m.start(), m.end()));
                note(out, m.start(), rule.finding);
                // Skip the rest of a PEM body. Once no END marker is found, none will be later either.
                if rule.finding == PRIVATE_KEY && !no_pem_end {
                    match text.get(m.end()..).and_then(|rest| rest.find("-----END")) {
                        Some(k) => {
                            cover.push((m.end(), m.end() + k));
                            next = m.end() + k;
                        }
                        None => no_pem_end = true,
                    }
                }
            }
            at = next;
        }
    }
    if depth > 0 {
        scan_base64(text, depth - 1, out, cover);
    }
}

fn is_b64_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_')
}

/// Decodes every long base64 run of `text` not already covered and runs the specific detectors on it;
/// a finding is recorded at the run's start.
fn scan_base64(text: &str, depth: u8, out: &mut Vec<(usize, Finding)>, cover: &[(usize, usize)]) {
    let b = text.as_bytes();
    let n = b.len();
    let cover = Cover::new(cover.to_vec());
    let mut i = 0;
    while i < n {
        if !is_b64_byte(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < n && is_b64_byte(b[i]) {
            i += 1;
        }
        let run = &b[start..i];
        if run.len() < BASE64_MIN_RUN || run.len() % 4 == 1 || cover.overlaps(start, i) {
            continue;
        }
        let std_alphabet = run.iter().any(|&c| c == b'+' || c == b'/');
        let url_alphabet = run.iter().any(|&c| c == b'-' || c == b'_');
        if std_alphabet && url_alphabet {
            continue;
        }
        let Some(decoded) = b64_decode(run) else { continue };
        let Ok(decoded) = std::str::from_utf8(&decoded) else { continue };
        let mut inner = Vec::new();
        scan_specific(decoded, depth, &mut inner, &mut Vec::new());
        for (_, f) in inner {
            note(out, start, f);
        }
    }
}

/// Decodes unpadded base64 (standard or URL-safe alphabet). `None` on a foreign byte or a bad length.
fn b64_decode(s: &[u8]) -> Option<Vec<u8>> {
    let s = s.strip_suffix(b"==").or_else(|| s.strip_suffix(b"=")).unwrap_or(s);
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3 + 2);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for &c in s {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Sorted, merged byte ranges; answers "does [s, e) overlap any?" in O(log n).
struct Cover(Vec<(usize, usize)>);

impl Cover {
    fn new(mut ranges: Vec<(usize, usize)>) -> Self {
        ranges.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
        for (s, e) in ranges {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        Cover(merged)
    }

    fn overlaps(&self, s: usize, e: usize) -> bool {
        let i = self.0.partition_point(|&(_, end)| end <= s);
        self.0.get(i).is_some_and(|&(start, _)| start < e)
    }
}

// ---------------------------------------------------------------------------------------------
// generic-secret: secret-named assignments in text
// ---------------------------------------------------------------------------------------------

/// Longest variable name considered.
const MAX_KEY_LEN: usize = 128;
/// Longest value judged by `generic-secret` (longer ones are blobs, left to the specific detectors).
const MAX_GENERIC_LEN: usize = 512;

fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')
}

fn is_value_terminator(b: u8) -> bool {
    b.is_ascii_whitespace() || matches!(b, b';' | b'&' | b'|' | b'`' | b'"' | b'\'' | b'<' | b'>' | b',' | b'}' | b']')
}

/// Finds `KEY=VALUE`, `KEY = VALUE`, `KEY: VALUE`, `"KEY": "VALUE"`, `--flag VALUE` in `text` and
/// records `generic-secret` for each secret-named key holding a secret-looking value outside `cover`.
fn scan_pairs(text: &str, cover: &Cover, out: &mut Vec<(usize, Finding)>) {
    let b = text.as_bytes();
    let n = b.len();
    let mut i = 0;
    while i < n {
        match b[i] {
            b'=' => {
                let mut run_end = i;
                while run_end < n && b[run_end] == b'=' {
                    run_end += 1;
                }
                // `==`, `!=`, `<=`, `>=` compare; base64 padding is `=` runs too.
                let comparison = run_end > i + 1 || (i > 0 && matches!(b[i - 1], b'!' | b'<' | b'>'));
                if !comparison {
                    judge_assignment(text, i, false, cover, out);
                }
                i = run_end;
            }
            b':' if i + 1 < n && matches!(b[i + 1], b' ' | b'\t' | b'"' | b'\'') => {
                judge_assignment(text, i, true, cover, out);
                i += 1;
            }
            b'-' if i + 1 < n
                && b[i + 1] == b'-'
                && (i == 0 || matches!(b[i - 1], b' ' | b'\t' | b'\n' | b'"' | b'\'')) =>
            {
                i = judge_flag(text, i, cover, out);
            }
            _ => i += 1,
        }
    }
}

/// `op` is the index of the `=` or `:` of a candidate assignment.
fn judge_assignment(text: &str, op: usize, colon: bool, cover: &Cover, out: &mut Vec<(usize, Finding)>) {
    let b = text.as_bytes();
    let mut j = op;
    let mut spaced = false;
    if !colon {
        while j > 0 && op - j < 4 && matches!(b[j - 1], b' ' | b'\t') {
            j -= 1;
            spaced = true;
        }
    }
    let quoted_key = j > 0 && matches!(b[j - 1], b'"' | b'\'');
    if quoted_key {
        j -= 1;
    } else if colon && op + 1 < b.len() && matches!(b[op + 1], b'"' | b'\'') {
        return; // `key:"…"` without a quoted key is not JSON
    }
    let key_end = j;
    while j > 0 && is_key_byte(b[j - 1]) {
        j -= 1;
        if key_end - j > MAX_KEY_LEN {
            return;
        }
    }
    // `$X=` is not an assignment.
    if j == key_end || (j > 0 && b[j - 1] == b'$') {
        return;
    }
    let Some(key) = text.get(j..key_end) else { return };
    if !name_is_secretish(key) {
        return;
    }
    let mut v = op + 1;
    if colon || spaced {
        while v < b.len() && matches!(b[v], b' ' | b'\t') {
            v += 1;
        }
    }
    judge_value_at(text, v, j, cover, out);
}

/// `i` is the index of `--`; returns where scanning resumes.
fn judge_flag(text: &str, i: usize, cover: &Cover, out: &mut Vec<(usize, Finding)>) -> usize {
    let b = text.as_bytes();
    let n = b.len();
    let s = i + 2;
    let mut e = s;
    while e < n && is_key_byte(b[e]) && e - s <= MAX_KEY_LEN {
        e += 1;
    }
    // `--flag=value` is handled at the `=`.
    if e == s || e >= n || !matches!(b[e], b' ' | b'\t') {
        return e.max(i + 2);
    }
    let Some(key) = text.get(s..e) else { return e };
    if !name_is_secretish(key) {
        return e;
    }
    let mut v = e;
    while v < n && matches!(b[v], b' ' | b'\t') {
        v += 1;
    }
    if v < n && b[v] != b'-' {
        judge_value_at(text, v, i, cover, out);
    }
    e
}

fn judge_value_at(text: &str, v: usize, key_pos: usize, cover: &Cover, out: &mut Vec<(usize, Finding)>) {
    let Some((vs, ve)) = read_value(text.as_bytes(), v, true) else { return };
    if cover.overlaps(vs, ve) {
        return;
    }
    if text.get(vs..ve).is_some_and(value_is_secret) {
        note(out, key_pos, GENERIC_SECRET);
    }
}

/// The value starting at `start`: quoted (`"…"`, `'…'`, `\"…\"`) or a bare word.
/// `None` when empty or longer than [`MAX_GENERIC_LEN`].
fn read_value(b: &[u8], start: usize, follow_scheme: bool) -> Option<(usize, usize)> {
    let n = b.len();
    let limit = |s: usize| n.min(s + MAX_GENERIC_LEN + 1);
    let find = |s: usize, q: u8| (s..limit(s)).find(|&k| b[k] == q);
    let (vs, ve, bare) = match *b.get(start)? {
        q @ (b'"' | b'\'') => (start + 1, find(start + 1, q)?, false),
        b'\\' if matches!(b.get(start + 1), Some(b'"' | b'\'')) => {
            let q = b[start + 1];
            let e = find(start + 2, q)?;
            let e = if e > start + 2 && b[e - 1] == b'\\' { e - 1 } else { e };
            (start + 2, e, false)
        }
        _ => {
            let end = limit(start);
            let e = (start..end).find(|&k| is_value_terminator(b[k])).unwrap_or(end);
            if e - start > MAX_GENERIC_LEN {
                return None;
            }
            (start, e, true)
        }
    };
    if vs >= ve {
        return None;
    }
    // `Authorization: Bearer <token>`: the token is the next word.
    if bare && follow_scheme && b.get(ve) == Some(&b' ') && is_auth_scheme(&b[vs..ve]) {
        return read_value(b, ve + 1, false);
    }
    Some((vs, ve))
}

fn is_auth_scheme(word: &[u8]) -> bool {
    ["bearer", "basic", "token", "bot"].iter().any(|s| word.eq_ignore_ascii_case(s.as_bytes()))
}

// ---------------------------------------------------------------------------------------------
// generic-secret: names and values
// ---------------------------------------------------------------------------------------------

const NAME_KEYWORDS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "pwd",
    "secret",
    "token",
    "apikey",
    "api_key",
    "accesskey",
    "access_key",
    "privatekey",
    "private_key",
    "credential",
    "auth",
];

/// Last name segments that mark a secret on their own (`OPENAI_KEY`, `DB_PASS`, `GITHUB_PAT`).
const NAME_SECRET_LAST: &[&str] = &["key", "keys", "pass", "pw", "pat"];

/// Last name segments saying the value is *about* a secret (where, how long, which), not the secret.
/// Sorted (binary search).
const NAME_EXCLUDED_LAST: &[&str] = &[
    "addr",
    "address",
    "age",
    "alg",
    "algorithm",
    "arn",
    "at",
    "aud",
    "audience",
    "audiences",
    "bundle",
    "cache",
    "checksum",
    "count",
    "created",
    "date",
    "digest",
    "dir",
    "directory",
    "disabled",
    "domain",
    "duration",
    "email",
    "enable",
    "enabled",
    "encoding",
    "endpoint",
    "endpoints",
    "env",
    "expiration",
    "expire",
    "expires",
    "expiry",
    "field",
    "file",
    "files",
    "fingerprint",
    "format",
    "hash",
    "header",
    "host",
    "hostname",
    "hosts",
    "id",
    "ids",
    "image",
    "interval",
    "issued",
    "issuer",
    "kind",
    "len",
    "length",
    "level",
    "lifetime",
    "limit",
    "location",
    "login",
    "max",
    "method",
    "min",
    "mode",
    "mount",
    "name",
    "names",
    "namespace",
    "ns",
    "owner",
    "path",
    "paths",
    "period",
    "policy",
    "port",
    "prefix",
    "provider",
    "realm",
    "ref",
    "region",
    "required",
    "role",
    "scope",
    "scopes",
    "server",
    "service",
    "sha",
    "since",
    "size",
    "sock",
    "socket",
    "source",
    "store",
    "strategy",
    "suffix",
    "svc",
    "tenant",
    "time",
    "timeout",
    "timestamp",
    "ttl",
    "type",
    "until",
    "updated",
    "uri",
    "url",
    "urls",
    "user",
    "username",
    "var",
    "version",
];

/// Whether a variable / flag / property name suggests its value is a secret.
fn name_is_secretish(name: &str) -> bool {
    let name = name.trim().trim_start_matches('-');
    if name.is_empty() || name.len() > MAX_KEY_LEN {
        return false;
    }
    // Normalise, on the stack: camelCase and `-`/`.`/` ` become `_`, ASCII lower case.
    let mut buf = [0u8; 2 * MAX_KEY_LEN];
    let mut len = 0;
    let mut prev_lower = false;
    for &c in name.as_bytes() {
        if c.is_ascii_uppercase() && prev_lower {
            buf[len] = b'_';
            len += 1;
        }
        prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        buf[len] = match c {
            b'-' | b'.' | b' ' => b'_',
            c => c.to_ascii_lowercase(),
        };
        len += 1;
    }
    let n = &mut buf[..len];
    // Look-alike words: `author` (but not `authoriz…`/`authoris…`), `tokenizer`.
    for i in 0..n.len() {
        let rest = &n[i..];
        if rest.starts_with(b"tokeniz") {
            n[i..i + 7].fill(b'_');
        } else if rest.starts_with(b"author") && !rest[6..].starts_with(b"iz") && !rest[6..].starts_with(b"is") {
            n[i..i + 6].fill(b'_');
        }
    }
    let n = &*n;
    if has_bytes(n, b"public") || has_bytes(n, b"publishable") {
        return false;
    }
    let last = n.rsplit(|&c| c == b'_').find(|s| !s.is_empty()).unwrap_or_default();
    if NAME_EXCLUDED_LAST.binary_search_by(|x| x.as_bytes().cmp(last)).is_ok() {
        return false;
    }
    NAME_KEYWORDS.iter().any(|k| has_bytes(n, k.as_bytes())) || NAME_SECRET_LAST.iter().any(|k| k.as_bytes() == last)
}

/// Minimum Shannon entropy, in bits per byte, of a `generic-secret` value of `len` bytes.
fn entropy_floor(len: usize) -> f64 {
    if len >= 12 { 3.0 } else { 0.85 * (len as f64).log2() }
}

/// Whether a literal value (of a secret-named variable) looks like a real secret.
///
/// A value holding references (`$(VAR)`, `${VAR}`, `{{ … }}`, `<fill-in>`, `***`, `...`) is judged by
/// what remains once every reference is removed: Kubernetes leaves an undefined `$(VAR)` as literal
/// text, so `<secret>$(UNDEFINED)` is still the secret.
fn value_is_secret(raw: &str) -> bool {
    let v = strip_auth_scheme(unquote(raw.trim()));
    if let Some(rest) = strip_references(v) {
        let rest = rest.trim();
        // The remainder holds no reference, so this recurses once.
        return !rest.is_empty() && strip_references(rest).is_none() && value_is_secret(rest);
    }
    let b = v.as_bytes();
    if !(8..=MAX_GENERIC_LEN).contains(&b.len()) || b.iter().any(u8::is_ascii_whitespace) {
        return false;
    }
    // Cheap tests first.
    let has_digit = b.iter().any(u8::is_ascii_digit);
    let mixed_case = b.iter().any(u8::is_ascii_lowercase) && b.iter().any(u8::is_ascii_uppercase);
    if !(has_digit || mixed_case) || shannon_entropy(b) < entropy_floor(b.len()) {
        return false;
    }
    !(is_placeholder(v)
        || has(v, "://")
        || is_email(v)
        || is_path(v)
        || is_hostlike(v)
        || is_uuid(v)
        || is_structured(v))
}

fn unquote(v: &str) -> &str {
    for q in ["\\\"", "\\'", "\"", "'"] {
        if v.len() >= 2 * q.len()
            && let Some(inner) = v.strip_prefix(q).and_then(|r| r.strip_suffix(q))
        {
            return inner.trim();
        }
    }
    v
}

fn strip_auth_scheme(v: &str) -> &str {
    match v.split_once(' ') {
        Some((scheme, rest)) if is_auth_scheme(scheme.as_bytes()) => rest.trim_start(),
        _ => v,
    }
}

/// Words that mark a fill-me-in (matched case-insensitively, separators ignored).
const PLACEHOLDER_MARKERS: &[&str] =
    &["xxxx", "changeme", "replace", "placeholder", "example", "sample", "your", "dummy", "redacted", "todo", "fixme"];

/// Words that fill out a placeholder around a marker (`YOUR_API_KEY_GOES_HERE`); removed only when a
/// marker is present. At least 3 letters, so they rarely eat into random key material.
const PLACEHOLDER_FILLERS: &[&str] = &[
    "access",
    "account",
    "actual",
    "admin",
    "anthropic",
    "api",
    "app",
    "auth",
    "aws",
    "bearer",
    "bot",
    "client",
    "database",
    "enter",
    "fill",
    "github",
    "goes",
    "google",
    "here",
    "insert",
    "key",
    "keys",
    "live",
    "openai",
    "pass",
    "password",
    "paste",
    "please",
    "private",
    "prod",
    "production",
    "proj",
    "project",
    "real",
    "secret",
    "service",
    "slack",
    "staging",
    "string",
    "stripe",
    "test",
    "this",
    "token",
    "user",
    "value",
    "webhook",
    "with",
];

/// Fixed prefixes of the known key formats, ignored when judging whether a value reads as a placeholder.
const KEY_PREFIXES: &[&str] = &[
    "sk-ant-api03-",
    "sk-ant-admin01-",
    "sk-svcacct-",
    "sk-admin-",
    "sk-proj-",
    "sk_live_",
    "sk_test_",
    "rk_live_",
    "rk_test_",
    "github_pat_",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "xoxa-",
    "xoxb-",
    "xoxe-",
    "xoxp-",
    "xoxr-",
    "xoxs-",
    "xapp-",
    "sk-",
    "AKIA",
    "ASIA",
    "ABIA",
    "ACCA",
    "AIza",
];

/// Keys published in AWS's documentation, exactly; a real key that merely ends in `EXAMPLE` is not one.
const DOCUMENTED_EXAMPLES: &[&str] = &[
    "AKIAIOSFODNN7EXAMPLE",
    "AKIAI44QH8DHBEXAMPLE",
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY",
];

/// The shortest remainder that can still be key material (see [`reads_as_placeholder`]).
const MIN_RANDOM_REST: usize = 8;

fn is_documented_example(v: &str) -> bool {
    DOCUMENTED_EXAMPLES.contains(&v)
}

fn is_placeholder_separator(c: u8) -> bool {
    matches!(c, b'-' | b'_' | b'.' | b'/' | b'+' | b'=' | b':' | b' ')
}

/// Whether `v` reads as a placeholder *as a whole*. A marker word counts only when, after removing a
/// leading known key prefix (`sk-proj-`, `ghp_`, `AKIA`…), the separators `-_./+=: `, every marker
/// word and — once a marker is present — every filler word ([`PLACEHOLDER_FILLERS`]), what remains
/// is not random key material: shorter than 8 bytes, fewer than min(8, ⌈len/2⌉) distinct bytes,
/// lower-case letters only, or CamelCase words ([`camel_words`]).
/// So `YOUR_API_KEY_HERE`, `sk-proj-your-api-key-goes-right-here`, `ChangeMe123!`, `example-token`
/// are placeholders, but 36 random characters with `todo` somewhere in them are not.
fn reads_as_placeholder(v: &str) -> bool {
    marker_rest(v).is_some_and(|rest| !looks_random(&rest))
}

/// `v` without its key prefix, separators, marker and filler words; `None` when it has no marker word.
fn marker_rest(v: &str) -> Option<Vec<u8>> {
    let v = KEY_PREFIXES.iter().find_map(|p| v.strip_prefix(p)).unwrap_or(v);
    let kept: Vec<u8> = v.bytes().filter(|&c| !is_placeholder_separator(c)).collect();
    let lower = kept.to_ascii_lowercase();
    let mut removed = vec![false; kept.len()];
    let mut mark = |words: &[&str]| {
        let mut any = false;
        for w in words {
            let w = w.as_bytes();
            if lower.len() < w.len() {
                continue;
            }
            for i in 0..=lower.len() - w.len() {
                if lower[i..i + w.len()] == *w {
                    removed[i..i + w.len()].fill(true);
                    any = true;
                }
            }
        }
        any
    };
    if !mark(PLACEHOLDER_MARKERS) {
        return None;
    }
    mark(PLACEHOLDER_FILLERS);
    Some(kept.iter().zip(&removed).filter(|&(_, &r)| !r).map(|(&c, _)| c).collect())
}

/// Whether what is left of a value once placeholder words are removed can still be key material.
fn looks_random(b: &[u8]) -> bool {
    if b.len() < MIN_RANDOM_REST || distinct_at_most(b, (b.len().div_ceil(2)).min(8) - 1) {
        return false;
    }
    !(b.iter().all(u8::is_ascii_lowercase) || camel_words(b))
}

/// Letters only, in CamelCase words: every upper-case letter starts a word of 3 or more letters (the
/// first word may be lower case), and every word has a vowel (`SuperFor`, `OpenAiProd` are words;
/// random letters almost never are).
fn camel_words(b: &[u8]) -> bool {
    if !b.iter().all(u8::is_ascii_alphabetic) {
        return false;
    }
    let starts: Vec<usize> = (0..b.len()).filter(|&i| i == 0 || b[i].is_ascii_uppercase()).collect();
    starts.iter().enumerate().all(|(k, &s)| {
        let e = starts.get(k + 1).copied().unwrap_or(b.len());
        let word = &b[s..e];
        (word.len() >= 3 || (k == 0 && word[0].is_ascii_lowercase()))
            && word.iter().any(|c| b"aeiouyAEIOUY".contains(c))
    })
}

/// Removes every reference and elision from `v`: `$(…)` (Kubernetes, balanced), `${…}` (shell,
/// balanced), `{{ … }}` (templates), `<fill-in>` (a letter, then letters, digits, spaces and `_.-`), runs of
/// three or more `*` or `.`, and `…`. An unclosed `$(`, `${` or `{{` runs to the end. `None` when
/// there is none.
fn strip_references(v: &str) -> Option<String> {
    let b = v.as_bytes();
    let n = b.len();
    let mut out = String::new();
    let mut copied = 0;
    let mut i = 0;
    let mut found = false;
    let balanced = |from: usize, open: u8, close: u8| {
        let mut depth = 0usize;
        for (k, &c) in b.iter().enumerate().skip(from) {
            if c == open {
                depth += 1;
            } else if c == close {
                depth -= 1;
                if depth == 0 {
                    return k + 1;
                }
            }
        }
        n
    };
    while i < n {
        let end = match b[i] {
            b'$' if b.get(i + 1) == Some(&b'(') => Some(balanced(i + 1, b'(', b')')),
            b'$' if b.get(i + 1) == Some(&b'{') => Some(balanced(i + 1, b'{', b'}')),
            b'{' if b.get(i + 1) == Some(&b'{') => {
                Some(v.get(i + 2..).and_then(|r| r.find("}}")).map_or(n, |k| i + 2 + k + 2))
            }
            b'<' if b.get(i + 1).is_some_and(u8::is_ascii_alphabetic) => {
                let k =
                    (i + 1..n).find(|&k| !(b[k].is_ascii_alphanumeric() || matches!(b[k], b' ' | b'_' | b'.' | b'-')));
                k.filter(|&k| b[k] == b'>').map(|k| k + 1)
            }
            c @ (b'*' | b'.') => {
                let k = (i..n).find(|&k| b[k] != c).unwrap_or(n);
                (k - i >= 3).then_some(k)
            }
            _ if b[i..].starts_with("…".as_bytes()) => Some(i + '…'.len_utf8()),
            _ => None,
        };
        match end {
            Some(e) => {
                out.push_str(&v[copied..i]);
                copied = e;
                i = e;
                found = true;
            }
            None => i += 1,
        }
    }
    if !found {
        return None;
    }
    out.push_str(&v[copied..]);
    Some(out)
}

/// Template variables, fill-me-ins, plain words, numbers: never secrets.
fn is_placeholder(v: &str) -> bool {
    let v = v.trim();
    if let Some(rest) = strip_references(v) {
        let rest = rest.trim();
        return rest.is_empty() || strip_references(rest).is_some() || is_placeholder(rest);
    }
    let b = v.as_bytes();
    let Some((&first, rest)) = b.split_first() else { return true };
    if first == b'$' && !rest.is_empty() && rest.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_') {
        return true;
    }
    if b.len() >= 3 && first == b'%' && b[b.len() - 1] == b'%' {
        return true;
    }
    if b.iter().all(|&c| c.is_ascii_alphabetic() || matches!(c, b'_' | b'.' | b'-')) {
        // Plain words, unless a marker word was hiding random letters (`WVFIGZQ` + `REDACTED` + `rAYbn`).
        if let Some(rest) = marker_rest(v) {
            return !looks_random(&rest);
        }
        if !random_letters(b) {
            return true;
        }
    }
    if b.iter().all(|&c| c.is_ascii_digit() || matches!(c, b'.' | b',' | b':' | b'+' | b'-' | b'/' | b'_')) {
        return true;
    }
    distinct_at_most(b, 3) || is_documented_example(v) || reads_as_placeholder(v)
}

/// Letters-only values are words (`changeme`, `REPLACE_ME`, `CorrectHorseBatteryStaple`) unless they are
/// long and look generated: 16+ letters, and either 25–75 % of them upper case or mixed case that does
/// not split into words (each `_.-` segment lower case, upper case or [`camel_words`]).
fn random_letters(b: &[u8]) -> bool {
    let letters = b.iter().filter(|c| c.is_ascii_alphabetic()).count();
    let upper = b.iter().filter(|c| c.is_ascii_uppercase()).count();
    if letters < 16 {
        return false;
    }
    let words = b.split(|&c| matches!(c, b'_' | b'.' | b'-')).all(|seg| {
        seg.iter().all(u8::is_ascii_lowercase) || seg.iter().all(u8::is_ascii_uppercase) || camel_words(seg)
    });
    (upper * 4 >= letters && upper * 4 <= letters * 3) || !words
}

fn is_email(v: &str) -> bool {
    let Some((local, domain)) = v.split_once('@') else { return false };
    let tld = domain.rsplit('.').next().unwrap_or("");
    !local.is_empty()
        && local.bytes().all(|c| c.is_ascii_alphanumeric() || b"._%+-".contains(&c))
        && domain.contains('.')
        && domain.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'-')
        && tld.len() >= 2
        && tld.bytes().all(|c| c.is_ascii_alphabetic())
}

/// File paths and resource paths: rooted (`/`, `./`, `../`, `~/`, `C:\`), relative with a file
/// extension, or with two or more separators (`projects/p/secrets/db/versions/3`); never with
/// base64's `+`/`=` nor with the upper/lower mix of random strings.
fn is_path(v: &str) -> bool {
    let b = v.as_bytes();
    if v.contains(['+', '=']) || !v.contains(['/', '\\']) {
        return false;
    }
    let letters = b.iter().filter(|c| c.is_ascii_alphabetic()).count();
    let upper = b.iter().filter(|c| c.is_ascii_uppercase()).count();
    if upper * 5 > letters {
        return false;
    }
    let rooted = v.starts_with(['/', '~', '\\'])
        || v.starts_with("./")
        || v.starts_with("../")
        || (b.len() > 2 && b[0].is_ascii_alphabetic() && b[1] == b':' && matches!(b[2], b'\\' | b'/'));
    let last = v.rsplit(['/', '\\']).next().unwrap_or("");
    let has_extension = last.rsplit_once('.').is_some_and(|(stem, ext)| {
        !stem.is_empty() && (1..=5).contains(&ext.len()) && ext.bytes().all(|c| c.is_ascii_alphanumeric())
    });
    let separators = b.iter().filter(|&&c| c == b'/' || c == b'\\').count();
    rooted || has_extension || separators >= 2
}

/// Structured identifiers that are not secrets: AWS ARNs, ISO-8601 dates and timestamps.
fn is_structured(v: &str) -> bool {
    let b = v.as_bytes();
    let iso_date = b.len() >= 10
        && b[..10].iter().enumerate().all(|(i, c)| if i == 4 || i == 7 { *c == b'-' } else { c.is_ascii_digit() });
    iso_date || v.starts_with("arn:")
}

/// Host names and `host:port`: lower-case letters, digits, `.`, `-`, `:` with at least one dot.
fn is_hostlike(v: &str) -> bool {
    v.contains('.')
        && v.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'-' | b':'))
}

fn is_uuid(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() == 36
        && b.iter()
            .enumerate()
            .all(|(i, &c)| if matches!(i, 8 | 13 | 18 | 23) { c == b'-' } else { c.is_ascii_hexdigit() })
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

/// Shannon entropy of the byte distribution, in bits per byte.
fn shannon_entropy(b: &[u8]) -> f64 {
    if b.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &c in b {
        counts[usize::from(c)] += 1;
    }
    let len = b.len() as f64;
    counts
        .iter()
        .filter(|&&k| k > 0)
        .map(|&k| {
            let p = f64::from(k) / len;
            -p * p.log2()
        })
        .sum()
}

fn distinct_at_most(b: &[u8], k: usize) -> bool {
    let mut seen = [false; 256];
    let mut distinct = 0;
    for &c in b {
        if !seen[usize::from(c)] {
            seen[usize::from(c)] = true;
            distinct += 1;
            if distinct > k {
                return false;
            }
        }
    }
    true
}

/// Substring search; a plain loop beats the two-way searcher's set-up cost on the short strings
/// that make up nearly all of a pod spec.
fn has(hay: &str, needle: &str) -> bool {
    if hay.len() > 256 {
        return hay.contains(needle);
    }
    has_bytes(hay.as_bytes(), needle.as_bytes())
}

/// Naive substring search, for short haystacks.
fn has_bytes(h: &[u8], n: &[u8]) -> bool {
    match n.split_first() {
        None => true,
        Some((&first, rest)) => {
            h.len() >= n.len() && (0..=h.len() - n.len()).any(|i| h[i] == first && &h[i + 1..i + n.len()] == rest)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Test secrets are generated at run time, so no realistic secret literal sits in this file.
    const UPPER_DIGIT: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    const URLSAFE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const DIGITS: &[u8] = b"0123456789";
    const HEX: &[u8] = b"0123456789abcdef";

    struct Rng(u64);

    impl Rng {
        fn new(seed: u64) -> Self {
            Rng(seed)
        }
        /// splitmix64
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn string(&mut self, len: usize, alphabet: &[u8]) -> String {
            (0..len).map(|_| alphabet[(self.next() % alphabet.len() as u64) as usize] as char).collect()
        }
    }

    fn rand(seed: u64, len: usize, alphabet: &[u8]) -> String {
        Rng::new(seed).string(len, alphabet)
    }

    fn b64(data: &[u8], url: bool) -> String {
        let alphabet: &[u8] =
            if url { URLSAFE } else { b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/" };
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |acc, (i, &c)| acc | u32::from(c) << (16 - 8 * i));
            let chars = chunk.len() + 1;
            for i in 0..4 {
                if i < chars {
                    out.push(alphabet[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else if !url {
                    out.push('=');
                }
            }
        }
        out
    }

    fn id(f: Option<Finding>) -> Option<&'static str> {
        f.map(|f| f.detector)
    }

    fn ids(v: Vec<Finding>) -> Vec<&'static str> {
        v.into_iter().map(|f| f.detector).collect()
    }

    /// A value is judged alone, with no name, and as free text.
    fn detect(value: &str) -> Option<&'static str> {
        let alone = id(scan_value(None, value));
        let text = ids(scan_text(value));
        assert_eq!(alone, text.first().copied(), "scan_value vs scan_text disagree on {value:?}");
        alone
    }

    // --- fixtures -------------------------------------------------------------------------

    fn aws_key(seed: u64) -> String {
        format!("AKIA{}", rand(seed, 16, UPPER_DIGIT))
    }
    fn ghp() -> String {
        format!("ghp_{}", "a1B2".repeat(9))
    }
    fn github_pat(seed: u64) -> String {
        format!("github_{}_{}", "pat", rand(seed, 82, &[ALNUM, b"_"].concat()))
    }
    fn openai_proj(seed: u64) -> String {
        format!("sk-{}-{}", "proj", rand(seed, 120, URLSAFE))
    }
    fn openai_legacy(seed: u64) -> String {
        format!("sk-{}{}{}", rand(seed, 20, ALNUM), "T3Blbk".to_owned() + "FJ", rand(seed + 1, 20, ALNUM))
    }
    fn anthropic(seed: u64) -> String {
        format!("sk-{}-api03-{}AA", "ant", rand(seed, 93, URLSAFE))
    }
    fn slack_bot(seed: u64) -> String {
        format!("xox{}-{}-{}-{}", "b", rand(seed, 12, DIGITS), rand(seed + 1, 13, DIGITS), rand(seed + 2, 24, ALNUM))
    }
    fn slack_app(seed: u64) -> String {
        format!(
            "x{}-1-A{}-{}-{}",
            "app",
            rand(seed, 10, UPPER_DIGIT),
            rand(seed + 1, 13, DIGITS),
            rand(seed + 2, 64, HEX)
        )
    }
    fn slack_webhook(seed: u64) -> String {
        format!(
            "https://hooks.{}.com/services/T{}/B{}/{}",
            "slack",
            rand(seed, 8, UPPER_DIGIT),
            rand(seed + 1, 10, UPPER_DIGIT),
            rand(seed + 2, 24, ALNUM)
        )
    }
    fn google(seed: u64) -> String {
        format!("AI{}{}", "za", rand(seed, 35, URLSAFE))
    }
    fn stripe(seed: u64, prefix: &str) -> String {
        format!("{prefix}_{}", rand(seed, 24, ALNUM))
    }
    fn pem_header(kind: &str) -> String {
        format!("-----BEGIN {kind}PRIVATE {}-----", "KEY")
    }
    fn pem(kind: &str, seed: u64) -> String {
        let mut rng = Rng::new(seed);
        let b64_alpha = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let lines: Vec<String> = (0..5).map(|_| rng.string(64, b64_alpha)).collect();
        format!("{}\n{}\n-----END {kind}PRIVATE {}-----\n", pem_header(kind), lines.join("\n"), "KEY")
    }
    fn jwt_with(payload: &str, seed: u64) -> String {
        let header = b64(br#"{"alg":"HS256","typ":"JWT"}"#, true);
        format!("{header}.{}.{}", b64(payload.as_bytes(), true), rand(seed, 43, URLSAFE))
    }
    fn jwt(seed: u64) -> String {
        jwt_with(r#"{"sub":"system:serviceaccount:agents:bot","iat":1700000000}"#, seed)
    }
    /// 24 random alphanumerics, at least one of them a digit.
    fn secret(seed: u64) -> String {
        format!("{}{}", rand(seed, 22, ALNUM), rand(seed + 1000, 2, DIGITS))
    }

    // --- specific detectors: true positives ------------------------------------------------

    #[test]
    fn aws_access_key_id() {
        let k = aws_key(1);
        assert_eq!(detect(&k), Some("aws-access-key-id"));
        assert_eq!(detect(&format!("ASIA{}", rand(2, 16, UPPER_DIGIT))), Some("aws-access-key-id"));
        assert_eq!(id(scan_value(Some("AWS_ACCESS_KEY_ID"), &k)), Some("aws-access-key-id"));
        assert_eq!(ids(scan_text(&format!("aws configure set aws_access_key_id {k}"))), ["aws-access-key-id"]);
    }

    #[test]
    fn aws_access_key_id_false_positives() {
        // documented example key, wrong length, not word-bounded, lower case
        assert_eq!(detect(&format!("AKIAIOSFODNN7{}", "EXAMPLE")), None);
        assert_eq!(detect(&format!("AKIA{}", rand(3, 15, UPPER_DIGIT))), None);
        assert_eq!(detect(&format!("AKIA{}", rand(3, 17, UPPER_DIGIT))), None);
        assert_eq!(detect(&format!("XAKIA{}", rand(3, 16, UPPER_DIGIT))), None);
        assert_eq!(detect(&format!("akia{}", rand(3, 16, UPPER_DIGIT).to_lowercase())), None);
        assert_eq!(detect(&format!("AKIA{}", "X".repeat(16))), None);
        let example_secret = format!("wJalrXUtnFEMI/K7MDENG/bPxRfiCY{}KEY", "EXAMPLE");
        assert_eq!(id(scan_value(Some("AWS_SECRET_ACCESS_KEY"), &example_secret)), None);
    }

    #[test]
    fn github_token() {
        assert_eq!(detect(&ghp()), Some("github-token"));
        for p in ["gho", "ghu", "ghs", "ghr"] {
            assert_eq!(detect(&format!("{p}_{}", rand(4, 36, ALNUM))), Some("github-token"), "{p}");
        }
        assert_eq!(detect(&github_pat(5)), Some("github-token"));
        assert_eq!(id(scan_value(Some("GH_TOKEN"), &ghp())), Some("github-token"));
    }

    #[test]
    fn github_token_false_positives() {
        assert_eq!(detect(&format!("ghp_{}", "a1B2".repeat(8))), None); // 32 chars
        assert_eq!(detect(&format!("ghx_{}", rand(4, 36, ALNUM))), None);
        assert_eq!(detect(&format!("ghp_{}", "x".repeat(36))), None);
        assert_eq!(detect(&format!("ghp_{}", "XXXX1234".repeat(5)[..36].to_owned())), None);
        assert_eq!(detect(&format!("github_pat_{}", rand(5, 40, ALNUM))), None);
        assert_eq!(detect("https://github.com/org/repo/tree/high-availability"), None);
    }

    #[test]
    fn openai_api_key() {
        assert_eq!(detect(&openai_proj(6)), Some("openai-api-key"));
        assert_eq!(detect(&format!("sk-svcacct-{}", rand(7, 80, URLSAFE))), Some("openai-api-key"));
        assert_eq!(detect(&format!("sk-admin-{}", rand(8, 80, URLSAFE))), Some("openai-api-key"));
        assert_eq!(detect(&openai_legacy(9)), Some("openai-api-key"));
    }

    #[test]
    fn openai_api_key_false_positives() {
        // legacy shape without the OpenAI marker, too short, placeholders
        assert_eq!(detect(&format!("sk-{}", rand(10, 48, ALNUM))), None);
        assert_eq!(detect(&format!("sk-proj-{}", rand(11, 10, ALNUM))), None);
        assert_eq!(detect(&format!("sk-proj-{}", "x".repeat(40))), None);
        assert_eq!(detect("sk-proj-your-api-key-goes-right-here"), None);
        assert_eq!(detect("risk-proj-management-board-2024-q3-roadmap"), None);
    }

    #[test]
    fn anthropic_api_key() {
        let k = anthropic(12);
        assert_eq!(detect(&k), Some("anthropic-api-key"));
        assert_eq!(detect(&format!("sk-ant-admin01-{}AA", rand(13, 93, URLSAFE))), Some("anthropic-api-key"));
        // never also labelled openai
        assert_eq!(ids(scan_text(&format!("ANTHROPIC_API_KEY={k}"))), ["anthropic-api-key"]);
        assert_eq!(id(scan_value(Some("OPENAI_API_KEY"), &k)), Some("anthropic-api-key"));
    }

    #[test]
    fn anthropic_api_key_false_positives() {
        assert_eq!(detect(&format!("sk-ant-api03-{}AA", rand(14, 40, URLSAFE))), None); // too short
        assert_eq!(detect(&format!("sk-ant-api03-{}", rand(14, 95, ALNUM).replace('A', "b"))), None); // no AA end
        assert_eq!(detect(&format!("sk-ant-api03-{}AA", "x".repeat(90))), None);
    }

    #[test]
    fn slack() {
        assert_eq!(detect(&slack_bot(15)), Some("slack-token"));
        assert_eq!(
            detect(&format!(
                "xoxp-{}-{}-{}-{}",
                rand(16, 12, DIGITS),
                rand(17, 12, DIGITS),
                rand(18, 13, DIGITS),
                rand(19, 32, HEX)
            )),
            Some("slack-token")
        );
        assert_eq!(detect(&slack_app(20)), Some("slack-token"));
        assert_eq!(detect(&slack_webhook(21)), Some("slack-webhook-url"));
        let trigger = format!(
            "https://hooks.slack.com/triggers/T{}/{}/{}",
            rand(22, 8, UPPER_DIGIT),
            rand(23, 13, DIGITS),
            rand(24, 32, HEX)
        );
        assert_eq!(detect(&trigger), Some("slack-webhook-url"));
    }

    #[test]
    fn slack_false_positives() {
        assert_eq!(detect("xoxb-your-bot-token-here"), None);
        assert_eq!(detect("xoxb-123-xxxxxxxxxxxxxxxx"), None);
        assert_eq!(detect("xoxb-"), None);
        assert_eq!(detect("https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX"), None);
        assert_eq!(detect("https://hooks.slack.com/services/"), None);
        assert_eq!(detect("https://hooks.slack.com/services/T0123/B0123"), None);
        assert_eq!(detect("https://api.slack.com/apps"), None);
    }

    #[test]
    fn google_api_key() {
        assert_eq!(detect(&google(25)), Some("google-api-key"));
        assert_eq!(detect(&format!("AIza{}", rand(25, 30, URLSAFE))), None);
        assert_eq!(detect(&format!("AIza{}", "x".repeat(35))), None);
        assert_eq!(detect(&format!("AIzaSy{}", "YourApiKeyGoesHere".repeat(2)[..33].to_owned())), None);
    }

    #[test]
    fn stripe_key() {
        assert_eq!(detect(&stripe(26, "sk_live")), Some("stripe-key"));
        assert_eq!(detect(&stripe(27, "sk_test")), Some("stripe-key"));
        assert_eq!(detect(&stripe(28, "rk_live")), Some("stripe-key"));
        // placeholders, publishable keys, too short
        assert_eq!(detect("sk_test_xxxxxxxx"), None);
        assert_eq!(detect("sk_test_xxxxxxxxxxxxxxxxxxxxxxxx"), None);
        assert_eq!(detect("sk_live_your_key_here"), None);
        assert_eq!(detect(&stripe(29, "pk_live")), None);
        assert_eq!(detect("sk_test_abc12"), None);
        assert_eq!(detect("run_test_suite_integration"), None);
    }

    #[test]
    fn private_key() {
        for kind in ["", "RSA ", "EC ", "DSA ", "OPENSSH ", "ENCRYPTED "] {
            assert_eq!(detect(&pem(kind, 30)), Some("private-key"), "{kind:?}");
        }
        let pgp = format!(
            "-----BEGIN PGP PRIVATE KEY {}-----\nVersion: GnuPG v2\n\n{}\n=AbCd\n",
            "BLOCK",
            rand(31, 64, ALNUM)
        );
        assert_eq!(detect(&pgp), Some("private-key"));
        let encrypted = format!(
            "{}\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,{}\n\n{}\n",
            pem_header("RSA "),
            rand(32, 32, HEX),
            rand(33, 64, ALNUM)
        );
        assert_eq!(detect(&encrypted), Some("private-key"));
        // literal `\n` escapes, as in a single-line YAML/JSON string or `echo -e`
        let escaped = format!("{}\\n{}\\n-----END PRIVATE {}-----", pem_header(""), rand(34, 64, ALNUM), "KEY");
        assert_eq!(detect(&escaped), Some("private-key"));
        let script = format!("cat > /tmp/key <<EOF\n{}EOF\nchmod 600 /tmp/key", pem("OPENSSH ", 35));
        assert_eq!(ids(scan_text(&script)), ["private-key"]);
    }

    #[test]
    fn private_key_false_positives() {
        let h = pem_header("");
        assert_eq!(detect(&h), None);
        assert_eq!(detect(&format!("{h}\n")), None);
        assert_eq!(detect(&format!("{h}\n-----END PRIVATE {}-----", "KEY")), None);
        assert_eq!(detect(&format!("{h}\n...\n-----END PRIVATE {}-----", "KEY")), None);
        assert_eq!(detect(&format!("{h}\n<your key here>\n")), None);
        assert_eq!(detect(&format!("{h}\n{}\n", "X".repeat(64))), None);
        assert_eq!(detect(&format!("{h}\nshort\n")), None);
        let public = format!("-----BEGIN PUBLIC {}-----\n{}\n", "KEY", rand(36, 64, ALNUM));
        assert_eq!(detect(&public), None);
        let cert = format!("-----BEGIN {}-----\n{}\n", "CERTIFICATE", rand(37, 64, ALNUM));
        assert_eq!(detect(&cert), None);
        assert_eq!(id(scan_value(Some("TLS_KEY_FILE"), "/etc/tls/private/tls.key")), None);
    }

    #[test]
    fn jwt_detector() {
        let t = jwt(38);
        assert_eq!(detect(&t), Some("jwt"));
        assert_eq!(ids(scan_text(&format!("curl -H 'Authorization: Bearer {t}' https://api"))), ["jwt"]);
        // reported once, as jwt, not also as generic-secret
        assert_eq!(ids(scan_text(&format!("TOKEN={t}"))), ["jwt"]);
        assert_eq!(id(scan_value(Some("ACCESS_TOKEN"), &t)), Some("jwt"));
    }

    #[test]
    fn jwt_false_positives() {
        let header = b64(br#"{"alg":"none","typ":"JWT"}"#, true);
        let payload = b64(br#"{"sub":"agent","iat":1700000000}"#, true);
        assert_eq!(detect(&format!("{header}.{payload}.")), None); // unsigned
        assert_eq!(detect(&format!("{header}.{payload}")), None); // two segments
        assert_eq!(detect(&format!("{header}.{payload}.{}", "x".repeat(43))), None);
        assert_eq!(detect("eyJ.eyJ.abc"), None);
        // the jwt.io sample token
        let sample = jwt_with(r#"{"sub":"1234567890","name":"John Doe","iat":1516239022}"#, 39);
        assert_eq!(detect(&sample), None);
    }

    #[test]
    fn url_credentials() {
        assert_eq!(detect("https://user:p4ssw0rdX9@host/"), Some("url-credentials"));
        assert_eq!(detect(&format!("postgres://app:{}@db:5432/app", secret(40))), Some("url-credentials"));
        assert_eq!(detect(&format!("redis://:{}@redis:6379/0", secret(41))), Some("url-credentials"));
        assert_eq!(
            ids(scan_text(&format!("psql postgresql://admin:{}@db.svc/app -c 'select 1'", secret(42)))),
            ["url-credentials"]
        );
        // a known token in the URL is reported as that token only
        let clone = format!("git clone https://x-access-token:{}@github.com/o/r.git", ghp());
        assert_eq!(ids(scan_text(&clone)), ["github-token"]);
    }

    #[test]
    fn url_credentials_false_positives() {
        for v in [
            "https://api.example.com/v1",
            "https://user@host/path",
            "postgres://postgres:postgres@db:5432/app",
            "postgres://app:$(DB_PASSWORD)@db:5432/app",
            "postgres://app:${DB_PASSWORD}@db:5432/app",
            "https://user:****@host/",
            "https://user:<password>@host/",
            "http://host:8080/path@v2",
            "ssh://git@github.com:22/org/repo.git",
            "https://user:changeme1@host/",
            "mailto:someone@example.com",
        ] {
            assert_eq!(detect(v), None, "{v}");
        }
    }

    // --- base64 ---------------------------------------------------------------------------

    #[test]
    fn base64_wrapped() {
        let key = pem("RSA ", 43);
        assert_eq!(detect(&b64(key.as_bytes(), false)), Some("private-key"));
        assert_eq!(id(scan_value(Some("TLS_KEY"), &b64(key.as_bytes(), false))), Some("private-key"));
        assert_eq!(detect(&b64(ghp().as_bytes(), false)), Some("github-token"));
        assert_eq!(detect(&b64(aws_key(44).as_bytes(), true)), Some("aws-access-key-id"));
        assert_eq!(ids(scan_text(&format!("--config={}", b64(openai_proj(45).as_bytes(), false)))), ["openai-api-key"]);
        // docker config JSON whose `auth` is base64 of `user:token`: two levels
        let auth = b64(format!("bot:{}", ghp()).as_bytes(), false);
        let docker = format!(r#"{{"auths":{{"ghcr.io":{{"auth":"{auth}"}}}}}}"#);
        assert_eq!(detect(&b64(docker.as_bytes(), false)), Some("github-token"));
    }

    #[test]
    fn base64_false_positives() {
        assert_eq!(detect(&b64(b"just some harmless configuration text", false)), None);
        assert_eq!(detect(&b64(b"AKIAIOSFODNN7EXAMPLE", false)), None);
        assert_eq!(detect(&rand(46, 64, HEX)), None); // a digest
        assert_eq!(detect(&b64(pem_header("").as_bytes(), false)), None);
    }

    #[test]
    fn base64_decoder() {
        for data in [&b""[..], b"f", b"fo", b"foo", b"foob", b"fooba", b"foobar", &[0xff, 0xfe, 0x00, 0x80]] {
            assert_eq!(b64_decode(b64(data, false).as_bytes()).as_deref(), Some(data));
            assert_eq!(b64_decode(b64(data, true).as_bytes()).as_deref(), Some(data));
        }
        assert_eq!(b64_decode(b"abcde"), None);
        assert_eq!(b64_decode(b"ab*d"), None);
    }

    // --- generic-secret -------------------------------------------------------------------

    #[test]
    fn generic_secret_named_values() {
        for name in [
            "DB_PASSWORD",
            "POSTGRES_PASSWD",
            "MYSQL_PWD",
            "CLIENT_SECRET",
            "SECRET_KEY_BASE",
            "VAULT_TOKEN",
            "REFRESH_TOKEN",
            "X_API_KEY",
            "apiKey",
            "api-key",
            "OPENAI_KEY",
            "ENCRYPTION_KEY",
            "AWS_SECRET_ACCESS_KEY",
            "PRIVATE_KEY",
            "GOOGLE_CREDENTIALS",
            "BASIC_AUTH",
            "AUTHORIZATION",
            "REDIS_PASS",
            "GITLAB_PAT",
            "clientSecret",
            "ssh.passphrase",
        ] {
            assert_eq!(id(scan_value(Some(name), &secret(50))), Some("generic-secret"), "{name}");
        }
        // hex, base64 with symbols, short passwords, a bearer header value
        assert_eq!(id(scan_value(Some("WEBHOOK_SECRET"), &rand(51, 40, HEX))), Some("generic-secret"));
        assert_eq!(
            id(scan_value(
                Some("JWT_SECRET"),
                &b64(&[7, 200, 13, 99, 250, 1, 42, 77, 128, 3, 66, 190, 201, 5, 18], false)
            )),
            Some("generic-secret")
        );
        assert_eq!(id(scan_value(Some("DB_PASSWORD"), "P4ssw0rd")), Some("generic-secret"));
        assert_eq!(id(scan_value(Some("ADMIN_PASSWORD"), "Tr0ub4dor&3")), Some("generic-secret"));
        assert_eq!(id(scan_value(Some("AUTHORIZATION"), &format!("Bearer {}", secret(52)))), Some("generic-secret"));
        assert_eq!(id(scan_value(Some("DB_PASSWORD"), &format!("\"{}\"", secret(53)))), Some("generic-secret"));
        // letters only, but generated: case-randomised
        assert_eq!(id(scan_value(Some("DB_PASSWORD"), &rand(55, 24, &ALNUM[..52]))), Some("generic-secret"));
        assert_eq!(id(scan_value(Some("DB_PASSWORD"), "SuperSecretPasswordForProd")), None);
    }

    #[test]
    fn generic_secret_name_exclusions() {
        let s = secret(54);
        for name in [
            "PASSWORD_FILE",
            "TOKEN_URL",
            "tokenUrl",
            "TOKEN_AUDIENCE",
            "TOKEN_ENDPOINT",
            "AUTH_HOST",
            "SECRET_NAME",
            "SECRET_PATH",
            "TOKEN_TTL",
            "TOKEN_EXPIRY",
            "TOKEN_EXPIRATION",
            "PASSWORD_LENGTH",
            "AWS_ACCESS_KEY_ID",
            "CLIENT_ID",
            "AUTH_USER",
            "PUBLIC_KEY",
            "STRIPE_PUBLISHABLE_KEY",
            "PASSWORD_HASH",
            "AUTHOR",
            "GIT_AUTHOR_NAME",
            "TOKENIZER",
            "REQUEST_ID",
            "IMAGE_DIGEST",
            "HOSTNAME",
            "MODEL",
        ] {
            assert_eq!(id(scan_value(Some(name), &s)), None, "{name}");
        }
        assert_eq!(id(scan_value(None, &s)), None);
        assert_eq!(ids(scan_text(&s)), Vec::<&str>::new());
    }

    #[test]
    fn generic_secret_value_exclusions() {
        for v in [
            "",
            "   ",
            "$(GITHUB_TOKEN)",
            "${GITHUB_TOKEN}",
            "$GITHUB_TOKEN",
            "${TOKEN:-dev}",
            "{{ .Values.token }}",
            "{{.Values.auth.password}}",
            "%API_KEY%",
            "<your-token>",
            "<TOKEN>",
            "changeme",
            "ChangeMe123!",
            "REPLACE_ME",
            "xxxxxxxx",
            "XXXXXXXXXXXXXXXXXXXX",
            "********",
            "abc...xyz",
            "supersecretpassword",
            "CorrectHorseBatteryStaple",
            "my-secret-value",
            "true",
            "false",
            "12345678",
            "3.14159265",
            "10.0.0.1:8080",
            "2024-01-01T00:00:00Z",
            "a1B2a1B2a1B2a1B2",
            "aaaa1111AAAA",
            "Ab1",
            "bot@example.com",
            "agent.bot+ci@mail.corp.io",
            "https://api.example.com/v1",
            "/var/run/secrets/tokens/agent",
            "/etc/secret/pw",
            "./secrets/dev.env",
            "config/app.yaml",
            "db.agents.svc.cluster.local:5432",
            "3f2b6a1c-9d4e-4f7a-8b2c-1e5d6f7a8b9c",
            "YOUR_API_KEY_1234",
            "use the token from vault",
            "dummy-token-123",
            "redacted123",
        ] {
            assert_eq!(id(scan_value(Some("API_TOKEN"), v)), None, "{v:?}");
            assert_eq!(ids(scan_text(&format!("--api-token={v}"))), Vec::<&str>::new(), "{v:?}");
        }
        assert_eq!(
            id(scan_value(Some("AWS_SECRET_ACCESS_KEY"), &format!("wJalrXUtnFEMI/K7MDENG/bPxRfiCY{}KEY", "EXAMPLE"))),
            None
        );
        assert_eq!(id(scan_value(Some("PASSWORD_FILE"), "/etc/secret/pw")), None);
        assert_eq!(id(scan_value(Some("TOKEN_AUDIENCE"), "https://x")), None);
        assert_eq!(id(scan_value(Some("GITHUB_TOKEN"), "$(GITHUB_TOKEN)")), None);
    }

    /// Settings commonly seen in agent pods: none is a secret.
    #[test]
    fn realistic_pod_strings_are_clean() {
        let env = [
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-honeycomb-team=$(HONEYCOMB_KEY)"),
            ("MODEL_ID", "meta-llama/Llama-3.1-8B-Instruct"),
            ("HF_TOKEN", "$(HF_TOKEN)"),
            ("NEXTAUTH_SECRET", "$(openssl rand -base64 32)"),
            ("JWT_ALGORITHM", "RS256"),
            ("AUTH_TIMEOUT", "30s"),
            ("OAUTH2_PROXY_COOKIE_NAME", "_oauth2_proxy"),
            ("GOOGLE_APPLICATION_CREDENTIALS", "/var/secrets/google/key.json"),
            ("SPIFFE_ENDPOINT_SOCKET", "unix:///run/spire/sockets/agent.sock"),
            ("SSH_AUTH_SOCK", "/tmp/ssh-agent.1234"),
            ("PASSWORD_MIN_LENGTH", "12"),
            ("API_KEY_HEADER", "X-API-Key"),
            ("SECRETS_MANAGER_ARN", "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf"),
            ("DB_SECRET", "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf"),
            ("GCP_SECRET", "projects/agents-prod/secrets/db-pass/versions/3"),
            ("VAULT_SECRET", "secret/data/agents/billing"),
            ("AUTH0_DOMAIN", "tenant.us.auth0.com"),
            ("TOKEN_ISSUED_AT", "2024-01-01T12:30:45Z"),
            ("API_TOKEN", "2024-06-30T23:59:59+02:00"),
            ("TOKEN_ENCODING", "base64"),
            ("AUTH_MODE", "oauth2"),
            ("KEYCLOAK_REALM", "agents"),
            ("OPENAI_API_BASE", "https://api.openai.com/v1"),
            ("TOKENIZERS_PARALLELISM", "false"),
            ("MAX_TOKENS", "4096"),
            ("GIT_ASKPASS", "/bin/echo"),
            ("AUTH_AUDIENCE", "sts.amazonaws.com"),
        ];
        for (name, value) in env {
            assert_eq!(id(scan_value(Some(name), value)), None, "{name}={value}");
        }
        for arg in [
            "--kubeconfig=/etc/kube/config",
            "--authentication-token-webhook=true",
            "--authorization-mode=Node,RBAC",
            "--tls-private-key-file=/certs/tls.key",
            "--oidc-client-secret-file=/etc/oidc/secret",
            "--secret-store=vault",
            "--set auth.existingSecret=agent-db",
            "--token-audience=sts.amazonaws.com",
            "--auth=none",
            "--service-account-key-file=/etc/kubernetes/pki/sa.pub",
            r#"{"auth": {"type": "oauth", "tokenUrl": "https://login.example.com/oauth/token"}}"#,
            "--model=anthropic/claude-sonnet-4-5 --max-tokens=8192 --temperature=0.2",
            "exec uvicorn app:main --host 0.0.0.0 --port 8000 --workers 2",
            "--mcp-server=https://mcp.internal.svc:8443/sse",
        ] {
            assert_eq!(ids(scan_text(arg)), Vec::<&str>::new(), "{arg}");
        }
    }

    #[test]
    fn entropy_floor_boundaries() {
        assert!((entropy_floor(12) - 3.0).abs() < 1e-9);
        assert!((entropy_floor(100) - 3.0).abs() < 1e-9);
        assert!(entropy_floor(8) > 2.5 && entropy_floor(8) < 2.6);
        assert!(entropy_floor(11) < 3.0);
        assert!((shannon_entropy(b"abcdefgh") - 3.0).abs() < 1e-9);
        assert_eq!(shannon_entropy(b""), 0.0);
        assert_eq!(shannon_entropy(b"aaaa"), 0.0);
        // 7 bytes: never
        assert_eq!(id(scan_value(Some("PASSWORD"), "aB3$kL9")), None);
        // 16 bytes over 4 symbols = 2 bits/byte: below the floor
        assert_eq!(id(scan_value(Some("PASSWORD"), "a1B2a1B2a1B2a1B2")), None);
    }

    // --- text: shell scripts, flags, config snippets ----------------------------------------

    #[test]
    fn shell_scripts() {
        let s = format!("export OPENAI_API_KEY={}; python app.py", openai_proj(60));
        assert_eq!(ids(scan_text(&s)), ["openai-api-key"]);
        let s = format!("sh -c \"export DB_PASSWORD={}; ./run.sh\"", secret(61));
        assert_eq!(ids(scan_text(&s)), ["generic-secret"]);
        let s = format!("export DB_PASSWORD='{}' && exec server", secret(62));
        assert_eq!(ids(scan_text(&s)), ["generic-secret"]);
        let s = format!("API_TOKEN=\"{}\" python main.py", secret(63));
        assert_eq!(ids(scan_text(&s)), ["generic-secret"]);
        let s = format!("curl -H \"Authorization: Bearer {}\" https://api.internal/v1", secret(64));
        assert_eq!(ids(scan_text(&s)), ["generic-secret"]);
        let s = format!("curl 'https://api.internal/v1/items?limit=10&api_key={}'", secret(65));
        assert_eq!(ids(scan_text(&s)), ["generic-secret"]);
        let s = format!("java -Ddb.password={} -jar app.jar", secret(66));
        assert_eq!(ids(scan_text(&s)), ["generic-secret"]);
        // several detectors: each once, in order of appearance
        let s = format!("A={} B={} C={} D={}", jwt(67), ghp(), jwt(68), aws_key(69));
        assert_eq!(ids(scan_text(&s)), ["jwt", "github-token", "aws-access-key-id"]);
        let s = format!("export GITHUB_TOKEN={} SLACK={} DB_PASSWORD={}", ghp(), slack_bot(70), secret(71));
        assert_eq!(ids(scan_text(&s)), ["github-token", "slack-token", "generic-secret"]);
    }

    #[test]
    fn shell_script_false_positives() {
        for s in [
            "export GITHUB_TOKEN=$(cat /var/run/secrets/tokens/github); exec agent",
            "export TOKEN=${TOKEN:-}; [ \"$TOKEN\" == \"\" ] && exit 1",
            "if [ \"$PASSWORD\" != \"$CONFIRM\" ]; then exit 1; fi",
            "echo $API_KEY | base64 -d > /tmp/key",
            "python app.py --port=8080 --log-level=debug --workers=4",
            "exec agent --token-file=/var/run/secrets/tokens/agent --audience=agentid",
            "docker login --password-stdin ghcr.io",
            "vault login -method=oidc role=agents",
            "curl -H \"Authorization: Bearer $TOKEN\" https://api.example.com/v1",
            "kubectl create secret generic db --from-literal=password=$(DB_PASSWORD)",
            "mail --to ops@example.com --subject 'auth failed'",
            "python -c 'import os; print(os.environ[\"API_KEY\"])'",
            "TOKENIZERS_PARALLELISM=false HF_HOME=/cache python serve.py",
            "git log --author=alice@example.com --since=2024-01-01",
            "a == b; x = 1; token_count=4096",
        ] {
            assert_eq!(ids(scan_text(s)), Vec::<&str>::new(), "{s}");
        }
    }

    #[test]
    fn flags() {
        let s = secret(72);
        assert_eq!(ids(scan_text(&format!("--api-key={s}"))), ["generic-secret"]);
        assert_eq!(ids(scan_text(&format!("--api-key=\"{s}\""))), ["generic-secret"]);
        assert_eq!(ids(scan_text(&format!("--token {s}"))), ["generic-secret"]);
        assert_eq!(ids(scan_text(&format!("serve --verbose --client-secret  {s} --port 80"))), ["generic-secret"]);
        assert_eq!(ids(scan_text(&format!("--password={s}"))), ["generic-secret"]);
        assert_eq!(ids(scan_text(&format!("--api-key={}", openai_proj(73)))), ["openai-api-key"]);
        // flag followed by another flag, placeholder, excluded names
        assert_eq!(ids(scan_text(&format!("--token --verbose {s}"))), Vec::<&str>::new());
        assert_eq!(ids(scan_text("--api-key=$(OPENAI_API_KEY)")), Vec::<&str>::new());
        assert_eq!(ids(scan_text(&format!("--token-ttl {s}"))), Vec::<&str>::new());
        assert_eq!(ids(scan_text(&format!("--secret-name={s}"))), Vec::<&str>::new());
        // flag name alone, as scan_value's name (args split over two elements)
        assert_eq!(id(scan_value(Some("--api-key"), &s)), Some("generic-secret"));
    }

    #[test]
    fn config_snippets() {
        let s = secret(74);
        assert_eq!(ids(scan_text(&format!("{{\"api_key\": \"{s}\", \"model\": \"gpt-4o\"}}"))), ["generic-secret"]);
        assert_eq!(ids(scan_text(&format!("{{\"api_key\":\"{s}\"}}"))), ["generic-secret"]);
        assert_eq!(ids(scan_text(&format!("db:\n  host: db\n  password: {s}\n"))), ["generic-secret"]);
        assert_eq!(ids(scan_text(&format!("[db]\npassword = \"{s}\"\n"))), ["generic-secret"]);
        assert_eq!(ids(scan_text(&format!("Server=db;User Id=app;Password={s};"))), ["generic-secret"]);
        assert_eq!(id(scan_value(Some("JAVA_OPTS"), &format!("-Xmx1g -Ddb.password={s}"))), Some("generic-secret"));
        assert_eq!(ids(scan_text("{\"api_key\": \"${API_KEY}\", \"password\": \"<set me>\"}")), Vec::<&str>::new());
        assert_eq!(ids(scan_text("image: ghcr.io/org/agent:v1.2.3")), Vec::<&str>::new());
    }

    // --- robustness -----------------------------------------------------------------------

    #[test]
    fn non_ascii() {
        assert_eq!(ids(scan_text(&format!("токен: {} — ключ 🔑", ghp()))), ["github-token"]);
        assert_eq!(ids(scan_text(&format!("パスワード={} 🔒", aws_key(80)))), ["aws-access-key-id"]);
        for s in [
            "пароль=значение",
            "ПАРОЛЬ: секрет",
            "🔑=🔒🔒🔒🔒🔒🔒🔒🔒",
            "token=日本語のパスワード１２３４",
            "--tökén=ünïcödé",
            "ü=\"",
            "é--",
            "\u{0}\u{ffff}=\u{10ffff}",
        ] {
            let _ = scan_text(s);
            let _ = scan_value(Some(s), s);
            let _ = scan_value(Some("PASSWORD"), s);
        }
        assert_eq!(id(scan_value(Some("ПАРОЛЬ"), "значение")), None);
        // a token glued to non-ASCII letters is still word-bounded
        assert_eq!(detect(&format!("é{}é", ghp())), Some("github-token"));
    }

    #[test]
    fn every_prefix_and_suffix_is_safe() {
        let text = format!(
            "sh -c \"export A='x' B=\\\"{}\\\" --token  {} {}\\n{} {} https://u:{}@h/ ü {} {}\"",
            secret(81),
            secret(82),
            pem_header("RSA "),
            rand(83, 40, ALNUM),
            jwt(84),
            secret(85),
            b64(ghp().as_bytes(), false),
            "--api-key=é"
        );
        for (i, _) in text.char_indices() {
            let _ = scan_text(&text[..i]);
            let _ = scan_text(&text[i..]);
            let _ = scan_value(Some("TOKEN"), &text[i..]);
        }
    }

    #[test]
    fn huge_inputs_do_not_panic() {
        let mut rng = Rng::new(90);
        let alphabet: Vec<char> =
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=_-.:;'\" \n\\$(){}<>@éß日🔑"
                .chars()
                .collect();
        let mut big = String::with_capacity(1 << 21);
        while big.len() < 1 << 20 {
            big.push(alphabet[(rng.next() % alphabet.len() as u64) as usize]);
        }
        let _ = scan_text(&big);
        let _ = scan_value(Some("TOKEN"), &big);
        // one long token-like run, long assignment chains, repeated headers, a secret at the very end
        let run = "A".repeat(1 << 20);
        assert_eq!(detect(&run), None);
        assert_eq!(detect(&format!("sk-proj-{run}")), None);
        let chain = "password=".repeat(1 << 15);
        assert_eq!(ids(scan_text(&chain)), Vec::<&str>::new());
        let headers = format!("{}\n{}\n", pem_header(""), rand(91, 64, ALNUM)).repeat(1 << 10);
        assert_eq!(ids(scan_text(&headers)), ["private-key"]);
        let tail = format!("{}{}", "x ".repeat(1 << 19), ghp());
        assert_eq!(ids(scan_text(&tail)), ["github-token"]);
    }

    #[test]
    fn name_lists_are_well_formed() {
        assert!(NAME_EXCLUDED_LAST.windows(2).all(|w| w[0] < w[1]), "NAME_EXCLUDED_LAST must be sorted");
        assert!(RULES.iter().all(|r| r.needles.iter().all(|n| n.len() >= 2)));
        assert!(RULES.len() <= 16, "rule_mask is a u16");
    }

    #[test]
    fn name_normalisation() {
        assert!(name_is_secretish("--api-key"));
        assert!(name_is_secretish("-Ddb.password"));
        assert!(name_is_secretish("openaiApiKey"));
        assert!(name_is_secretish("AUTHORIZATION"));
        assert!(!name_is_secretish("passwordFile"));
        assert!(!name_is_secretish("AUTHOR_EMAIL"));
        assert!(!name_is_secretish(""));
        assert!(!name_is_secretish("--"));
        assert!(!name_is_secretish(&"TOKEN".repeat(40)));
    }

    // --- placeholders: markers and references must not hide real keys ----------------------

    /// Overwrites `s[at..at + word.len()]` with `word`.
    fn splice(s: &str, at: usize, word: &str) -> String {
        format!("{}{word}{}", &s[..at], &s[at + word.len()..])
    }

    #[test]
    fn marker_words_inside_real_keys_are_detected() {
        let aws = aws_key(100);
        assert_eq!(detect(&splice(&aws, 8, "YOUR")), Some("aws-access-key-id"));
        assert_eq!(detect(&splice(&aws, 10, "TODO")), Some("aws-access-key-id"));
        assert_eq!(detect(&splice(&aws, 13, "EXAMPLE")), Some("aws-access-key-id")); // not a documented one
        assert_eq!(detect(&splice(&ghp_rand(101), 20, "todo")), Some("github-token"));
        assert_eq!(detect(&splice(&ghp_rand(102), 10, "Your")), Some("github-token"));
        assert_eq!(detect(&splice(&ghp_rand(103), 4, "xxxx")), Some("github-token"));
        assert_eq!(detect(&splice(&github_pat(104), 40, "example")), Some("github-token"));
        assert_eq!(detect(&splice(&stripe(105, "sk_live"), 15, "example")), Some("stripe-key"));
        assert_eq!(detect(&splice(&stripe(106, "sk_test"), 8, "Sample")), Some("stripe-key"));
        let slack = slack_bot(107);
        assert_eq!(detect(&splice(&slack, slack.len() - 10, "your")), Some("slack-token"));
        assert_eq!(detect(&splice(&slack, slack.len() - 6, "DUMMY")), Some("slack-token"));
        let hook = slack_webhook(108);
        assert_eq!(detect(&splice(&hook, hook.len() - 12, "todo")), Some("slack-webhook-url"));
        assert_eq!(detect(&splice(&google(109), 12, "redacted")), Some("google-api-key"));
        assert_eq!(detect(&splice(&openai_proj(110), 30, "placeholder")), Some("openai-api-key"));
        assert_eq!(detect(&splice(&anthropic(111), 40, "changeme")), Some("anthropic-api-key"));
        let t = jwt(112);
        assert_eq!(detect(&splice(&t, t.len() - 10, "fixme")), Some("jwt"));
        let key = pem("RSA ", 113);
        let at = pem_header("RSA ").len() + 10;
        assert_eq!(detect(&splice(&key, at, "your")), Some("private-key"));
        assert_eq!(
            detect(&format!("https://bot:{}@db:5432/app", splice(&secret(114), 6, "your"))),
            Some("url-credentials")
        );
        // generic: an AWS secret access key (40 bytes of base64) and random secrets with a marker inside
        let aws_secret =
            splice(&rand(115, 40, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"), 17, "your");
        assert_eq!(id(scan_value(Some("AWS_SECRET_ACCESS_KEY"), &aws_secret)), Some("generic-secret"));
        for (seed, word) in [(116, "todo"), (117, "Example"), (118, "xxxx"), (119, "REDACTED"), (120, "changeme")] {
            let v = splice(&secret(seed), 9, word);
            assert_eq!(id(scan_value(Some("DB_PASSWORD"), &v)), Some("generic-secret"), "{v}");
            assert_eq!(ids(scan_text(&format!("--api-token={v}"))), ["generic-secret"], "{v}");
        }
    }

    #[test]
    fn references_next_to_real_keys_are_detected() {
        let s = secret(130);
        for v in [
            format!("{s}$(UNDEFINED)"),
            format!("$(UNDEFINED){s}"),
            format!("$(A){s}$(B)"),
            format!("{s}${{UNDEFINED}}"),
            format!("{{{{.Values.prefix}}}}{s}"),
            format!("{s}..."),
            format!("<prefix>{s}"),
        ] {
            assert_eq!(id(scan_value(Some("API_TOKEN"), &v)), Some("generic-secret"), "{v}");
            // in free text `}` and `<` end a value, so a `{{ … }}` / `<…>` prefix hides what follows there
            if !v.starts_with(['{', '<']) {
                assert_eq!(ids(scan_text(&format!("--api-token={v}"))), ["generic-secret"], "{v}");
            }
        }
        assert_eq!(ids(scan_text(&format!("export DB_PASSWORD=$(X){s}; run"))), ["generic-secret"]);
        assert_eq!(detect(&format!("postgres://app:{s}$(X)@db:5432/app")), Some("url-credentials"));
        assert_eq!(detect(&format!("postgres://app:$(X){s}@db:5432/app")), Some("url-credentials"));
        for k in [ghp_rand(131), aws_key(132), stripe(133, "sk_live"), slack_bot(134), openai_proj(135)] {
            let want = detect(&k);
            assert!(want.is_some(), "{k}");
            assert_eq!(detect(&format!("{k}$(UNDEFINED)")), want, "{k}");
            assert_eq!(detect(&format!("$(UNDEFINED){k}")), want, "{k}");
            assert_eq!(id(scan_value(Some("API_TOKEN"), &format!("{k}$(UNDEFINED)"))), want, "{k}");
        }
    }

    #[test]
    fn genuine_placeholders_still_pass() {
        for v in [
            "<your-api-key>",
            "<YOUR API KEY 1>",
            "YOUR_API_KEY_HERE",
            "YOUR_API_KEY_1234",
            "your-token-here-1234",
            "YourApiKeyGoesHere123",
            "changeme",
            "ChangeMe123!",
            "change-me-42",
            "replace_me_with_real_token_1",
            "xxxxxxxx",
            "xxxx-xxxx-xxxx-1234",
            "${API_KEY}",
            "$(API_KEY)",
            "$(A)$(B)",
            "$(A):$(B)",
            "${USER}:${PASS}",
            "todo",
            "TODO_set_me_1",
            "example-token",
            "example-token-123",
            "sample_key_0001",
            "sk-...your key...",
            "sk-proj-your-api-key-goes-right-here",
            "sk_live_your_key_here_123",
            "ghp_your_github_token_here",
            "dummy-secret-2024",
            "redacted:123",
            "fixme1234",
            "AKIAIOSFODNN7EXAMPLE",
            "AKIAI44QH8DHBEXAMPLE",
        ] {
            assert_eq!(id(scan_value(Some("API_TOKEN"), v)), None, "{v:?}");
            assert_eq!(ids(scan_text(&format!("--api-token={v}"))), Vec::<&str>::new(), "{v:?}");
            assert_eq!(detect(v), None, "{v:?}");
        }
        for v in ["https://u:$(PW)@h/", "https://u:${PW}@h/", "https://u:<your-password>@h/", "https://u:changeme42@h/"]
        {
            assert_eq!(detect(v), None, "{v}");
        }
        assert_eq!(detect(&format!("AKIA{}", "YOURACCESSKEY123")), None);
        assert_eq!(detect(&format!("ghp_{}", "YOUR_GITHUB_TOKEN".to_owned() + &"x".repeat(19))), None);
    }

    #[test]
    fn reference_stripping() {
        assert_eq!(strip_references("plain"), None);
        assert_eq!(strip_references("a$(B)c").as_deref(), Some("ac"));
        assert_eq!(strip_references("a$(b $(c) d)e").as_deref(), Some("ae"));
        assert_eq!(strip_references("a${B:-x}c{{ d }}e").as_deref(), Some("ace"));
        assert_eq!(strip_references("a$(unclosed").as_deref(), Some("a"));
        assert_eq!(strip_references("<set me>x").as_deref(), Some("x"));
        assert_eq!(strip_references("a<1>b"), None);
        assert_eq!(strip_references("ab...c**d***").as_deref(), Some("abc**d"));
        assert_eq!(strip_references("a…é").as_deref(), Some("aé"));
    }

    fn ghp_rand(seed: u64) -> String {
        format!("gh{}_{}", "p", rand(seed, 36, ALNUM))
    }

    /// Corpus: thousands of generated keys of every detector, some with a marker word overwriting part of
    /// the random material and/or an undefined `$(VAR)` next to them, must all be detected; thousands of
    /// non-secret values in non-secret-named variables must not be. Rates print with `--nocapture`.
    #[test]
    fn corpus_miss_and_false_positive_rates() {
        const N: usize = 2_000;
        const MARKERS: &[&str] =
            &["xxxx", "changeme", "replace", "example", "sample", "your", "dummy", "redacted", "todo", "fixme"];
        let mut rng = Rng::new(0xA6E7_1D00);
        type Gen = fn(&mut Rng) -> (String, std::ops::Range<usize>);
        // Each generator returns a key and the byte range of its random material.
        let gens: &[(&str, &str, Gen)] = &[
            ("aws-access-key-id", "AWS_ACCESS_KEY_ID", |r| (format!("AKIA{}", r.string(16, UPPER_DIGIT)), 4..20)),
            ("github-token", "GH_TOKEN", |r| (format!("gh{}_{}", "p", r.string(36, ALNUM)), 4..40)),
            ("github-token", "GH_TOKEN", |r| (format!("github_{}_{}", "pat", r.string(82, ALNUM)), 11..93)),
            ("anthropic-api-key", "ANTHROPIC_API_KEY", |r| {
                (format!("sk-{}-api03-{}AA", "ant", r.string(93, URLSAFE)), 13..106)
            }),
            ("openai-api-key", "OPENAI_API_KEY", |r| (format!("sk-{}-{}", "proj", r.string(120, URLSAFE)), 8..128)),
            ("openai-api-key", "OPENAI_API_KEY", |r| {
                (format!("sk-{}{}{}", r.string(20, ALNUM), "T3Blbk".to_owned() + "FJ", r.string(20, ALNUM)), 31..51)
            }),
            ("slack-token", "SLACK_BOT_TOKEN", |r| {
                let k = format!("xox{}-{}-{}-{}", "b", r.string(12, DIGITS), r.string(13, DIGITS), r.string(24, ALNUM));
                (k, 32..56)
            }),
            ("slack-token", "SLACK_APP_TOKEN", |r| {
                let k = format!(
                    "x{}-1-A{}-{}-{}",
                    "app",
                    r.string(10, UPPER_DIGIT),
                    r.string(13, DIGITS),
                    r.string(64, HEX)
                );
                (k, 33..97)
            }),
            ("slack-webhook-url", "SLACK_WEBHOOK", |r| {
                let k = format!(
                    "https://hooks.{}.com/services/T{}/B{}/{}",
                    "slack",
                    r.string(8, UPPER_DIGIT),
                    r.string(10, UPPER_DIGIT),
                    r.string(24, ALNUM)
                );
                let n = k.len();
                (k, n - 24..n)
            }),
            ("google-api-key", "GOOGLE_API_KEY", |r| (format!("AI{}{}", "za", r.string(35, URLSAFE)), 4..39)),
            ("stripe-key", "STRIPE_SECRET_KEY", |r| (format!("sk_{}_{}", "live", r.string(24, ALNUM)), 8..32)),
            ("jwt", "ACCESS_TOKEN", |r| {
                let payload = format!(r#"{{"sub":"agent-{}","iat":17{}}}"#, r.string(8, HEX), r.string(8, DIGITS));
                let k = format!(
                    "{}.{}.{}",
                    b64(br#"{"alg":"HS256","typ":"JWT"}"#, true),
                    b64(payload.as_bytes(), true),
                    r.string(43, URLSAFE)
                );
                let n = k.len();
                (k, n - 43..n)
            }),
            ("private-key", "TLS_KEY", |r| {
                let b64_alpha = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
                let lines: Vec<String> = (0..3).map(|_| r.string(64, b64_alpha)).collect();
                let h = format!("-----BEGIN RSA PRIVATE {}-----\n", "KEY");
                let k = format!("{h}{}\n-----END RSA PRIVATE {}-----\n", lines.join("\n"), "KEY");
                (k, h.len()..h.len() + 64)
            }),
            ("url-credentials", "DATABASE_URL", |r| {
                let pw = r.string(20, ALNUM);
                (format!("postgres://app:{pw}@db.svc:5432/app"), 15..35)
            }),
            ("generic-secret", "DB_PASSWORD", |r| (r.string(32, ALNUM), 0..32)),
            ("generic-secret", "WEBHOOK_SECRET", |r| (r.string(64, HEX), 0..64)),
            ("generic-secret", "AWS_SECRET_ACCESS_KEY", |r| {
                let b64_alpha = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
                (r.string(40, b64_alpha), 0..40)
            }),
        ];
        let mut total = 0;
        let mut missed_all = 0;
        for (want, name, generate) in gens {
            let mut missed = Vec::new();
            let t0 = std::time::Instant::now();
            // N keys per detector, shared among its formats
            let n = N.div_ceil(gens.iter().filter(|g| g.0 == *want).count());
            for i in 0..n {
                let (mut key, range) = generate(&mut rng);
                // Half the keys carry a marker word by chance, in the key's own alphabet.
                if i % 2 == 1 {
                    let upper_only = key[range.clone()].bytes().all(|c| !c.is_ascii_lowercase());
                    let hex = key[range.clone()].bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase());
                    // markers of at most half the random part: a chance 9+-letter marker in a 16-character AWS body is 36^-9 or rarer
                    let fits: Vec<&str> = MARKERS.iter().copied().filter(|m| m.len() <= range.len() / 2).collect();
                    let mut m = fits[(rng.next() % fits.len() as u64) as usize].to_owned();
                    if upper_only || (!hex && rng.next().is_multiple_of(2)) {
                        m = m.to_ascii_uppercase();
                    }
                    let at = range.start + (rng.next() % (range.len() - m.len() + 1) as u64) as usize;
                    key = splice(&key, at, &m);
                }
                // A third get an undefined reference appended, a third prepended.
                key = match (i / 2) % 3 {
                    0 => key,
                    1 => format!("{key}$(UNDEFINED_{i})"),
                    _ => format!("$(UNDEFINED_{i}){key}"),
                };
                let got = id(scan_value(Some(name), &key));
                // as free text too, for every 8th key (keeps the test fast in debug builds)
                let text_ok = i % 8 != 0 || ids(scan_text(&format!("{name}={key}"))).first() == Some(want);
                if got != Some(*want) || !text_ok {
                    missed.push(key);
                }
            }
            eprintln!(
                "corpus: {want:<18} ({name}): {n} keys, {} missed ({:.3} %) in {:?}",
                missed.len(),
                missed.len() as f64 * 100.0 / n as f64,
                t0.elapsed()
            );
            assert!(
                missed.is_empty(),
                "{want}: missed {} of {n}, e.g. {:?}",
                missed.len(),
                &missed[..missed.len().min(3)]
            );
            total += n;
            missed_all += missed.len();
        }
        eprintln!("corpus: all detectors: {total} keys, {missed_all} missed");

        // Non-secret values in non-secret-named variables.
        let json_configs: Vec<String> = (0..N)
            .map(|_| {
                let r = &mut rng;
                let json = format!(
                    r#"{{"replicas":{},"region":"eu-west-{}","debug":{},"model":"gpt-{}","timeout":"{}s"}}"#,
                    r.next() % 10,
                    r.next() % 3,
                    r.next().is_multiple_of(2),
                    r.string(3, DIGITS),
                    r.next() % 120
                );
                b64(json.as_bytes(), false)
            })
            .collect();
        type ValueGen<'a> = Box<dyn Fn(&mut Rng, usize) -> String + 'a>;
        let kinds: [(&str, &str, bool, ValueGen<'_>); 6] = [
            (
                "image digest",
                "IMAGE",
                true,
                Box::new(|r, _| format!("ghcr.io/acme/agent@sha256:{}", r.string(64, HEX))),
            ),
            ("commit sha", "GIT_COMMIT", true, Box::new(|r, _| r.string(40, HEX))),
            (
                "uuid",
                "REQUEST_ID",
                true,
                Box::new(|r, _| {
                    let h = r.string(32, HEX);
                    format!("{}-{}-4{}-a{}-{}", &h[..8], &h[8..12], &h[13..16], &h[17..20], &h[20..])
                }),
            ),
            (
                "url",
                "API_ENDPOINT",
                true,
                Box::new(|r, _| {
                    format!(
                        "https://api.{}.example.com/v1/{}/{}?page={}",
                        r.string(6, HEX),
                        r.string(12, ALNUM),
                        r.string(8, HEX),
                        r.next() % 100
                    )
                }),
            ),
            (
                "semver",
                "APP_VERSION",
                true,
                Box::new(|r, _| {
                    format!(
                        "v{}.{}.{}-rc.{}+build.{}",
                        r.next() % 10,
                        r.next() % 50,
                        r.next() % 100,
                        r.next() % 9,
                        r.string(7, HEX)
                    )
                }),
            ),
            ("base64 json config", "APP_CONFIG", false, Box::new(|_, i| json_configs[i].clone())),
        ];
        for (kind, name, must_be_zero, generate) in &kinds {
            let mut flagged = Vec::new();
            for i in 0..N {
                let v = generate(&mut rng, i);
                if scan_value(Some(name), &v).is_some() || (i % 8 == 0 && !scan_text(&format!("{name}={v}")).is_empty())
                {
                    flagged.push(v);
                }
            }
            eprintln!(
                "corpus: non-secret {kind:<18} ({name}): {N} values, {} flagged ({:.3} % false positives)",
                flagged.len(),
                flagged.len() as f64 * 100.0 / N as f64
            );
            if *must_be_zero {
                assert!(flagged.is_empty(), "{kind}: {:?}", &flagged[..flagged.len().min(3)]);
            }
        }
    }
}
