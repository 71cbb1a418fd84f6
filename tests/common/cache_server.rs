//! `builder cache-server` as a child process, for the tests that talk to it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::BIN;

/// A running `builder cache-server` on a free loopback port, with its log;
/// killed when dropped (the log is printed if the test is failing).
pub(crate) struct Server {
    child: Child,
    pub(crate) addr: String,
    log: Arc<Mutex<String>>,
    /// Copies the server's stderr into `log`; ends when the server exits
    /// (its end of the pipe closes).
    log_reader: Option<JoinHandle<()>>,
}

impl Server {
    pub(crate) fn start(store: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(BIN)
            .args(["cache-server", "--listen", "127.0.0.1:0", "--store"])
            .arg(store)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = String::new();
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(addr) = line.strip_prefix("listening on ") {
                        break addr.to_string();
                    }
                    seen.push_str(&line);
                    seen.push('\n');
                }
                _ => {
                    let status = child.wait().unwrap();
                    panic!("cache-server exited ({status}) before listening:\n{seen}");
                }
            }
        };
        let log = Arc::new(Mutex::new(seen));
        let sink = log.clone();
        let log_reader = std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Server {
            child,
            addr,
            log,
            log_reader: Some(log_reader),
        }
    }

    /// Waits until the server's log contains `needle`; false if it does not
    /// within `timeout` or the server exits first.
    pub(crate) fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log.lock().unwrap().contains(needle) {
                return true;
            }
            let reader_done = self.log_reader.as_ref().is_none_or(|r| r.is_finished());
            if reader_done || Instant::now() >= deadline {
                // One last look: the line may have come with the end.
                return self.log.lock().unwrap().contains(needle);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn terminate(&self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    }

    /// SIGTERM, and the server must exit 0.
    pub(crate) fn stop(self) -> String {
        self.terminate();
        self.wait()
    }

    /// Waits for the server to exit, which must be with 0.
    pub(crate) fn wait(mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "server ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        // The log thread reads until the pipe's end, which comes when the
        // server has exited: after that the log holds every line the server
        // wrote (a fixed pause could end before the last lines were read).
        // Bounded all the same, in case something else inherited the pipe.
        let reader = self.log_reader.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !reader.is_finished() {
            assert!(
                Instant::now() < deadline,
                "the server's stderr stayed open after it exited ({status}):\n{}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        reader.join().unwrap();
        let log = self.log.lock().unwrap().clone();
        assert!(status.success(), "server exited with {status}:\n{log}");
        log
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("server log:\n{}", self.log.lock().unwrap());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
