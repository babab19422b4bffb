//! Signed checkpoints: {chain id, seq, head hash, time}, signed with Ed25519 over a fixed text form (like a
//! transparency log's signed note). A checkpoint proves who wrote the chain up to `seq`; anchored where
//! the writer cannot rewrite it (a create-only AuditCheckpoint object), it also proves the chain was
//! that long with that head, so a later rewrite or truncation shows.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use super::chain::Hash;

/// Version of the checkpoint format (`v`).
pub const CHECKPOINT_VERSION: u32 = 1;

/// A signed checkpoint, as stored in a checkpoints file (one JSON object per line) and in an
/// AuditCheckpoint's spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Checkpoint {
    pub v: u32,
    pub chain: String,
    /// Sequence number of the last record covered.
    pub seq: u64,
    /// Hash of that record's line, lowercase hex.
    pub head: String,
    /// When the checkpoint was made, RFC 3339 UTC.
    pub time: String,
    /// The Ed25519 public key that signed, base64 (32 bytes).
    pub public_key: String,
    /// Ed25519 signature over [`signed_text`], base64 (64 bytes).
    pub signature: String,
}

/// Why a checkpoint is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("unsupported checkpoint version {0}")]
    Version(u32),
    #[error("head is not a lowercase hex SHA-256")]
    Head,
    #[error("public key is not 32 bytes of base64")]
    PublicKey,
    #[error("signature is not base64")]
    SignatureEncoding,
    #[error("signed by another key than the trusted one")]
    UntrustedKey,
    #[error("signature does not verify (forged or altered checkpoint)")]
    Signature,
}

/// The exact bytes signed.
pub fn signed_text(chain: &str, seq: u64, head: &str, time: &str) -> String {
    format!("agentid.dev/audit-checkpoint/v1\nchain {chain}\nseq {seq}\nhead {head}\ntime {time}\n")
}

/// Signs the chain `chain` at `seq` with head `head`.
pub fn sign(key: &Ed25519KeyPair, chain: &str, seq: u64, head: &Hash, time: &str) -> Checkpoint {
    let head = head.to_hex();
    let sig = key.sign(signed_text(chain, seq, &head, time).as_bytes());
    Checkpoint {
        v: CHECKPOINT_VERSION,
        chain: chain.to_string(),
        seq,
        head,
        time: time.to_string(),
        public_key: B64.encode(key.public_key().as_ref()),
        signature: B64.encode(sig.as_ref()),
    }
}

/// The base64 public key of a key pair, as checkpoints carry it.
pub fn public_key_b64(key: &Ed25519KeyPair) -> String {
    B64.encode(key.public_key().as_ref())
}

/// Checks a checkpoint's signature (and, when given, that the trusted key signed it); returns its head.
pub fn verify(cp: &Checkpoint, trusted_key: Option<&str>) -> Result<Hash, CheckpointError> {
    if cp.v != CHECKPOINT_VERSION {
        return Err(CheckpointError::Version(cp.v));
    }
    let head = Hash::from_hex(&cp.head).ok_or(CheckpointError::Head)?;
    let public = B64.decode(cp.public_key.as_bytes()).map_err(|_| CheckpointError::PublicKey)?;
    if public.len() != 32 {
        return Err(CheckpointError::PublicKey);
    }
    if let Some(trusted) = trusted_key {
        let trusted = B64.decode(trusted.trim().as_bytes()).map_err(|_| CheckpointError::UntrustedKey)?;
        if trusted != public {
            return Err(CheckpointError::UntrustedKey);
        }
    }
    let sig = B64.decode(cp.signature.as_bytes()).map_err(|_| CheckpointError::SignatureEncoding)?;
    UnparsedPublicKey::new(&ED25519, &public)
        .verify(signed_text(&cp.chain, cp.seq, &cp.head, &cp.time).as_bytes(), &sig)
        .map_err(|_| CheckpointError::Signature)?;
    Ok(head)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ring::rand::SystemRandom;

    pub(crate) fn key() -> Ed25519KeyPair {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    #[test]
    fn a_signed_checkpoint_verifies_and_any_change_breaks_it() {
        let k = key();
        let head = Hash::of_line(b"line");
        let cp = sign(&k, "c1", 41, &head, "2026-01-01T00:00:00Z");
        assert_eq!(verify(&cp, None), Ok(head));
        assert_eq!(verify(&cp, Some(&public_key_b64(&k))), Ok(head));
        let mut bad = cp.clone();
        bad.seq = 40;
        assert_eq!(verify(&bad, None), Err(CheckpointError::Signature));
        let mut bad = cp.clone();
        bad.head = Hash::of_line(b"other").to_hex();
        assert_eq!(verify(&bad, None), Err(CheckpointError::Signature));
        let mut bad = cp.clone();
        bad.chain = "c2".into();
        assert_eq!(verify(&bad, None), Err(CheckpointError::Signature));
        let mut bad = cp.clone();
        bad.signature = "!!".into();
        assert_eq!(verify(&bad, None), Err(CheckpointError::SignatureEncoding));
        let mut bad = cp.clone();
        bad.head = "xyz".into();
        assert_eq!(verify(&bad, None), Err(CheckpointError::Head));
    }

    #[test]
    fn a_checkpoint_by_another_key_is_refused_when_a_key_is_trusted() {
        let (k1, k2) = (key(), key());
        let cp = sign(&k2, "c1", 1, &Hash::of_line(b"x"), "t");
        assert_eq!(verify(&cp, Some(&public_key_b64(&k1))), Err(CheckpointError::UntrustedKey));
        // Re-signed by the attacker's own key with the victim's key pasted in: the signature fails.
        let mut pasted = cp.clone();
        pasted.public_key = public_key_b64(&k1);
        assert_eq!(verify(&pasted, Some(&public_key_b64(&k1))), Err(CheckpointError::Signature));
    }
}
