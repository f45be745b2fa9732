//! Redis and nginx as child processes on loopback, for the tests and benchmarks that put
//! replicas behind a load balancer with a shared usage store (the operator's real tools, from
//! the system's packages, not mocks).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A program from the system's packages (`redis-server`, `nginx`), looked up on `PATH` and in
/// `/usr/sbin`. When it is missing, prints one line saying that `who` was skipped and returns
/// `None`, unless `BBT_REQUIRE_SERVICES=1` (CI sets it), which makes it a failure.
pub fn system_program(name: &str, who: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        let why = format!(
            "{who} needs `{name}` (Debian: apt-get install redis-server nginx-light), which is \
             not installed"
        );
        if std::env::var("BBT_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
            panic!("{why}; BBT_REQUIRE_SERVICES=1 forbids skipping");
        }
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "skipped: {why}");
    }
    found
}

/// A free TCP port on loopback (free when asked; the caller binds it soon after).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A child process serving on a loopback port; killed (and reaped) when dropped.
pub struct Daemon {
    child: Child,
    port: u16,
}

impl Daemon {
    /// Runs `command` and waits (up to 30 s) until 127.0.0.1:`port` accepts connections.
    pub fn spawn(mut command: Command, port: u16) -> anyhow::Result<Self> {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {:?}: {e}", command.get_program()))?;
        let mut daemon = Self { child, port };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let started = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(status) = daemon.child.try_wait()? {
                anyhow::bail!(
                    "{:?} exited ({status}) before listening",
                    command.get_program()
                );
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(30),
                "{:?} did not listen on port {port} within 30 s",
                command.get_program()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(daemon)
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops it now (SIGKILL, as a crash would).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `redis-server` on a free loopback port, keeping nothing on disk; its URL is
/// `redis://127.0.0.1:PORT`.
pub fn redis(program: &Path) -> anyhow::Result<Daemon> {
    let port = free_port()?;
    let mut command = Command::new(program);
    command.args(["--bind", "127.0.0.1", "--port", &port.to_string()]);
    command.args(["--save", "", "--appendonly", "no", "--daemonize", "no"]);
    Daemon::spawn(command, port)
}

/// nginx in the foreground with `config` (a whole nginx.conf that listens on `port`), its
/// prefix, temporary files and logs in `dir`.
pub fn nginx(program: &Path, config: &str, port: u16, dir: &Path) -> anyhow::Result<Daemon> {
    std::fs::create_dir_all(dir.join("logs"))?;
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, config)?;
    let mut command = Command::new(program);
    command.arg("-p").arg(dir).arg("-c").arg(&conf).args([
        "-e",
        "stderr",
        "-g",
        "daemon off; pid nginx.pid;",
    ]);
    Daemon::spawn(command, port)
}

/// `deploy/nginx.conf` (the configuration operators start from) with its example upstream
/// servers replaced by `servers` (`host:port`), listening on `port`, logging into its prefix.
pub fn render_nginx_conf(template: &str, servers: &[String], port: u16) -> String {
    let mut out = String::new();
    let mut upstream_done = false;
    for line in template.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("server ") && trimmed.contains("max_fails") {
            if !upstream_done {
                let indent = &line[..line.len() - trimmed.len()];
                let options = trimmed.split_once(' ').map_or("", |(_, rest)| rest);
                let options = options.split_once(' ').map_or(";", |(_, o)| o);
                for s in servers {
                    out.push_str(&format!("{indent}server {s} {options}\n"));
                }
                upstream_done = true;
            }
        } else if trimmed.starts_with("listen ") {
            let indent = &line[..line.len() - trimmed.len()];
            out.push_str(&format!("{indent}listen 127.0.0.1:{port};\n"));
        } else if trimmed.starts_with("access_log ") || trimmed.starts_with("error_log ") {
            let indent = &line[..line.len() - trimmed.len()];
            let directive = trimmed.split_whitespace().next().unwrap_or("access_log");
            out.push_str(&format!("{indent}{directive} logs/{directive}.log;\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}
