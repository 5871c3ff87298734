//! Every `SCRY_*` environment variable scry reads, in one place.
//!
//! The Python agent reads the same names (see `python/scry/_config.py`).

/// Where scry keeps its state: the daemon's socket, pid, log, database, config and the
/// discovery files of embedded clients. Default `~/.scry`.
pub const SCRY_HOME: &str = "SCRY_HOME";
/// The daemon's HTTP URL, for the CLI (e.g. `http://127.0.0.1:7390`); for an agent, where to
/// connect (`unix:///path`, `tcp://host:port` or `http://host:port`).
pub const SCRY_DAEMON: &str = "SCRY_DAEMON";
/// The name an embedded client registers under.
pub const SCRY_NAME: &str = "SCRY_NAME";
/// Asks for a TCP control plane of an embedded client, bound to this host. Without it (and
/// without `SCRY_CONTROL_PORT`) the control plane is the unix socket
/// `$SCRY_HOME/run/clients/<pid>.sock`, which obeys only the client's uid and root.
pub const SCRY_CONTROL_HOST: &str = "SCRY_CONTROL_HOST";
/// Asks for a TCP control plane on this port (0: any free one; the host then defaults to
/// `127.0.0.1`). Every request to it needs the token, loopback included.
pub const SCRY_CONTROL_PORT: &str = "SCRY_CONTROL_PORT";
/// The shared secret, else read from `$SCRY_HOME/token` (mode 0600): TCP callers send it, TCP
/// agent links prove it (HMAC) without sending it.
pub const SCRY_TOKEN: &str = "SCRY_TOKEN";
/// Per-subsystem log filter in `tracing` `EnvFilter` syntax, e.g. `proc=debug,store=warn`
/// (default `info` for `scry serve`, with py-spy's own crates at `warn`; `warn` for other commands). Every scry log line carries one
/// of these targets: `daemon` (lifecycle, system events), `store` (SQLite, migrations,
/// retention), `proto` (wire protocol), `proc` (process layer: /proc, stacks, injection),
/// `agent_link` (agent connections), `http` (REST API and streams), `repl` (REPL relay).
/// Agents' own log records are not filtered here: they are stored as `log` events and shown
/// by `scry logs`.
pub const SCRY_LOG: &str = "SCRY_LOG";

/// Reads a variable, treating an empty value as unset.
pub fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}
