//! Serving certificates for the admission endpoint.
//!
//! Two sources:
//! - **self-managed** (default): agentid keeps a CA and a serving certificate in
//!   a Secret in its own namespace, shared by every replica; the serving
//!   certificate is renewed when a third of its life is left, and every replica
//!   reloads it without a restart. The CA (10 years) signs each renewal, so the
//!   webhook configuration's caBundle stays valid across renewals.
//! - **files** (`--tls-cert-file`/`--tls-key-file`, e.g. from cert-manager):
//!   polled and reloaded on change; the caBundle comes from `--ca-bundle-file`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::{Api, Client};
use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use crate::api::{MANAGED_BY, MANAGED_BY_LABEL};
use crate::error::{Error, Result};

/// PEM material the server needs.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsMaterial {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// CA bundle for the webhook configuration; `None` when something else manages it.
    pub ca_pem: Option<Vec<u8>>,
    /// When the serving certificate expires (self-managed only).
    pub not_after: Option<Timestamp>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("TlsMaterial").field("not_after", &self.not_after).finish_non_exhaustive()
    }
}

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const TLS_CERT: &str = "tls.crt";
const TLS_KEY: &str = "tls.key";
const NOT_AFTER_ANNOTATION: &str = "agentid.dev/not-after";
const CA_NAME: &str = "agentid webhook CA";

fn tls_err(e: impl std::fmt::Display) -> Error {
    Error::Tls(e.to_string())
}

fn to_offset(t: Timestamp) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(t.as_second()).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn ca_params() -> Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(p)
}

