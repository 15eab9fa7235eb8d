//! Child processes and ports for what runs servers and devices (the console, the test rigs, the
//! demo, the benches): every server listens on 127.0.0.1 on a port picked here, every child dies
//! with its guard.

use anyhow::{ensure, Context, Result};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed (SIGKILL: a power cut for a device) and reaped when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until something accepts connections on 127.0.0.1:`port`.
pub fn wait_port(port: u16, what: &str) -> Result<()> {
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        ensure!(t0.elapsed() < Duration::from_secs(10), "{what} did not listen on 127.0.0.1:{port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Runs this xtask binary with `args` (output hidden), failing with the command line. The binary
/// is the current executable: call this only from `cargo xtask` (an integration test runs the
/// binary as `env!("CARGO_BIN_EXE_xtask")`).
pub fn xtask(args: &[&str]) -> Result<()> {
    let o = Command::new(std::env::current_exe()?).args(args).stdout(Stdio::null()).stderr(Stdio::piped()).output()?;
    ensure!(o.status.success(), "cargo xtask {} failed:\n{}", args.join(" "), String::from_utf8_lossy(&o.stderr));
    Ok(())
}

/// Raises the open-file limit to the hard limit (a fleet needs two sockets per device).
pub fn raise_fd_limit() -> Result<u64> {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        ensure!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0, "getrlimit failed");
        r.rlim_cur = r.rlim_max;
        ensure!(libc::setrlimit(libc::RLIMIT_NOFILE, &r) == 0, "setrlimit failed");
        Ok(r.rlim_cur)
    }
}

/// Spawns `cmd` with stdout and stderr appended to `log`.
pub fn spawn_logged(cmd: &mut Command, log: &std::path::Path) -> Result<Killed> {
    let f = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    Ok(Killed(child))
}

/// Runs `cmd`; fails with its output unless it succeeded.
pub fn run_ok(cmd: &mut Command) -> Result<()> {
    let o = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        o.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(())
}
