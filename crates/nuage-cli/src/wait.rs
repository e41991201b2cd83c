//! `--wait`: polls a resource until it reaches the state asked for. The API
//! answers changes to instances and volumes at once (202) and a node agent
//! converges, so a script that needs the VM up, or a person who wants to
//! know it came up, would otherwise have to poll by hand. A state that can
//! no longer lead to the goal ends the wait with the server's reason.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::Value;

use crate::client::{Api, ApiProblem, Query};
use crate::progress::StateLine;

/// How often the resource is read.
const EVERY: Duration = Duration::from_millis(500);

/// What a wait ends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// The resource is in this state.
    State(&'static str),
    /// The resource is gone (404).
    Gone,
}

/// A wait for `what` (`instance vm1`), read at `path`.
pub struct Wait<'a> {
    pub api: &'a Api,
    pub path: &'a [&'a str],
    pub what: &'a str,
    pub goal: Goal,
    /// The states on the way to the goal; any other one ends the wait.
    pub passing: &'a [&'static str],
    pub timeout: Duration,
    /// Draw the state line (not with `--json`).
    pub show: bool,
}

impl Wait<'_> {
    /// The resource as it reached the goal (`Null` once gone).
    pub async fn run(self) -> Result<Value> {
        let start = Instant::now();
        let mut line = StateLine::new(self.show);
        loop {
            let state = match self.api.get(self.path, &Query::new()).await {
                Ok(v) => match verdict(&v, self.goal, self.passing, self.what) {
                    Verdict::Done => return Ok(v),
                    Verdict::Fail(why) => {
                        line.finish();
                        bail!("{why}");
                    }
                    Verdict::Wait(state) => state,
                },
                Err(e) if is_not_found(&e) && self.goal == Goal::Gone => return Ok(Value::Null),
                Err(e) => return Err(e),
            };
            if start.elapsed() >= self.timeout {
                line.finish();
                bail!(
                    "{} is still {state} after {}s; it may yet get there (look again with `show`)",
                    self.what,
                    self.timeout.as_secs()
                );
            }
            line.show(self.what, &state);
            tokio::time::sleep(EVERY).await;
        }
    }
}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ApiProblem>()
        .is_some_and(|p| p.status == 404)
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Done,
    Wait(String),
    Fail(String),
}

/// What the resource `v` means for a wait on `goal`.
fn verdict(v: &Value, goal: Goal, passing: &[&str], what: &str) -> Verdict {
    let state = v["state"].as_str().unwrap_or("");
    let reason = v["status_message"].as_str().unwrap_or("");
    if matches!(goal, Goal::State(s) if s == state) {
        return Verdict::Done;
    }
    if passing.contains(&state) {
        return Verdict::Wait(state.to_string());
    }
    let want = match goal {
        Goal::State(s) => s,
        Goal::Gone => "gone",
    };
    Verdict::Fail(match (state, reason.is_empty()) {
        ("failed", false) => format!("{what} failed: {reason}"),
        ("failed", true) => format!("{what} failed"),
        (_, false) => format!("{what} is {state}, not {want}: {reason}"),
        (_, true) => format!("{what} is {state}, not {want}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn verdicts() {
        let up = Goal::State("running");
        let on_the_way = ["creating", "starting"];
        let v = |state: &str, msg: &str| json!({"state": state, "status_message": msg});
        assert_eq!(
            verdict(&v("running", ""), up, &on_the_way, "instance vm1"),
            Verdict::Done
        );
        assert_eq!(
            verdict(&v("starting", ""), up, &on_the_way, "instance vm1"),
            Verdict::Wait("starting".into())
        );
        assert_eq!(
            verdict(&v("failed", "QEMU exited"), up, &on_the_way, "instance vm1"),
            Verdict::Fail("instance vm1 failed: QEMU exited".into())
        );
        assert_eq!(
            verdict(&v("stopped", ""), up, &on_the_way, "instance vm1"),
            Verdict::Fail("instance vm1 is stopped, not running".into())
        );
        assert_eq!(
            verdict(&v("running", ""), Goal::Gone, &["deleting"], "instance vm1"),
            Verdict::Fail("instance vm1 is running, not gone".into())
        );
    }
}