/// A new CA: `(cert_pem, key_pem)`.
pub fn generate_ca(now: Timestamp) -> Result<(String, String)> {
    let key = KeyPair::generate().map_err(tls_err)?;
    let mut p = ca_params()?;
    p.not_before = to_offset(now - SignedDuration::from_hours(1));
    p.not_after = to_offset(now + SignedDuration::from_hours(24 * 3650));
    let cert = p.self_signed(&key).map_err(tls_err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A serving certificate for `sans` signed by the CA: `(cert_pem, key_pem, not_after)`.
pub fn generate_serving(
    ca_key_pem: &str,
    sans: &[String],
    now: Timestamp,
    validity: Duration,
) -> Result<(String, String, Timestamp)> {
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(tls_err)?;
    let issuer = Issuer::new(ca_params()?, ca_key);
    let key = KeyPair::generate().map_err(tls_err)?;
    let mut p = CertificateParams::new(sans.to_vec()).map_err(tls_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "agentid-webhook");
    p.distinguished_name = dn;
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let not_after = now + SignedDuration::try_from(validity).map_err(tls_err)?;
    p.not_before = to_offset(now - SignedDuration::from_mins(5));
    p.not_after = to_offset(not_after);
    let cert = p.signed_by(&key, &issuer).map_err(tls_err)?;
    // Whole seconds, as stored in the annotation.
    Ok((cert.pem(), key.serialize_pem(), Timestamp::from_second(not_after.as_second()).map_err(tls_err)?))
}

/// Where the operator keeps its self-managed certificate.
#[derive(Clone, Debug)]
pub struct SelfManaged {
    pub namespace: String,
    pub secret_name: String,
    pub sans: Vec<String>,
    pub validity: Duration,
}

impl SelfManaged {
    /// The CA of the Secret, `(cert_pem, key_pem)`, when both are there and parse: a new serving certificate
    /// is signed by it, so the webhook's caBundle stays valid.
    fn ca_from_secret(s: &Secret) -> Option<(Vec<u8>, Vec<u8>)> {
        let data = s.data.as_ref()?;
        let get = |k: &str| data.get(k).map(|b| b.0.clone()).filter(|v| !v.is_empty());
        let (cert, key) = (get(CA_CERT)?, get(CA_KEY)?);
        CertificateDer::from_pem_slice(&cert).ok()?;
        KeyPair::from_pem(std::str::from_utf8(&key).ok()?).ok()?;
        Some((cert, key))
    }

    /// The serving material of the Secret when it is usable: its CA is ([`Self::ca_from_secret`]), the
    /// certificate and key parse and belong together, the expiry annotation parses. A Secret that is not
    /// (deleted, or garbage written into it) is issued again by [`Self::ensure`].
    fn from_secret(s: &Secret) -> Option<TlsMaterial> {
        let (ca_pem, _) = Self::ca_from_secret(s)?;
        let data = s.data.as_ref()?;
        let get = |k: &str| data.get(k).map(|b| b.0.clone()).filter(|v| !v.is_empty());
        let not_after = s.metadata.annotations.as_ref()?.get(NOT_AFTER_ANNOTATION)?.parse::<Timestamp>().ok()?;
        let material = TlsMaterial {
            cert_pem: get(TLS_CERT)?,
            key_pem: get(TLS_KEY)?,
            ca_pem: Some(ca_pem),
            not_after: Some(not_after),
        };
        server_config(&material, None).ok()?;
        Some(material)
    }

    /// Loads the certificate from the Secret, creating or renewing it when it is
    /// missing, broken or has less than a third of its life left. Safe to run
    /// on every replica at once: writes use optimistic concurrency and a loser re-reads.
    pub async fn ensure(&self, client: &Client, now: Timestamp) -> Result<TlsMaterial> {
        let api: Api<Secret> = Api::namespaced(client.clone(), &self.namespace);
        for _ in 0..5 {
            let existing = api.get_opt(&self.secret_name).await?;
            let parsed = existing.as_ref().and_then(Self::from_secret);
            let renew_before = SignedDuration::try_from(self.validity / 3).map_err(tls_err)?;
            if let Some(m) = &parsed
                && m.not_after.is_some_and(|na| na - renew_before > now)
            {
                return Ok(m.clone());
            }
            if existing.is_some() && parsed.is_none() {
                tracing::warn!(secret = %self.secret_name, "the webhook certificate Secret is broken; issuing a new certificate");
            }
            // Keep the CA if there is a usable one, so the caBundle survives renewal.
            let (ca_cert, ca_key) = match existing.as_ref().and_then(Self::ca_from_secret) {
                Some((cert, key)) => {
                    (String::from_utf8_lossy(&cert).into_owned(), String::from_utf8_lossy(&key).into_owned())
                }
                None => generate_ca(now)?,
            };
            let (cert, key, not_after) = generate_serving(&ca_key, &self.sans, now, self.validity)?;
            let data = BTreeMap::from([
                (CA_CERT.to_string(), ByteString(ca_cert.clone().into_bytes())),
                (CA_KEY.to_string(), ByteString(ca_key.into_bytes())),
                (TLS_CERT.to_string(), ByteString(cert.clone().into_bytes())),
                (TLS_KEY.to_string(), ByteString(key.clone().into_bytes())),
            ]);
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(self.secret_name.clone()),
                    namespace: Some(self.namespace.clone()),
                    labels: Some(BTreeMap::from([(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string())])),
                    annotations: Some(BTreeMap::from([(NOT_AFTER_ANNOTATION.to_string(), not_after.to_string())])),
                    resource_version: existing.as_ref().and_then(|s| s.metadata.resource_version.clone()),
                    ..Default::default()
                },
                data: Some(data),
                type_: Some("kubernetes.io/tls".into()),
                ..Default::default()
            };
            let res = match existing {
                Some(_) => api.replace(&self.secret_name, &PostParams::default(), &secret).await,
                None => api.create(&PostParams::default(), &secret).await,
            };
            match res {
                Ok(_) => {
                    tracing::info!(secret = %self.secret_name, %not_after, "webhook serving certificate issued");
                    return Ok(TlsMaterial {
                        cert_pem: cert.into_bytes(),
                        key_pem: key.into_bytes(),
                        ca_pem: Some(ca_cert.into_bytes()),
                        not_after: Some(not_after),
                    });
                }
                // Another replica won the race: use what it wrote.
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Tls("could not settle the webhook certificate Secret after 5 attempts".into()))
    }
}

/// Certificate files written by something else (cert-manager, a CSI driver).
#[derive(Clone, Debug)]
pub struct Files {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca_bundle: Option<PathBuf>,
}

impl Files {
    pub async fn load(&self) -> Result<TlsMaterial> {
        let read = |p: PathBuf| async move {
            tokio::fs::read(&p).await.map_err(|e| Error::Tls(format!("cannot read {}: {e}", p.display())))
        };
        let ca_pem = match &self.ca_bundle {
            Some(p) => Some(read(p.clone()).await?),
            None => None,
        };
        Ok(TlsMaterial {
            cert_pem: read(self.cert.clone()).await?,
            key_pem: read(self.key.clone()).await?,
            ca_pem,
            not_after: None,
        })
    }
}

/// Where the serving certificate comes from.
#[derive(Clone, Debug)]
pub enum CertSource {
    SelfManaged(SelfManaged),
    Files(Files),
}

impl CertSource {
    pub async fn load(&self, client: &Client) -> Result<TlsMaterial> {
        match self {
            CertSource::SelfManaged(s) => s.ensure(client, Timestamp::now()).await,
            CertSource::Files(f) => f.load().await,
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls configuration of a listener: the serving certificate, HTTP/2 and HTTP/1.1 by ALPN, and,
/// with `client_ca_pem`, a client certificate signed by one of those CAs required on every connection
/// (the apiserver's, for the admission endpoints).
pub fn server_config(material: &TlsMaterial, client_ca_pem: Option<&[u8]>) -> Result<Arc<rustls::ServerConfig>> {
    server_config_with(material, client_ca_pem, true)
}

/// [`server_config`], with the client certificate `required` or only verified when one is presented
/// (the decision point: agents call it with bearer tokens, enforcement points with certificates).
pub fn server_config_with(
    material: &TlsMaterial,
    client_ca_pem: Option<&[u8]>,
    required: bool,
) -> Result<Arc<rustls::ServerConfig>> {
    use rustls_pki_types::PrivateKeyDer;
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&material.cert_pem).collect::<Result<_, _>>().map_err(tls_err)?;
    if certs.is_empty() {
        return Err(Error::Tls("the serving certificate file holds no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&material.key_pem).map_err(tls_err)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?;
    let builder = match client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(pem) {
                roots.add(c.map_err(tls_err)?).map_err(tls_err)?;
            }
            if roots.is_empty() {
                return Err(Error::Tls("the client CA bundle holds no certificate".into()));
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let verifier = if required { verifier } else { verifier.allow_unauthenticated() };
            let verifier = verifier.build().map_err(tls_err)?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(tls_err)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Proves the server really serves TLS with this CA: a TLS handshake and a
/// `GET /healthz` on `addr`. Readiness waits for this. A listener that requires client certificates
/// (which the self-check does not have) proves itself by the verified handshake and by refusing
/// the request for want of a certificate.
pub async fn self_check(addr: std::net::SocketAddr, ca_pem: &[u8], server_name: &str) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c.map_err(tls_err)?).map_err(tls_err)?;
    }
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from(server_name.to_string()).map_err(tls_err)?;
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    if let Err(e) = tls.read_to_end(&mut buf).await
        && e.to_string().contains("CertificateRequired")
    {
        return Ok(());
    }
    if buf.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        Err(Error::Tls(format!("self-check got {:?}", String::from_utf8_lossy(&buf[..buf.len().min(40)]))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_certificates_chain_to_the_ca() {
        let now = Timestamp::now();
        let (ca, ca_key) = generate_ca(now).unwrap();
        let (cert, key, not_after) =
            generate_serving(&ca_key, &["127.0.0.1".into(), "localhost".into()], now, Duration::from_secs(3600))
                .unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(key.contains("PRIVATE KEY"));
        assert!(not_after.as_second() - now.as_second() > 3590);
        // rustls accepts the chain for 127.0.0.1.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap()).unwrap();
        use rustls::client::danger::ServerCertVerifier;
        let verifier = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots)).build().unwrap();
        let leaf = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        verifier
            .verify_server_cert(&leaf, &[], &name, &[], rustls::pki_types::UnixTime::now())
            .expect("leaf verifies against the CA");
    }

    /// A Secret as [`SelfManaged::ensure`] writes it, for `sans`.
    fn issued_secret(now: Timestamp) -> Secret {
        let (ca, ca_key) = generate_ca(now).unwrap();
        let (cert, key, not_after) =
            generate_serving(&ca_key, &["localhost".into()], now, Duration::from_secs(3600)).unwrap();
        let data = [(CA_CERT, ca), (CA_KEY, ca_key), (TLS_CERT, cert), (TLS_KEY, key)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
            .collect();
        Secret {
            metadata: ObjectMeta {
                annotations: Some(BTreeMap::from([(NOT_AFTER_ANNOTATION.to_string(), not_after.to_string())])),
                ..Default::default()
            },
            data: Some(data),
            ..Default::default()
        }
    }

    fn set(s: &mut Secret, key: &str, value: &[u8]) {
        s.data.as_mut().unwrap().insert(key.to_string(), ByteString(value.to_vec()));
    }

    #[test]
    fn a_broken_secret_is_not_served_and_keeps_a_usable_ca() {
        let now = Timestamp::now();
        let good = issued_secret(now);
        let m = SelfManaged::from_secret(&good).expect("a freshly issued Secret is usable");
        assert_eq!(m.ca_pem.as_deref(), Some(good.data.as_ref().unwrap()[CA_CERT].0.as_slice()));

        // garbage instead of the serving certificate: broken, but its CA still signs the next one
        let mut garbage = good.clone();
        set(&mut garbage, TLS_CERT, b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n");
        assert!(SelfManaged::from_secret(&garbage).is_none());
        assert!(SelfManaged::ca_from_secret(&garbage).is_some());
        set(&mut garbage, TLS_CERT, b"not PEM at all");
        assert!(SelfManaged::from_secret(&garbage).is_none());

        // a certificate with someone else's key
        let mut mismatched = good.clone();
        let other = issued_secret(now);
        set(&mut mismatched, TLS_KEY, &other.data.as_ref().unwrap()[TLS_KEY].0);
        assert!(SelfManaged::from_secret(&mismatched).is_none());

        // a broken CA: nothing of the Secret is usable
        let mut broken_ca = good.clone();
        set(&mut broken_ca, CA_KEY, b"garbage");
        assert!(SelfManaged::from_secret(&broken_ca).is_none());
        assert!(SelfManaged::ca_from_secret(&broken_ca).is_none());

        // no expiry annotation: renewed
        let mut unannotated = good;
        unannotated.metadata.annotations = None;
        assert!(SelfManaged::from_secret(&unannotated).is_none());
    }

    #[test]
    fn debug_never_prints_keys() {
        let m = TlsMaterial { cert_pem: b"C".to_vec(), key_pem: b"SECRET-KEY".to_vec(), ca_pem: None, not_after: None };
        assert!(!format!("{m:?}").contains("SECRET-KEY"));
    }
}
