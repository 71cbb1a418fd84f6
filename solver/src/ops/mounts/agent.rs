//! `RUN --mount=type=ssh`: a socket of the step's own, with the mount's
//! mode and owner, whose connections are forwarded to the SSH agent given
//! with `--ssh` (as BuildKit does). Binding the agent's socket itself would
//! keep its host owner and mode (0600, the user who started the agent),
//! which a step running as another USER could not connect to, and changing
//! them would change the host's socket.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// Forwards connections to an agent until dropped. Connections still open
/// then end when either side closes (the step's processes are gone by
/// then).
pub(super) struct AgentProxy {
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    /// Reaches the socket through `/proc/self/fd/N/`: a socket path must fit
    /// in 108 bytes, which a deep store root may not.
    dir_handle: File,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

const NAME: &str = "agent.sock";

impl AgentProxy {
    /// A socket in `dir` (owned by the proxy from now on) forwarding to
    /// `agent`, with `mode`, `uid` and `gid`.
    pub(super) fn start(
        dir: tempfile::TempDir,
        agent: &Path,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> io::Result<Self> {
        let dir_handle = File::open(dir.path())?;
        let short = short_path(&dir_handle);
        let listener = UnixListener::bind(&short)?;
        std::os::unix::fs::chown(&short, Some(uid), Some(gid))?;
        fs::set_permissions(&short, fs::Permissions::from_mode(mode & 0o7777))?;
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let stop = Arc::clone(&stop);
            let agent = agent.to_path_buf();
            std::thread::Builder::new()
                .name("ssh-agent-proxy".into())
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stop.load(Ordering::Acquire) {
                            break;
                        }
                        match conn {
                            Ok(conn) => {
                                let agent = agent.clone();
                                let _ = std::thread::Builder::new()
                                    .name("ssh-agent-conn".into())
                                    .spawn(move || forward(conn, &agent));
                            }
                            // Out of descriptors, say: do not spin.
                            Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                        }
                    }
                })?
        };
        Ok(Self {
            stop,
            accept: Some(accept),
            socket: dir.path().join(NAME),
            dir_handle,
            _dir: dir,
        })
    }

    /// The socket to bind into the step.
    pub(super) fn socket(&self) -> &Path {
        &self.socket
    }
}

fn short_path(dir: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}/{NAME}", dir.as_raw_fd()))
}

impl Drop for AgentProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the accept loop, which then sees `stop`.
        let _ = UnixStream::connect(short_path(&self.dir_handle));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// Copies bytes both ways between a step's connection and a new connection
/// to the agent.
fn forward(client: UnixStream, agent: &Path) {
    let Ok(upstream) = UnixStream::connect(agent) else {
        return;
    };
    let (Ok(mut client_read), Ok(mut upstream_write)) = (client.try_clone(), upstream.try_clone())
    else {
        return;
    };
    let up = std::thread::spawn(move || {
        let _ = io::copy(&mut client_read, &mut upstream_write);
        let _ = upstream_write.shutdown(std::net::Shutdown::Write);
    });
    let (mut upstream_read, mut client_write) = (upstream, client);
    let _ = io::copy(&mut upstream_read, &mut client_write);
    let _ = client_write.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn connections_reach_the_agent_and_the_socket_has_the_mount_attributes() {
        let tmp = tempfile::tempdir().unwrap();
        let agent_path = tmp.path().join("agent");
        let agent = UnixListener::bind(&agent_path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = agent.accept().unwrap();
            let mut buf = [0u8; 4];
            conn.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"ping");
            conn.write_all(b"pong").unwrap();
        });
        let (uid, gid) = (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        let proxy = AgentProxy::start(
            tempfile::tempdir_in(tmp.path()).unwrap(),
            &agent_path,
            0o660,
            uid,
            gid,
        )
        .unwrap();
        let meta = fs::metadata(proxy.socket()).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o660);
        assert_eq!((meta.uid(), meta.gid()), (uid, gid));
        let mut conn = UnixStream::connect(proxy.socket()).unwrap();
        conn.write_all(b"ping").unwrap();
        let mut reply = String::new();
        conn.read_to_string(&mut reply).unwrap();
        assert_eq!(reply, "pong");
        server.join().unwrap();
        let socket = proxy.socket().to_path_buf();
        drop(proxy);
        assert!(!socket.exists());
    }
}
