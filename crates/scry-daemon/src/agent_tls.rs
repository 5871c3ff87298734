//! The TCP agent listener's connections: TLS off loopback, plain on loopback, and the channel
//! binding each one gives the handshake's proofs.
//!
//! Each connection is told apart by its first byte: a TLS ClientHello starts with `0x16`, the
//! plain protocol with `{`. TLS is accepted from anywhere; plain only when both ends are
//! loopback addresses. Why loopback may stay plain: nobody but this machine's kernel carries the
//! bytes, so there is nothing to eavesdrop, and a local program that poses as the daemon (or
//! relays to it) is defeated by the binding: the proofs cover the connection's two ends as each
//! side sees them, and a relay has two connections whose ends differ.
//!
//! TLS: a self-signed certificate made on first start with `rcgen` and kept in
//! `$SCRY_HOME/tls/` (`cert.der`, `key.der`, mode 0600, directory 0700). There is no CA to verify
//! it against; instead the SHA-256 of its DER is the channel binding of both proofs, so an
//! agent that talks to a man in the middle (which must present another certificate, not having
//! this key) computes another binding and the daemon's proof does not verify.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

use crate::link::{self, Peer, TcpPeer};
use crate::{DaemonError, Home, Shared};

/// How long a connection has to show its first byte and finish a TLS handshake.
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);
/// The first byte of a TLS record carrying a handshake message (ClientHello).
const TLS_HANDSHAKE: u8 = 0x16;

/// The daemon's TLS identity for agent links.
pub struct Identity {
    acceptor: TlsAcceptor,
    /// Lower-case hex SHA-256 of the certificate's DER: the channel binding of TLS links.
    pub cert_sha256: String,
}

/// `$SCRY_HOME/tls/`.
pub fn tls_dir(home: &Home) -> PathBuf {
    home.root().join("tls")
}

impl Identity {
    /// Loads `$SCRY_HOME/tls/{cert,key}.der`, or makes a new self-signed pair when there is none.
    pub fn load_or_create(home: &Home) -> Result<Identity, DaemonError> {
        let dir = tls_dir(home);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .and_then(|_| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)))
            .map_err(|source| DaemonError::Io {
                path: dir.clone(),
                source,
            })?;
        let cert_path = dir.join("cert.der");
        let key_path = dir.join("key.der");
        if !cert_path.exists() || !key_path.exists() {
            let made = rcgen::generate_simple_self_signed(vec!["scry-daemon".to_owned()]).map_err(
                |e| DaemonError::Config {
                    path: cert_path.clone(),
                    message: format!("cannot make a self-signed certificate: {e}"),
                },
            )?;
            // The key first: a certificate without its key is useless, the reverse is remade.
            write_private(&key_path, &made.key_pair.serialize_der())?;
            write_private(&cert_path, made.cert.der())?;
        }
        let cert = read_private(&cert_path)?;
        let key = read_private(&key_path)?;
        let cert_sha256 = hex(&Sha256::digest(&cert));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| {
                b.with_no_client_auth().with_single_cert(
                    vec![rustls::pki_types::CertificateDer::from(cert)],
                    rustls::pki_types::PrivateKeyDer::Pkcs8(key.into()),
                )
            })
            .map_err(|e| DaemonError::Config {
                path: cert_path.clone(),
                message: format!(
                    "unusable TLS certificate or key ({e}); delete {} to have new ones made",
                    dir.display()
                ),
            })?;
        Ok(Identity {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            cert_sha256,
        })
    }
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), DaemonError> {
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(data))
        .map_err(|source| DaemonError::Io {
            path: path.to_owned(),
            source,
        })
}

