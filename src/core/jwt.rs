//! Verifying Kubernetes ServiceAccount tokens locally — signature against the issuer's published keys
//! (JWKS), issuer, audience, expiry — and reading the claims agentid binds identities to: the
//! ServiceAccount (name and uid) and, for a task token, the bound anchor Secret (name and uid).
//!
//! Pure: the keys and the time are passed in; the shell fetches the JWKS (and fetches it again when a
//! token names a key it does not know). RS256 and ES256, the algorithms kube-apiserver signs with.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

/// One key of a JWKS.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Jwk {
    #[serde(default)]
    pub kid: String,
    pub kty: String,
    #[serde(default)]
    pub alg: Option<String>,
    #[serde(default, rename = "use")]
    pub use_: Option<String>,
    #[serde(default)]
    pub n: Option<String>,
    #[serde(default)]
    pub e: Option<String>,
    #[serde(default)]
    pub crv: Option<String>,
    #[serde(default)]
    pub x: Option<String>,
    #[serde(default)]
    pub y: Option<String>,
}

/// A JSON Web Key Set (`/openid/v1/jwks`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct KeySet {
    #[serde(default)]
    pub keys: Vec<Jwk>,
}

impl KeySet {
    pub fn parse(json: &[u8]) -> Result<KeySet, String> {
        serde_json::from_slice(json).map_err(|e| format!("not a JWKS: {e}"))
    }

    fn find(&self, kid: &str) -> Option<&Jwk> {
        self.keys.iter().find(|k| k.kid == kid && k.use_.as_deref().is_none_or(|u| u == "sig"))
    }
}

/// Why a token is not accepted. Messages never contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a JWT")]
    Malformed,
    #[error("the token is signed with {0:?}, which agentid does not accept")]
    UnsupportedAlgorithm(String),
    #[error("the token is signed by a key the issuer does not publish")]
    UnknownKey,
    #[error("the token's signature is not valid")]
    BadSignature,
    #[error("the token was not issued by the cluster's ServiceAccount issuer")]
    WrongIssuer,
    #[error("the token is not meant for this audience")]
    WrongAudience,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is not a ServiceAccount token")]
    NotAServiceAccountToken,
}

impl TokenError {
    /// Whether fetching the issuer's keys again might help.
    pub fn is_unknown_key(&self) -> bool {
        matches!(self, TokenError::UnknownKey)
    }
}

#[derive(Debug, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: String,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct NameUid {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub uid: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct KubernetesClaims {
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub serviceaccount: Option<NameUid>,
    /// The object the token is bound to, when it is a Secret (task tokens are bound to the task's anchor).
    #[serde(default)]
    pub secret: Option<NameUid>,
    #[serde(default)]
    pub pod: Option<NameUid>,
}

#[derive(Debug, Deserialize)]
struct RawClaims {
    #[serde(default)]
    iss: String,
    #[serde(default)]
    sub: String,
    aud: Option<Audience>,
    exp: Option<i64>,
    nbf: Option<i64>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(rename = "kubernetes.io")]
    kubernetes: Option<KubernetesClaims>,
}

/// What a verified ServiceAccount token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountToken {
    pub namespace: String,
    pub service_account: NameUid,
    /// The bound Secret (a task's anchor), if the token is bound to one.
    pub secret: Option<NameUid>,
    pub audiences: Vec<String>,
    pub expires_at: i64,
    /// The token's id (`jti`), the apiserver's credential id for audit joins.
    pub id: Option<String>,
    pub subject: String,
}

/// The `jti` of a token, read without verifying it: only for a token agentid itself just received from
/// the apiserver's TokenRequest (the broker records it so the apiserver's audit events join the task).
pub fn unverified_id(token: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Id {
        jti: Option<String>,
    }
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice::<Id>(&bytes).ok()?.jti.filter(|j| !j.is_empty())
}

/// Seconds of clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: i64 = 30;

fn b64(part: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD.decode(part).map_err(|_| TokenError::Malformed)
}

