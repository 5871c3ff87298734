//! One agent connection: the handshake, then messages both ways until either side closes.
//!
//! A reader loop decodes the agent's lines; a writer task encodes what the daemon sends. A bad
//! line is answered with an `error` message and a log line, never a crash; reports are stored in
//! batches and acknowledged only once committed, so an acknowledged batch is never lost.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use scry_proto::{
    AgentMessage, DaemonMessage, DecodeError, ErrorKind, Hello, ProtocolErrorMsg, Settings,
    ACCEPTED_PROTOCOLS, MAX_LINE_BYTES, PROTOCOL_VERSION,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite, LinesCodec, LinesCodecError};

use crate::state::registry::{AgentHandle, Entry};
use crate::{now, Shared};

/// The longest goodbye reason kept (the agent sends `sleep`, `shutdown` or `exit`).
const GOODBYE_REASON_CHARS: usize = 64;

/// How long an agent has to send `hello` after connecting.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Messages that may wait for one agent's socket (acks, errors, requests). A peer that does not
/// read its replies gets no more than this queued for it; past it, acks are left out (a later
/// ack covers them), errors are counted and not sent, and requests fail at once.
pub const OUTGOING_CAPACITY: usize = 256;

/// `error` messages not sent because the peer's queue was full (it does not read them).
pub static ERRORS_NOT_SENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The queue of what the daemon sends one agent.
pub type Outgoing = mpsc::Sender<DaemonMessage>;

/// Read buffer capacity an agent's connection keeps between lines.
const IDLE_READ_BUFFER: usize = 64 * 1024;

/// Who is on the other end, as the kernel tells it.
#[derive(Debug, Clone)]
pub enum Peer {
    /// A unix-socket peer (credentials from `SO_PEERCRED`).
    Unix {
        /// Its pid in the daemon's PID namespace.
        pid: Option<u32>,
    },
    /// A TCP peer (plain on loopback, else TLS; see `agent_tls`).
    Tcp(TcpPeer),
}

