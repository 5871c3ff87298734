//! The TCP agent handshake against a real daemon (`scry_daemon::serve` on a temporary home,
//! a TCP agent listener on loopback): the daemon proves the token first, registers an agent
//! only for a right proof, refuses a hello without `auth`, a bad nonce and a wrong proof, and
//! serves TLS with its own certificate as the channel binding.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use scry_daemon::{agent_tls, Home, ServeOptions};
use scry_proto::{agent_proof, daemon_proof, proofs_equal, DaemonMessage};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

struct Daemon {
    _dir: tempfile::TempDir,
    home: Home,
    agent_tcp: SocketAddr,
    token: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn daemon() -> Daemon {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = Home::at(dir.path().join("home"));
    let (tx, rx) = tokio::sync::oneshot::channel();
    // Struct update on purpose: options added later keep their defaults here.
    #[allow(clippy::needless_update)]
    let opts = ServeOptions {
        http_addr: Some("127.0.0.1:0".into()),
        agent_tcp: Some("127.0.0.1:0".into()),
        ..Default::default()
    };
    let serve_home = home.clone();
    let task = tokio::spawn(async move {
        let result = scry_daemon::serve(serve_home, opts, move |info| {
            let _ = tx.send(info.agent_tcp.clone());
        })
        .await;
        if let Err(e) = result {
            panic!("the daemon failed: {e}");
        }
    });
    let addr = tokio::time::timeout(Duration::from_secs(30), rx)
        .await
        .expect("the daemon to start")
        .expect("ready")
        .expect("a TCP agent listener");
    let token = std::fs::read_to_string(home.token_file())
        .expect("the token file")
        .trim()
        .to_owned();
    Daemon {
        _dir: dir,
        home,
        agent_tcp: addr.parse().expect("addr"),
        token,
        task,
    }
}

fn hello(proof: Option<&str>) -> Value {
    json!({"type": "hello", "protocol": 1, "agent_version": "0.1.0", "pid": 4242, "ppid": 1,
           "host": "test", "name": "handshake-test", "origin": "embedded",
           "python": {"version": "3.11.7", "implementation": "cpython", "executable": "/usr/bin/python3"},
           "argv": ["x"], "cwd": "/", "started_at": 1.0, "proof": proof})
}

/// One line-based conversation over any stream.
struct Conn<S> {
    io: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    async fn send(&mut self, v: &Value) {
        let mut line = v.to_string();
        line.push('\n');
        self.io
            .get_mut()
            .write_all(line.as_bytes())
            .await
            .expect("send");
    }

    async fn recv(&mut self) -> Option<DaemonMessage> {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(10), self.io.read_line(&mut line))
            .await
            .expect("an answer within 10 s")
            .ok()?;
        (n > 0).then(|| scry_proto::decode_daemon(&line).expect("a daemon message"))
    }

    /// `auth`, the challenge checked against `binding`; returns (agent nonce, daemon nonce).
    async fn authenticate(&mut self, token: &str, binding: &str) -> (String, String) {
        let agent_nonce = "5a".repeat(32);
        self.send(&json!({"type": "auth", "nonce": agent_nonce}))
            .await;
        let Some(DaemonMessage::Challenge { nonce, proof }) = self.recv().await else {
            panic!("no challenge");
        };
        assert!(scry_proto::nonce_ok(&nonce));
        assert!(
            proofs_equal(&daemon_proof(token, &agent_nonce, &nonce, binding), &proof),
            "the daemon's proof verifies with the binding {binding}"
        );
        assert!(!proofs_equal(
            &daemon_proof(token, &agent_nonce, &nonce, "another binding"),
            &proof
        ));
        (agent_nonce, nonce)
    }
}

async fn plain(d: &Daemon) -> (Conn<TcpStream>, String) {
    let s = TcpStream::connect(d.agent_tcp).await.expect("connect");
    let binding =
        agent_tls::plain_binding(s.local_addr().expect("local"), s.peer_addr().expect("peer"));
    (
        Conn {
            io: BufReader::new(s),
        },
        binding,
    )
}

fn refused_reason(m: Option<DaemonMessage>) -> String {
    match m {
        Some(DaemonMessage::Refused { reason, .. }) => reason,
        other => panic!("expected refused, got {other:?}"),
    }
}

#[tokio::test]
async fn a_right_proof_registers_and_wrong_ones_are_refused() {
    let d = daemon().await;

    let (mut c, binding) = plain(&d).await;
    let (an, dn) = c.authenticate(&d.token, &binding).await;
    c.send(&hello(Some(&agent_proof(&d.token, &an, &dn, &binding))))
        .await;
    assert!(
        matches!(c.recv().await, Some(DaemonMessage::Welcome { .. })),
        "a right proof is welcome"
    );

    // A proof made with another token, one over another binding (what a relay would
    // forward: the agent saw other connection ends), and none at all.
    for case in ["other token", "other binding", "none"] {
        let (mut c, binding) = plain(&d).await;
        let (an, dn) = c.authenticate(&d.token, &binding).await;
        let proof = match case {
            "other token" => Some(agent_proof("not-the-token", &an, &dn, &binding)),
            "other binding" => Some(agent_proof(&d.token, &an, &dn, "tcp:10.0.0.1:5>10.0.0.2:6")),
            _ => None,
        };
        c.send(&hello(proof.as_deref())).await;
        let reason = refused_reason(c.recv().await);
        assert!(
            reason.contains("did not prove that it holds the daemon's token"),
            "{case}: {reason}"
        );
    }

    // A hello first (an old agent, or one that sends a token): told to authenticate.
    let (mut c, _) = plain(&d).await;
    let mut h = hello(None);
    h["token"] = json!(d.token);
    c.send(&h).await;
    assert!(refused_reason(c.recv().await).contains("must authenticate first"));

    // A nonce that is not 32+ hex digits.
    let (mut c, _) = plain(&d).await;
    c.send(&json!({"type": "auth", "nonce": "abc"})).await;
    assert!(refused_reason(c.recv().await).contains("nonce"));
}

/// Accepts any certificate (there is no CA: the proofs bind it), checking signatures for real.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[tokio::test]
async fn tls_binds_the_proofs_to_the_daemon_certificate() {
    let d = daemon().await;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(d.agent_tcp).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("scry-daemon").expect("name");
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("a certificate")
        .to_vec();
    let on_disk = std::fs::read(agent_tls::tls_dir(&d.home).join("cert.der")).expect("cert");
    assert_eq!(
        cert, on_disk,
        "the daemon presents the certificate it stored"
    );
    let binding: String = Sha256::digest(&cert)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut c = Conn {
        io: BufReader::new(tls),
    };
    let (an, dn) = c.authenticate(&d.token, &binding).await;
    c.send(&hello(Some(&agent_proof(&d.token, &an, &dn, &binding))))
        .await;
    assert!(matches!(
        c.recv().await,
        Some(DaemonMessage::Welcome { .. })
    ));
}