/// Verifies `token` against `keys` and `issuer` at `now` (Unix seconds) and returns its claims;
/// `audience_ok` decides whether its audiences are acceptable (the caller knows which are).
pub fn verify(
    token: &str,
    keys: &KeySet,
    issuer: &str,
    now: i64,
    audience_ok: &dyn Fn(&[String]) -> bool,
) -> Result<ServiceAccountToken, TokenError> {
    if token.len() > 16 * 1024 {
        return Err(TokenError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(TokenError::Malformed);
    };
    let header: Header = serde_json::from_slice(&b64(h)?).map_err(|_| TokenError::Malformed)?;
    let signature = b64(s)?;
    let signed = &token.as_bytes()[..h.len() + 1 + p.len()];
    let key = keys.find(&header.kid).ok_or(TokenError::UnknownKey)?;
    verify_signature(&header.alg, key, signed, &signature)?;

    let claims: RawClaims = serde_json::from_slice(&b64(p)?).map_err(|_| TokenError::Malformed)?;
    if claims.iss != issuer {
        return Err(TokenError::WrongIssuer);
    }
    let exp = claims.exp.ok_or(TokenError::Malformed)?;
    if now > exp.saturating_add(LEEWAY_SECS) {
        return Err(TokenError::Expired);
    }
    if claims.nbf.is_some_and(|nbf| now < nbf.saturating_sub(LEEWAY_SECS)) {
        return Err(TokenError::NotYetValid);
    }
    let audiences = match claims.aud {
        Some(Audience::One(a)) => vec![a],
        Some(Audience::Many(a)) => a,
        None => Vec::new(),
    };
    if audiences.is_empty() || !audience_ok(&audiences) {
        return Err(TokenError::WrongAudience);
    }
    let k = claims.kubernetes.ok_or(TokenError::NotAServiceAccountToken)?;
    let sa = k.serviceaccount.filter(|sa| !sa.name.is_empty() && !sa.uid.is_empty());
    let sa = sa.ok_or(TokenError::NotAServiceAccountToken)?;
    if k.namespace.is_empty() || claims.sub != format!("system:serviceaccount:{}:{}", k.namespace, sa.name) {
        return Err(TokenError::NotAServiceAccountToken);
    }
    Ok(ServiceAccountToken {
        namespace: k.namespace,
        service_account: sa,
        secret: k.secret,
        audiences,
        expires_at: exp,
        id: claims.jti,
        subject: claims.sub,
    })
}

fn verify_signature(alg: &str, key: &Jwk, signed: &[u8], signature: &[u8]) -> Result<(), TokenError> {
    use ring::signature;
    if key.alg.as_deref().is_some_and(|a| a != alg) {
        return Err(TokenError::BadSignature);
    }
    match (alg, key.kty.as_str()) {
        ("RS256", "RSA") => {
            let n = b64(key.n.as_deref().ok_or(TokenError::UnknownKey)?)?;
            let e = b64(key.e.as_deref().ok_or(TokenError::UnknownKey)?)?;
            signature::RsaPublicKeyComponents { n: &n, e: &e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, signed, signature)
                .map_err(|_| TokenError::BadSignature)
        }
        ("ES256", "EC") if key.crv.as_deref() == Some("P-256") => {
            let x = b64(key.x.as_deref().ok_or(TokenError::UnknownKey)?)?;
            let y = b64(key.y.as_deref().ok_or(TokenError::UnknownKey)?)?;
            let mut point = Vec::with_capacity(65);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &point)
                .verify(signed, signature)
                .map_err(|_| TokenError::BadSignature)
        }
        (alg, _) => Err(TokenError::UnsupportedAlgorithm(alg.to_string())),
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Signing test tokens with a generated P-256 key (the same shape kube-apiserver produces).
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

    pub struct Signer {
        key: EcdsaKeyPair,
        pub kid: String,
    }

    impl Signer {
        pub fn new(kid: &str) -> Signer {
            let rng = SystemRandom::new();
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
            Signer { key, kid: kid.into() }
        }

        pub fn jwk(&self) -> Jwk {
            let point = self.key.public_key().as_ref();
            Jwk {
                kid: self.kid.clone(),
                kty: "EC".into(),
                alg: Some("ES256".into()),
                use_: Some("sig".into()),
                n: None,
                e: None,
                crv: Some("P-256".into()),
                x: Some(URL_SAFE_NO_PAD.encode(&point[1..33])),
                y: Some(URL_SAFE_NO_PAD.encode(&point[33..65])),
            }
        }

        pub fn sign(&self, claims: &serde_json::Value) -> String {
            let header = serde_json::json!({"alg": "ES256", "kid": self.kid});
            let signed = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header.to_string()),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            );
            let sig = self.key.sign(&SystemRandom::new(), signed.as_bytes()).unwrap();
            format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
        }
    }

    /// Claims of a token of ServiceAccount `ns/sa` (uid `sa-uid`), optionally bound to Secret `secret`.
    pub fn claims(ns: &str, sa: &str, aud: &str, exp: i64, secret: Option<(&str, &str)>) -> serde_json::Value {
        let mut k = serde_json::json!({"namespace": ns, "serviceaccount": {"name": sa, "uid": format!("{sa}-uid")}});
        if let Some((name, uid)) = secret {
            k["secret"] = serde_json::json!({"name": name, "uid": uid});
        }
        serde_json::json!({"iss": "https://kubernetes.default.svc", "sub": format!("system:serviceaccount:{ns}:{sa}"),
            "aud": [aud], "exp": exp, "nbf": exp - 600, "iat": exp - 600, "jti": "jti-1", "kubernetes.io": k})
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    const ISS: &str = "https://kubernetes.default.svc";

    fn keys(s: &Signer) -> KeySet {
        KeySet { keys: vec![s.jwk()] }
    }

    fn aud(expected: &'static str) -> impl Fn(&[String]) -> bool {
        move |a: &[String]| a.iter().any(|x| x == expected)
    }

    #[test]
    fn a_good_token_is_verified_and_its_bindings_read() {
        let s = Signer::new("k1");
        let t = s.sign(&claims("agents", "agent-bot", "pdp", 2_000, Some(("agentid-task-t1", "sec-uid"))));
        let v = verify(&t, &keys(&s), ISS, 1_900, &aud("pdp")).unwrap();
        assert_eq!(v.namespace, "agents");
        assert_eq!(v.service_account, NameUid { name: "agent-bot".into(), uid: "agent-bot-uid".into() });
        assert_eq!(v.secret, Some(NameUid { name: "agentid-task-t1".into(), uid: "sec-uid".into() }));
        assert_eq!(v.id.as_deref(), Some("jti-1"));
        assert_eq!(unverified_id(&t).as_deref(), Some("jti-1"));
    }

    #[test]
    fn unverified_ids_of_garbage_are_none() {
        for t in ["", "a", "a.b", "a.!!.c", "a.e30.c", "a.eyJqdGkiOiIifQ.c", "a.eyJqdGkiOjF9.c"] {
            assert_eq!(unverified_id(t), None, "{t}");
        }
    }

    #[test]
    fn every_way_a_token_can_be_wrong_is_refused() {
        let s = Signer::new("k1");
        let other = Signer::new("k1");
        let good = claims("agents", "agent-bot", "pdp", 2_000, None);
        let t = s.sign(&good);
        let k = keys(&s);
        assert_eq!(verify(&t, &k, ISS, 2_000 + LEEWAY_SECS + 1, &aud("pdp")), Err(TokenError::Expired));
        assert_eq!(verify(&t, &k, ISS, 1_000, &aud("pdp")), Err(TokenError::NotYetValid));
        assert_eq!(verify(&t, &k, "https://evil", 1_900, &aud("pdp")), Err(TokenError::WrongIssuer));
        assert_eq!(verify(&t, &k, ISS, 1_900, &aud("other")), Err(TokenError::WrongAudience));
        // Same kid, another key: the signature does not verify.
        assert_eq!(verify(&other.sign(&good), &k, ISS, 1_900, &aud("pdp")), Err(TokenError::BadSignature));
        assert_eq!(verify(&Signer::new("k2").sign(&good), &k, ISS, 1_900, &aud("pdp")), Err(TokenError::UnknownKey));
        // A payload swapped under a valid signature.
        let forged = claims("agents", "agent-admin", "pdp", 2_000, None);
        let parts: Vec<&str> = t.split('.').collect();
        let swapped = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(forged.to_string()), parts[2]);
        assert_eq!(verify(&swapped, &k, ISS, 1_900, &aud("pdp")), Err(TokenError::BadSignature));
        // alg none, garbage, and a subject that does not match the ServiceAccount claim.
        let none = format!("{}.{}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"k1"}"#), parts[1]);
        assert!(verify(&none, &k, ISS, 1_900, &aud("pdp")).is_err());
        for garbage in ["", "a.b", "a.b.c", "....", &"x".repeat(20_000)] {
            assert!(verify(garbage, &k, ISS, 1_900, &aud("pdp")).is_err(), "{garbage}");
        }
        let mut bad_sub = good.clone();
        bad_sub["sub"] = "system:serviceaccount:agents:someone-else".into();
        assert_eq!(verify(&s.sign(&bad_sub), &k, ISS, 1_900, &aud("pdp")), Err(TokenError::NotAServiceAccountToken));
        let mut no_k8s = good;
        no_k8s.as_object_mut().unwrap().remove("kubernetes.io");
        assert_eq!(verify(&s.sign(&no_k8s), &k, ISS, 1_900, &aud("pdp")), Err(TokenError::NotAServiceAccountToken));
    }

    #[test]
    fn rsa_keys_from_a_jwks_verify_rs256() {
        // A JWKS as kube-apiserver publishes it (the real apiserver's RS256 tokens are verified in e2e_pdp).
        let jwks =
            KeySet::parse(br#"{"keys":[{"use":"sig","kty":"RSA","kid":"k","alg":"RS256","n":"xyzw","e":"AQAB"}]}"#)
                .unwrap();
        assert_eq!(jwks.keys[0].kty, "RSA");
        // A bogus modulus never verifies (and never panics).
        let s = Signer::new("k");
        let mut t = s.sign(&claims("a", "b", "pdp", 2_000, None));
        t = t.replacen(&t[..t.find('.').unwrap()], &URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","kid":"k"}"#), 1);
        assert_eq!(verify(&t, &jwks, ISS, 1_900, &aud("pdp")), Err(TokenError::BadSignature));
    }
}