/// A TCP agent connection: who, and what ties the handshake's proofs to this connection.
#[derive(Debug, Clone)]
pub struct TcpPeer {
    /// The agent's address.
    pub addr: std::net::SocketAddr,
    /// The channel binding of [`scry_proto::proof`]: the hex SHA-256 of the daemon
    /// certificate on TLS, `tcp:AGENT>DAEMON` on plain loopback TCP.
    pub binding: String,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// What the `auth`/`challenge` exchange established, checked against `hello.proof`.
struct Authenticated {
    token: String,
    agent_nonce: String,
    daemon_nonce: String,
}

/// Serves one agent connection to the end.
pub async fn serve<R, W>(shared: Arc<Shared>, reader: R, writer: W, peer: Peer)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut lines = FramedRead::new(reader, LinesCodec::new_with_max_length(MAX_LINE_BYTES));
    let (tx, mut rx) = mpsc::channel::<DaemonMessage>(OUTGOING_CAPACITY);
    let mut sink = FramedWrite::new(writer, LinesCodec::new_with_max_length(MAX_LINE_BYTES));
    let mut writer_task = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            let line = scry_proto::encode(&msg);
            if sink.send(line.trim_end_matches('\n')).await.is_err() {
                break;
            }
            if matches!(msg, DaemonMessage::Refused { .. }) {
                break;
            }
        }
    });

    // Over TCP the agent proves first that it holds the token, and learns that we do.
    let auth = match &peer {
        Peer::Tcp(tcp) => match authenticate(&shared, &mut lines, &tx, tcp).await {
            Ok(auth) => Some(auth),
            Err(reason) => {
                tracing::warn!(target: "agent_link", peer = %tcp.addr, "refused a TCP agent: {reason}");
                refuse(tx, writer_task, reason).await;
                return;
            }
        },
        Peer::Unix { .. } => None,
    };

    let hello = match tokio::time::timeout(HELLO_TIMEOUT, lines.next()).await {
        Ok(Some(Ok(line))) => match scry_proto::decode_agent(&line) {
            Ok(AgentMessage::Hello(h)) => Some(*h),
            Ok(other) => {
                reject(
                    &tx,
                    ErrorKind::Unexpected,
                    format!("expected `hello` first, got `{}`", other.type_name()),
                    None,
                );
                None
            }
            Err(e) => {
                reject_decode(&tx, &e);
                None
            }
        },
        Ok(Some(Err(e))) => {
            reject(&tx, ErrorKind::TooLarge, codec_error_text(&e), None);
            None
        }
        Ok(None) => None,
        Err(_) => {
            reject(
                &tx,
                ErrorKind::Unexpected,
                "no `hello` within 10 s".into(),
                None,
            );
            None
        }
    };
    let Some(hello) = hello else {
        drop(tx);
        let _ = writer_task.await;
        return;
    };
    if let Err(reason) = check_hello(&hello, &peer, auth.as_ref()) {
        tracing::warn!(target: "agent_link", pid = hello.pid, "refused agent: {reason}");
        refuse(tx, writer_task, reason).await;
        return;
    }

    // An injected agent must present the nonce of an attach in progress (used up here).
    let claim = match shared.attaches.claim(&hello, &peer) {
        Ok(claim) => claim,
        Err(reason) => {
            tracing::warn!(target: "agent_link", pid = hello.pid, "refused agent: {reason}");
            refuse(tx, writer_task, reason).await;
            return;
        }
    };

    let session_id = crate::new_id("s");
    let agent = AgentHandle::new(session_id.clone(), tx.clone());
    let process_id = match register(&shared, &hello, &peer, agent.clone()).await {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(target: "agent_link", "cannot register agent: {e}");
            refuse(
                tx,
                writer_task,
                format!("the daemon could not register the process: {e}"),
            )
            .await;
            return;
        }
    };
    if let Some(claim) = claim {
        claim.registered(process_id);
    }
    let _ = tx.try_send(DaemonMessage::Welcome {
        protocol: PROTOCOL_VERSION,
        daemon_version: env!("CARGO_PKG_VERSION").into(),
        session_id: session_id.clone(),
        settings: Settings {
            flush_interval_ms: shared.config.flush_interval_ms,
            max_batch: shared.config.max_batch,
            heartbeat_ms: shared.config.heartbeat_ms,
        },
    });
    shared
        .links_accepted
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(target: "agent_link", pid = hello.pid, name = ?hello.name, session = %session_id, "agent connected");
    // Its probes, without anyone asking (a restarted worker gets them back).
    let sync_shared = shared.clone();
    tokio::spawn(async move {
        crate::service::probes::sync(&sync_shared, process_id).await;
    });

    let mut goodbye: Option<String> = None;
    let mut shutdown = shared.shutdown_signal();
    loop {
        let next = tokio::select! {
            next = lines.next() => next,
            _ = shutdown.changed() => break,
        };
        let line = match next {
            None => break,
            Some(Ok(line)) => line,
            Some(Err(e)) => {
                reject(&tx, ErrorKind::TooLarge, codec_error_text(&e), None);
                if matches!(e, LinesCodecError::Io(_)) {
                    break;
                }
                continue;
            }
        };
        // A report line is up to a megabyte or so, and the codec keeps its buffer at the size
        // of the longest line: an agent gone quiet must not keep that.
        let buffer = lines.read_buffer_mut();
        if buffer.is_empty() && buffer.capacity() > IDLE_READ_BUFFER {
            *buffer = Default::default();
        }
        shared.touch(process_id);
        match scry_proto::decode_agent(&line) {
            Ok(AgentMessage::Reply(reply)) => {
                if !agent.complete(reply) {
                    tracing::debug!(target: "agent_link", "reply to no pending request");
                }
            }
            Ok(AgentMessage::Report(report)) => {
                // Waits while the store's queue is full: this agent is not read meanwhile, so
                // it slows down (and counts what its own buffer cannot hold) instead of the
                // daemon growing or dropping.
                crate::service::agents::accept_report(&shared, process_id, report, &tx).await;
            }
            Ok(AgentMessage::Heartbeat {}) => {}
            Ok(AgentMessage::ProbeStatus { statuses }) => {
                crate::service::probes::statuses_reported(&shared, process_id, statuses);
            }
            Ok(AgentMessage::Notify { topic, data }) => {
                crate::service::calls::notified(&shared, process_id, hello.pid, topic, data);
            }
            Ok(AgentMessage::Goodbye { reason }) => {
                // Stored in a system event: the agent's word, cut to what a reason needs (`sleep`,
                // `shutdown`, `exit`), whatever length the process sent.
                let reason = reason.unwrap_or_else(|| "goodbye".into());
                goodbye = Some(reason.chars().take(GOODBYE_REASON_CHARS).collect());
            }
            Ok(AgentMessage::Error(e)) => {
                tracing::warn!(target: "agent_link", session = %session_id, kind = ?e.kind, "agent reported a protocol error: {}", e.message);
            }
            Ok(AgentMessage::Auth { .. }) => reject(
                &tx,
                ErrorKind::Unexpected,
                "`auth` is only the first message of a TCP connection".into(),
                None,
            ),
            Ok(AgentMessage::Hello(_)) => reject(
                &tx,
                ErrorKind::Unexpected,
                "`hello` was already received on this connection".into(),
                None,
            ),
            Err(e) => {
                tracing::warn!(target: "agent_link", session = %session_id, "bad message from agent: {}", e.message);
                reject_decode(&tx, &e);
            }
        }
    }
    agent.abandon_all();
    crate::service::agents::disconnected(&shared, process_id, &session_id, goodbye).await;
    // Let the writer send what is queued (e.g. the error that ended the connection): it ends
    // when the last sender is gone; a peer that stopped reading must not keep it forever.
    drop(agent);
    drop(tx);
    if tokio::time::timeout(Duration::from_secs(2), &mut writer_task)
        .await
        .is_err()
    {
        writer_task.abort();
    }
}

