//! Reading passwords without echoing them or putting them on command lines
//! (where `ps` and shell history would show them): from the terminal, or one
//! line per secret from stdin for scripts.

use std::io::{BufRead, IsTerminal};

use anyhow::{bail, Context, Result};

/// Reads `n` lines from stdin, without their line endings.
pub fn stdin_lines(n: usize) -> Result<Vec<String>> {
    read_lines(std::io::stdin().lock(), n)
}

pub fn read_lines(mut input: impl BufRead, n: usize) -> Result<Vec<String>> {
    let mut lines = Vec::with_capacity(n);
    for i in 0..n {
        let mut line = String::new();
        input.read_line(&mut line).context("could not read stdin")?;
        let line = line.trim_end_matches(['\n', '\r']).to_string();
        if line.is_empty() {
            bail!(
                "expected {n} non-empty line(s) on stdin, line {} is missing or empty",
                i + 1
            );
        }
        lines.push(line);
    }
    Ok(lines)
}

pub fn stdin_line() -> Result<String> {
    let mut lines = stdin_lines(1)?;
    Ok(lines.remove(0))
}

/// Asks on the terminal without echo.
pub fn prompt(label: &str) -> Result<String> {
    let value = rpassword::prompt_password(format!("{label}: ")).with_context(|| {
        format!(
            "could not ask for the {label} on a terminal; pass it on stdin instead (see --help)"
        )
    })?;
    if value.is_empty() {
        bail!("the {label} is empty");
    }
    Ok(value)
}

/// Asks for a new password twice, so a typo does not lock the user out.
pub fn prompt_new(label: &str) -> Result<String> {
    let first = prompt(label)?;
    let again = prompt(&format!("{label} (again)"))?;
    if first != again {
        bail!("the two entries differ");
    }
    Ok(first)
}

/// A secret from stdin when `from_stdin`, else asked on the terminal.
pub fn obtain(from_stdin: bool, label: &str, confirm: bool) -> Result<String> {
    if from_stdin {
        stdin_line()
    } else if confirm {
        prompt_new(label)
    } else {
        prompt(label)
    }
}

/// Reads one line from the terminal, with echo (user names, codes).
pub fn ask(label: &str) -> Result<String> {
    if !std::io::stdin().is_terminal() {
        bail!("no terminal to ask for the {label}");
    }
    eprint!("{label}: ");
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("could not read the terminal")?;
    let line = line.trim().to_string();
    if line.is_empty() {
        bail!("the {label} is empty");
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_keep_inner_spaces_and_drop_endings() {
        let input = b"  old pass \r\nnew pass\nextra\n".as_slice();
        let lines = read_lines(input, 2).unwrap();
        assert_eq!(
            lines,
            vec!["  old pass ".to_string(), "new pass".to_string()]
        );
    }

    #[test]
    fn missing_lines_fail() {
        assert!(read_lines(b"only one\n".as_slice(), 2).is_err());
        assert!(read_lines(b"\n".as_slice(), 1).is_err());
    }
}
