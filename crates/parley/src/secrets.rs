//! Passwords come from a file (`--password-file`), the environment (`PARLEY_PASSWORD`), or are
//! typed at a terminal without echo; never from the command line, where the process list
//! would show them to every user of the machine.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::Context;
use nix::sys::termios::{LocalFlags, SetArg, Termios, tcgetattr, tcsetattr};

/// The environment variable a password may come from.
pub const PASSWORD_VAR: &str = "PARLEY_PASSWORD";

/// For `/passwd` when not at a terminal: the new password.
pub const NEW_PASSWORD_VAR: &str = "PARLEY_NEW_PASSWORD";

/// The password given without a terminal: the file's first line, else `PARLEY_PASSWORD`.
pub fn configured(file: Option<&Path>) -> anyhow::Result<Option<String>> {
    if let Some(file) = file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the password file {}", file.display()))?;
        return Ok(Some(text.lines().next().unwrap_or_default().to_owned()));
    }
    Ok(std::env::var(PASSWORD_VAR).ok())
}

/// Asks at the terminal without echo.
pub fn prompt(question: &str) -> std::io::Result<String> {
    rpassword::prompt_password(question)
}

/// Whether passwords can be typed here (stdin is a terminal).
pub fn interactive() -> bool {
    std::io::stdin().is_terminal()
}

/// Turns the terminal's echo off while it lives, so the next line typed is not shown; used by
/// the line client, whose own reader takes the line.
pub struct EchoOff {
    saved: Option<Termios>,
}

impl EchoOff {
    pub fn new() -> Self {
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok();
        if let Some(saved) = &saved {
            let mut quiet = saved.clone();
            quiet.local_flags.remove(LocalFlags::ECHO);
            let _ = tcsetattr(&stdin, SetArg::TCSANOW, &quiet);
        }
        Self { saved }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, saved);
        }
        println!();
    }
}
