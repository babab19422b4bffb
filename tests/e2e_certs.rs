//! Serving certificates: the self-managed one is renewed under the same CA, and
//! certificate files (as cert-manager writes them) are reloaded while serving.
#![cfg(feature = "e2e")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use agentid::probes::Readiness;
use agentid::server::tls::{self, CertSource, Files, SelfManaged};
use agentid::server::{ServeConfig, serve};

#[tokio::test]
async fn self_managed_certificate_is_renewed_under_the_same_ca() {
    let env = support::env("certs").await;
    let sm = SelfManaged {
        namespace: env.ns.clone(),
        secret_name: "agentid-webhook-tls".into(),
        sans: vec!["localhost".into()],
        validity: Duration::from_secs(3 * 3600),
    };
    let now = Timestamp::now();
    let first = sm.ensure(&env.client, now).await.unwrap();
    // Every replica reads the same material while it is fresh.
    assert_eq!(sm.ensure(&env.client, now + SignedDuration::from_hours(1)).await.unwrap(), first);
    // With less than a third of its life left it is renewed; the CA (and so the caBundle) stays.
    let later = sm.ensure(&env.client, now + SignedDuration::from_mins(121)).await.unwrap();
    assert_ne!(later.cert_pem, first.cert_pem);
    assert_ne!(later.key_pem, first.key_pem);
    assert_eq!(later.ca_pem, first.ca_pem);
    assert!(later.not_after > first.not_after);
}

/// The leaf certificate the server at `addr` presents, trusting `ca`.
async fn served_cert(addr: std::net::SocketAddr, ca: &[u8]) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca).unwrap()).unwrap();
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_files_are_reloaded_while_serving() {
    let client = support::client().await;
    let dir = tempfile::tempdir().unwrap();
    let now = Timestamp::now();
    let (ca, ca_key) = tls::generate_ca(now).unwrap();
    let issue = |name: &str| {
        let (cert, key, _) =
            tls::generate_serving(&ca_key, &["localhost".into()], now, Duration::from_secs(3600)).unwrap();
        std::fs::write(dir.path().join(format!("{name}.crt")), &cert).unwrap();
        std::fs::write(dir.path().join(format!("{name}.key")), &key).unwrap();
        cert
    };
    issue("tls");
    std::fs::write(dir.path().join("ca.crt"), &ca).unwrap();
    let files = Files {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
        ca_bundle: Some(dir.path().join("ca.crt")),
    };
    let cfg = ServeConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        extra: Vec::new(),
        certs: CertSource::Files(files),
        client_ca: None,
        registration: None,
        self_check_name: "localhost".into(),
        reload_interval: Duration::from_millis(200),
        limits: Default::default(),
        metrics: None,
    };
    let ready = Arc::new(Readiness::default());
    let app = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
    let listening = serve(client, app, cfg, ready.clone()).await.unwrap();
    assert!(ready.webhook.load(std::sync::atomic::Ordering::Acquire), "ready once the TLS self-check passed");
    let before = served_cert(listening.webhook, ca.as_bytes()).await;

    // cert-manager renews: new files appear; the server picks them up without a restart.
    let renewed = issue("tls");
    let renewed_der = CertificateDer::from_pem_slice(renewed.as_bytes()).unwrap().to_vec();
    assert_ne!(before, renewed_der);
    support::wait_until(Duration::from_secs(10), "renewed certificate served", || async {
        (served_cert(listening.webhook, ca.as_bytes()).await == renewed_der).then_some(())
    })
    .await;
}
