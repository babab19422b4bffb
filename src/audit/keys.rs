//! The trail's keys: an Ed25519 signing key for checkpoints and an HMAC key for fingerprints, in a Secret
//! in the operator's namespace, generated on first start when absent (every replica then shares them).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::Ed25519KeyPair;

use super::AuditError;

/// Default name of the Secret holding the keys.
pub const KEY_SECRET: &str = "agentid-audit-key";
const SIGNING_KEY: &str = "ed25519.pkcs8";
const FINGERPRINT_KEY: &str = "fingerprint.key";

/// The keys of the trail.
pub struct AuditKeys {
    pub signing: Ed25519KeyPair,
    pub fingerprint: hmac::Key,
}

impl AuditKeys {
    /// From the Secret's bytes.
    pub fn from_bytes(pkcs8: &[u8], fingerprint: &[u8]) -> Result<Self, AuditError> {
        let signing = Ed25519KeyPair::from_pkcs8(pkcs8)
            .map_err(|e| AuditError::Key(format!("{SIGNING_KEY} is not an Ed25519 PKCS#8 key: {e}")))?;
        if fingerprint.len() < 32 {
            return Err(AuditError::Key(format!("{FINGERPRINT_KEY} must hold at least 32 bytes")));
        }
        Ok(AuditKeys { signing, fingerprint: hmac::Key::new(hmac::HMAC_SHA256, fingerprint) })
    }

    /// Fresh keys, with the bytes to store.
    pub fn generate() -> Result<(Self, Vec<u8>, Vec<u8>), AuditError> {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| AuditError::Key("cannot generate an Ed25519 key".into()))?
            .as_ref()
            .to_vec();
        let mut fp = vec![0u8; 32];
        rng.fill(&mut fp).map_err(|_| AuditError::Key("the system random generator failed".into()))?;
        let keys = AuditKeys::from_bytes(&pkcs8, &fp)?;
        Ok((keys, pkcs8, fp))
    }
}

fn from_secret(s: &Secret) -> Result<AuditKeys, AuditError> {
    let data = s.data.as_ref();
    let get = |k: &str| {
        data.and_then(|d| d.get(k))
            .map(|b| b.0.clone())
            .ok_or_else(|| AuditError::Key(format!("Secret {} has no {k}", s.metadata.name.as_deref().unwrap_or(""))))
    };
    AuditKeys::from_bytes(&get(SIGNING_KEY)?, &get(FINGERPRINT_KEY)?)
}

/// Reads the keys from the Secret `namespace/name`, creating it on first start. When several replicas
/// start at once, the first create wins and the others read what it stored.
pub async fn load_or_create(client: Client, namespace: &str, name: &str) -> Result<AuditKeys, AuditError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let api_err = |e: kube::Error| AuditError::Key(format!("Secret {namespace}/{name}: {e}"));
    if let Some(s) = api.get_opt(name).await.map_err(api_err)? {
        return from_secret(&s);
    }
    let (keys, pkcs8, fp) = AuditKeys::generate()?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(
                crate::api::MANAGED_BY_LABEL.to_string(),
                crate::api::MANAGED_BY.to_string(),
            )])),
            ..Default::default()
        },
        immutable: Some(true),
        type_: Some("agentid.dev/audit-key".into()),
        data: Some(BTreeMap::from([
            (SIGNING_KEY.to_string(), ByteString(pkcs8)),
            (FINGERPRINT_KEY.to_string(), ByteString(fp)),
        ])),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(keys),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let s = api.get(name).await.map_err(api_err)?;
            from_secret(&s)
        }
        Err(e) => Err(api_err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_round_trip_and_bad_bytes_are_refused() {
        let (_, pkcs8, fp) = AuditKeys::generate().unwrap();
        assert!(AuditKeys::from_bytes(&pkcs8, &fp).is_ok());
        assert!(AuditKeys::from_bytes(b"junk", &fp).is_err());
        assert!(AuditKeys::from_bytes(&pkcs8, b"short").is_err());
    }
}