fn codec_error_text(e: &LinesCodecError) -> String {
    match e {
        LinesCodecError::MaxLineLengthExceeded => {
            format!("line longer than {MAX_LINE_BYTES} bytes")
        }
        LinesCodecError::Io(io) => format!("read error: {io}"),
    }
}

/// Says why the link is refused, then closes it once the writer has sent that.
async fn refuse(tx: Outgoing, writer_task: tokio::task::JoinHandle<()>, reason: String) {
    let _ = tx.try_send(DaemonMessage::Refused {
        reason,
        accepted_protocols: ACCEPTED_PROTOCOLS.to_vec(),
    });
    drop(tx);
    let _ = writer_task.await;
}

fn reject(tx: &Outgoing, kind: ErrorKind, message: String, id: Option<u64>) {
    send_error(
        tx,
        DaemonMessage::Error(ProtocolErrorMsg {
            kind,
            message,
            in_reply_to: id,
        }),
    );
}

fn reject_decode(tx: &Outgoing, e: &DecodeError) {
    send_error(tx, DaemonMessage::error_for(e));
}

/// Queues an `error` for the peer; one that does not read them gets no more (counted).
fn send_error(tx: &Outgoing, msg: DaemonMessage) {
    if tx.try_send(msg).is_err() {
        ERRORS_NOT_SENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The daemon's half of the mutual authentication on TCP: reads `auth {nonce}`, answers
/// `challenge {nonce, proof}`. The agent's `hello.proof` is checked in [`check_hello`].
async fn authenticate<R>(
    shared: &Shared,
    lines: &mut FramedRead<R, LinesCodec>,
    tx: &Outgoing,
    tcp: &TcpPeer,
) -> Result<Authenticated, String>
where
    R: AsyncRead + Unpin,
{
    let Some(token) = shared.token.clone() else {
        return Err("this daemon has no token, so it cannot authenticate TCP agents: set SCRY_TOKEN or let it create $SCRY_HOME/token".into());
    };
    let line = match tokio::time::timeout(HELLO_TIMEOUT, lines.next()).await {
        Ok(Some(Ok(line))) => line,
        Ok(Some(Err(e))) => return Err(codec_error_text(&e)),
        Ok(None) => return Err("closed before authenticating".into()),
        Err(_) => return Err("no `auth` within 10 s".into()),
    };
    let agent_nonce = match scry_proto::decode_agent(&line) {
        Ok(AgentMessage::Auth { nonce }) => nonce,
        Ok(other) => {
            return Err(format!(
                "agents connecting over TCP (from {}) must authenticate first (`auth`, then `hello` with a proof of the daemon's token), got `{}`: upgrade the agent to this daemon's version ({})",
                tcp.addr,
                other.type_name(),
                env!("CARGO_PKG_VERSION")
            ))
        }
        Err(e) => return Err(format!("bad `auth`: {}", e.message)),
    };
    if !scry_proto::nonce_ok(&agent_nonce) {
        return Err(format!(
            "the `auth` nonce must be {} to {} lower-case hex digits",
            scry_proto::MIN_NONCE_HEX,
            scry_proto::MAX_NONCE_HEX
        ));
    }
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut bytes);
    let daemon_nonce: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let proof = scry_proto::daemon_proof(&token, &agent_nonce, &daemon_nonce, &tcp.binding);
    let _ = tx.try_send(DaemonMessage::Challenge {
        nonce: daemon_nonce.clone(),
        proof,
    });
    Ok(Authenticated {
        token,
        agent_nonce,
        daemon_nonce,
    })
}

fn check_hello(hello: &Hello, peer: &Peer, auth: Option<&Authenticated>) -> Result<(), String> {
    if !ACCEPTED_PROTOCOLS.contains(&hello.protocol) {
        return Err(format!(
            "protocol version {} is not supported by this daemon ({}); accepted: {:?} — install matching versions of the agent and scry",
            hello.protocol,
            env!("CARGO_PKG_VERSION"),
            ACCEPTED_PROTOCOLS
        ));
    }
    if let Peer::Tcp(tcp) = peer {
        let ok = match (auth, &hello.proof) {
            (Some(a), Some(got)) => {
                let want = scry_proto::agent_proof(
                    &a.token,
                    &a.agent_nonce,
                    &a.daemon_nonce,
                    &tcp.binding,
                );
                scry_proto::proofs_equal(&want, got)
            }
            _ => false,
        };
        if !ok {
            return Err(format!(
                "the agent connecting over TCP (from {}) did not prove that it holds the daemon's token: give it the daemon's token (SCRY_TOKEN or the daemon's $SCRY_HOME/token)",
                tcp.addr
            ));
        }
    }
    Ok(())
}

/// The identity of a process across reconnects: its host, its pid and when it started.
fn identity(hello: &Hello, peer: &Peer) -> (String, u32, Option<u32>, Option<u64>) {
    if let Peer::Unix { pid: Some(pid) } = peer {
        if let Ok(info) = scry_proc::info(*pid) {
            let ns_pid = (hello.pid != *pid).then_some(hello.pid);
            let key = format!("{}:{}:{}", hello.host, pid, info.start_ticks);
            return (key, *pid, ns_pid, Some(info.start_ticks));
        }
    }
    let key = format!("{}:{}:{:.2}", hello.host, hello.pid, hello.started_at);
    (key, hello.pid, None, None)
}

async fn register(
    shared: &Arc<Shared>,
    hello: &Hello,
    peer: &Peer,
    agent: AgentHandle,
) -> Result<i64, crate::DaemonError> {
    let identity = identity(hello, peer);
    let t = now();
    let first_seen = shared
        .registry()
        .by_key(&identity.0)
        .map(|e| e.view.first_seen)
        .unwrap_or(t);
    let mut view =
        crate::state::registry::view_from_hello(hello, identity, first_seen, &agent.session_id, t);
    view.id = crate::service::agents::persist_process(shared, &view).await?;
    let id = view.id;
    shared.publish_process(&view);
    shared.registry().put(Entry {
        view,
        agent: Some(agent),
    });
    Ok(id)
}
