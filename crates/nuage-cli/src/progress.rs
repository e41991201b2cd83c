//! One-line indicators on stderr, redrawn with `\r`: an upload meter
//! (bytes sent, share, rate) and the state of a resource being waited for.
//! Disk images are large and VMs take a while to boot, and the server says
//! nothing until they are done, so a person at a terminal needs to see that
//! something moves; a script or a log (stderr not a terminal, or `--json`)
//! gets no indicator. One line needs no terminal library.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::output::human_bytes;

/// Redraws no more often than this.
const EVERY: Duration = Duration::from_millis(100);

struct State {
    total: u64,
    start: Instant,
    last: Option<Instant>,
    drawn: bool,
}

/// The meter of one upload; clones draw the same line.
#[derive(Clone)]
pub struct Meter(Option<Arc<Mutex<State>>>);

impl Meter {
    /// A meter for `total` bytes, drawn only when `wanted` and stderr is a
    /// terminal.
    pub fn new(total: u64, wanted: bool) -> Meter {
        if !wanted || !std::io::stderr().is_terminal() {
            return Meter(None);
        }
        Meter(Some(Arc::new(Mutex::new(State {
            total,
            start: Instant::now(),
            last: None,
            drawn: false,
        }))))
    }

    /// Records that `sent` bytes are out.
    pub fn sent(&self, sent: u64) {
        let Some(state) = &self.0 else { return };
        let Ok(mut s) = state.lock() else { return };
        let now = Instant::now();
        let done = sent >= s.total;
        if !done && s.last.is_some_and(|t| now.duration_since(t) < EVERY) {
            return;
        }
        s.last = Some(now);
        s.drawn = true;
        let text = line(sent, s.total, now.duration_since(s.start));
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{text}");
        let _ = err.flush();
    }

    /// Clears the line, so that what follows starts on a clean one.
    pub fn finish(&self) {
        let Some(state) = &self.0 else { return };
        let Ok(mut s) = state.lock() else { return };
        if s.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            s.drawn = false;
        }
    }
}

/// The state of a resource being waited for, with a spinner and the time
/// spent: `| instance vm1: starting (12s)`.
pub struct StateLine {
    start: Instant,
    on: bool,
    drawn: bool,
    tick: usize,
}

impl StateLine {
    /// A line drawn only when `wanted` and stderr is a terminal.
    pub fn new(wanted: bool) -> StateLine {
        StateLine {
            start: Instant::now(),
            on: wanted && std::io::stderr().is_terminal(),
            drawn: false,
            tick: 0,
        }
    }

    /// Redraws the line: `what` is in `state`.
    pub fn show(&mut self, what: &str, state: &str) {
        if !self.on {
            return;
        }
        let text = state_line(self.tick, what, state, self.start.elapsed());
        self.tick += 1;
        self.drawn = true;
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{text}");
        let _ = err.flush();
    }

    /// Clears the line.
    pub fn finish(&mut self) {
        if self.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.drawn = false;
        }
    }
}

impl Drop for StateLine {
    fn drop(&mut self) {
        self.finish();
    }
}

fn state_line(tick: usize, what: &str, state: &str, elapsed: Duration) -> String {
    const SPIN: [char; 4] = ['|', '/', '-', '\\'];
    format!(
        "{} {what}: {state} ({}s)",
        SPIN[tick % SPIN.len()],
        elapsed.as_secs()
    )
}

/// The meter's text after `elapsed`.
fn line(sent: u64, total: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        format!(", {}/s", human_bytes((sent as f64 / secs) as u64))
    } else {
        String::new()
    };
    if sent >= total {
        return format!(
            "sent {} in {secs:.1}s{rate}; the server is checking and importing the image…",
            human_bytes(total)
        );
    }
    let pct = (sent.saturating_mul(100)).checked_div(total).unwrap_or(100);
    format!(
        "uploading {} / {} ({pct}%){rate}",
        human_bytes(sent),
        human_bytes(total)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_say_how_far_and_how_fast() {
        assert_eq!(
            line(1 << 20, 4 << 20, Duration::from_secs(2)),
            "uploading 1.0 MiB / 4.0 MiB (25%), 512.0 KiB/s"
        );
        assert_eq!(
            line(0, 4 << 20, Duration::ZERO),
            "uploading 0 B / 4.0 MiB (0%)"
        );
        let done = line(4 << 20, 4 << 20, Duration::from_secs(1));
        assert!(done.starts_with("sent 4.0 MiB in 1.0s"), "{done}");
        assert!(done.contains("checking"), "{done}");
    }

    #[test]
    fn state_lines_spin_and_count() {
        assert_eq!(
            state_line(0, "instance vm1", "starting", Duration::from_millis(12_400)),
            "| instance vm1: starting (12s)"
        );
        assert!(state_line(5, "x", "y", Duration::ZERO).starts_with("/ "));
    }

    #[test]
    fn no_meter_unless_wanted() {
        let m = Meter::new(10, false);
        assert!(m.0.is_none());
        m.sent(5);
        m.finish();
    }
}
