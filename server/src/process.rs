//! A bbt-server running as a child process (for `bbt quickstart` and end-to-end tests): spawn
//! it, learn its address from the line it prints once listening, kill it when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The line prefix before the server's URL on stderr.
const LISTENING: &str = "listening on ";

/// A child server; killed (and reaped) when dropped.
pub struct ServerProcess {
    child: Child,
    url: String,
}

impl ServerProcess {
    /// Runs `command` (a `bbt-server ...` or `bbt serve ...` command line; bind to port 0 for a
    /// free port) and waits until it listens; the model may be fetched first, so there is no
    /// time limit, but an exit before listening is an error. Its other stderr lines are
    /// forwarded to ours, prefixed, when `echo` is set (errors always).
    pub fn spawn(mut command: Command, echo: bool) -> anyhow::Result<Self> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start the server: {e}"))?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = mpsc::channel();
        // Reads for the server's whole life, so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.split(LISTENING).nth(1) {
                    let _ = tx.send(url.trim().to_string());
                } else if echo || line.starts_with("error") {
                    eprintln!("  server | {line}");
                }
            }
        });
        let mut server = Self {
            child,
            url: String::new(),
        };
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(url) => {
                    server.url = url;
                    return Ok(server);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(status) = server.child.try_wait()? {
                        anyhow::bail!("the server exited ({status}) before listening");
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = server.child.wait()?;
                    anyhow::bail!("the server exited ({status}) before listening");
                }
            }
        }
    }

    /// Starts the running binary's own `serve` command (`bbt serve`, `bbt-experiments serve`)
    /// on a free loopback port, loading the model as `model`'s flags say.
    pub fn serve_this_binary(model: &bbt::cli::ModelArgs, echo: bool) -> anyhow::Result<Self> {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args(["serve", "--bind", "127.0.0.1:0"])
            .args(model.to_flags());
        Self::spawn(command, echo)
    }

    /// Its base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until it exits (e.g. after a signal) and returns how.
    pub fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
