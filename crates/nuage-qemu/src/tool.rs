//! Runs the external tools (qemu-img, genisoimage) with a time limit,
//! optional resource limits, and disk keys handed over as inherited fds.
//!
//! A key fd is created close-on-exec, so no other program this process
//! starts at the same moment can inherit it; only the child that needs it
//! clears the flag, between fork and exec. The child refers to it as
//! `/dev/fd/N`, so its command line shows a path and never the key.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::process::{Output, Stdio};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::key::DiskKey;

/// Limits applied to a tool that reads untrusted input.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Address-space limit (bytes).
    pub address_space: u64,
    /// CPU-time limit (seconds).
    pub cpu_seconds: u64,
}

/// One invocation of an external tool.
pub struct Tool {
    name: String,
    cmd: tokio::process::Command,
    fds: Vec<OwnedFd>,
    timeout: Duration,
    limits: Option<Limits>,
    nice: Option<i32>,
}

impl Tool {
    pub fn new(program: &str, timeout: Duration) -> Self {
        let mut cmd = tokio::process::Command::new(program);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        Tool {
            name: program.to_string(),
            cmd,
            fds: Vec::new(),
            timeout,
            limits: None,
            nice: None,
        }
    }

    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.cmd.arg(arg);
        self
    }

    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd.args(args);
        self
    }

    pub fn limits(&mut self, limits: Limits) -> &mut Self {
        self.limits = Some(limits);
        self
    }

    /// Runs the tool at a lower CPU priority (niceness 1–19), so bulk disk
    /// work yields the CPU to the control plane.
    pub fn nice(&mut self, niceness: i32) -> &mut Self {
        self.nice = Some(niceness.clamp(1, 19));
        self
    }

    /// [`Tool::nice`] unless a higher niceness is already set.
    pub fn nice_at_least(&mut self, niceness: i32) -> &mut Self {
        if self.nice.is_none_or(|n| n < niceness) {
            self.nice(niceness);
        }
        self
    }

    /// Puts `key` in a memfd the child inherits and returns the
    /// `--object secret,…` argument value that names it as `/dev/fd/N`.
    pub fn key_fd(&mut self, secret_id: &str, key: &DiskKey) -> Result<String> {
        let fd = key.memfd()?;
        let n = fd.as_raw_fd();
        self.fds.push(fd);
        Ok(format!("secret,id={secret_id},file=/dev/fd/{n},format=raw"))
    }

    /// Runs the tool to completion (killed at the timeout) and fails unless
    /// it exits with one of `ok_codes`.
    pub async fn run_ok(&mut self, ok_codes: &[i32]) -> Result<Output> {
        let out = self.run().await?;
        match out.status.code() {
            Some(c) if ok_codes.contains(&c) => Ok(out),
            _ => Err(self.failure(&out)),
        }
    }

    /// The error describing a failed run.
    pub fn failure(&self, out: &Output) -> Error {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stderr = stderr.trim();
        let stderr = if stderr.len() > 2000 {
            let mut cut = 2000;
            while !stderr.is_char_boundary(cut) {
                cut -= 1;
            }
            &stderr[..cut]
        } else {
            stderr
        };
        Error::Tool {
            tool: self.name.clone(),
            status: out.status.to_string(),
            stderr: stderr.to_string(),
        }
    }

    /// Runs the tool to completion (killed at the timeout).
    pub async fn run(&mut self) -> Result<Output> {
        let keep: Vec<RawFd> = self.fds.iter().map(|f| f.as_raw_fd()).collect();
        let limits = self.limits;
        let nice = self.nice;
        if !keep.is_empty() || limits.is_some() || nice.is_some() {
            // SAFETY: the closure runs in the forked child before exec and
            // only makes raw syscalls (fcntl, setrlimit, setpriority), which are
            // async-signal-safe; it allocates nothing and takes no lock.
            unsafe {
                self.cmd.pre_exec(move || {
                    for &fd in &keep {
                        let fd = std::os::fd::BorrowedFd::borrow_raw(fd);
                        rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
                    }
                    if let Some(l) = limits {
                        use rustix::process::{setrlimit, Resource, Rlimit};
                        setrlimit(
                            Resource::As,
                            Rlimit {
                                current: Some(l.address_space),
                                maximum: Some(l.address_space),
                            },
                        )?;
                        setrlimit(
                            Resource::Cpu,
                            Rlimit {
                                current: Some(l.cpu_seconds),
                                maximum: Some(l.cpu_seconds),
                            },
                        )?;
                    }
                    if let Some(n) = nice {
                        rustix::process::setpriority_process(None, n)?;
                    }
                    Ok(())
                });
            }
        }
        let child = self
            .cmd
            .spawn()
            .map_err(|e| Error::io(format!("cannot start {}", self.name), e))?;
        // The fds were copied into the child; ours can go now.
        self.fds.clear();
        match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(out) => out.map_err(|e| Error::io(format!("waiting for {}", self.name), e)),
            // Dropping the future drops the child, which kills it.
            Err(_) => Err(Error::timeout(self.timeout, self.name.clone())),
        }
    }
}