fn read_private(path: &Path) -> Result<Vec<u8>, DaemonError> {
    let meta = std::fs::metadata(path).map_err(|source| DaemonError::Io {
        path: path.to_owned(),
        source,
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(DaemonError::Config {
            path: path.to_owned(),
            message: format!(
                "the TLS file is accessible by other users; run `chmod 600 {}`",
                path.display()
            ),
        });
    }
    std::fs::read(path).map_err(|source| DaemonError::Io {
        path: path.to_owned(),
        source,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An address as both sides write it in the plain binding: IPv4-mapped IPv6 as IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// The plain (loopback) channel binding: `tcp:AGENT>DAEMON`.
pub fn plain_binding(agent: SocketAddr, daemon: SocketAddr) -> String {
    format!("tcp:{}>{}", canonical(agent), canonical(daemon))
}

/// Serves one accepted TCP agent connection: TLS or plain, then the link.
pub async fn serve(shared: Arc<Shared>, stream: TcpStream, addr: SocketAddr, tls: Arc<Identity>) {
    let _ = stream.set_nodelay(true);
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(FIRST_BYTES_TIMEOUT, stream.peek(&mut first)).await;
    if !matches!(peeked, Ok(Ok(1))) {
        return;
    }
    if first[0] == TLS_HANDSHAKE {
        let accepted = tokio::time::timeout(FIRST_BYTES_TIMEOUT, tls.acceptor.accept(stream)).await;
        let stream = match accepted {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::warn!(target: "agent_link", peer = %addr, "TLS handshake failed: {e}");
                return;
            }
            Err(_) => {
                tracing::warn!(target: "agent_link", peer = %addr, "TLS handshake timed out");
                return;
            }
        };
        tracing::info!(target: "agent_link", peer = %addr, "TLS agent link");
        let (r, w) = tokio::io::split(stream);
        let peer = TcpPeer {
            addr,
            binding: tls.cert_sha256.clone(),
            tls: true,
        };
        link::serve(shared, r, w, Peer::Tcp(peer)).await;
        return;
    }
    let local = stream.local_addr().ok();
    let loopback = canonical(addr).ip().is_loopback()
        && local.is_some_and(|l| canonical(l).ip().is_loopback());
    let Some(local) = local.filter(|_| loopback) else {
        tracing::warn!(target: "agent_link", peer = %addr, "refused a plain-TCP agent off loopback");
        let msg = scry_proto::encode(&scry_proto::DaemonMessage::Refused {
            reason: format!(
                "agents off loopback (this one is {addr}) must connect with TLS: use a scry agent of this daemon's version ({})",
                env!("CARGO_PKG_VERSION")
            ),
            accepted_protocols: scry_proto::ACCEPTED_PROTOCOLS.to_vec(),
        });
        let mut stream = stream;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            stream.write_all(msg.as_bytes()).await?;
            stream.shutdown().await?;
            // Read what the peer sent before closing: a close with unread data is a reset,
            // and the peer could lose the refusal before it reads it.
            let mut sink = [0u8; 4096];
            while tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        })
        .await;
        return;
    };
    let peer = TcpPeer {
        addr,
        binding: plain_binding(addr, local),
        tls: false,
    };
    let (r, w) = stream.into_split();
    link::serve(shared, r, w, Peer::Tcp(peer)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_made_once_private_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = Home::at(dir.path());
        let first = Identity::load_or_create(&home).expect("made");
        let tls = tls_dir(&home);
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&tls), 0o700);
        assert_eq!(mode(&tls.join("cert.der")), 0o600);
        assert_eq!(mode(&tls.join("key.der")), 0o600);
        let again = Identity::load_or_create(&home).expect("loaded");
        assert_eq!(first.cert_sha256, again.cert_sha256, "the same certificate");
        let der = std::fs::read(tls.join("cert.der")).expect("cert");
        assert_eq!(first.cert_sha256, hex(&Sha256::digest(&der)));
        std::fs::set_permissions(tls.join("key.der"), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        let err = Identity::load_or_create(&home).err().expect("refused");
        assert!(err.to_string().contains("key.der"), "{err}");
    }

    #[test]
    fn plain_binding_is_the_same_from_both_ends() {
        let agent: SocketAddr = "127.0.0.1:51234".parse().expect("addr");
        let daemon: SocketAddr = "[::ffff:127.0.0.1]:7391".parse().expect("addr");
        assert_eq!(
            plain_binding(agent, daemon),
            "tcp:127.0.0.1:51234>127.0.0.1:7391"
        );
        let v6: SocketAddr = "[::1]:40000".parse().expect("addr");
        assert_eq!(plain_binding(v6, v6), "tcp:[::1]:40000>[::1]:40000");
    }
}
