//! Every line the command line writes goes through here: results to standard output with
//! [`say`] (a closed pipe ends the program quietly, never with a panic), diagnostics to standard
//! error with [`note`] (a failed write is dropped).

use std::io::Write;

/// Standard output can no longer be written (its reader has gone).
#[derive(Debug)]
pub struct PipeClosed;

/// Writes one line of results to standard output.
///
/// # Errors
/// [`PipeClosed`] when the write fails (a closed pipe): the caller ends quietly, never panics.
pub fn say(line: impl std::fmt::Display) -> Result<(), PipeClosed> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|_| PipeClosed)
}

/// Writes one diagnostic line to standard error; a failed write is dropped (nobody is left to
/// tell), so no output path can panic.
pub fn note(line: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// `say(…)`, or return `$closed` from the enclosing function when standard output is closed.
macro_rules! say_or {
    ($closed:expr, $($arg:tt)*) => {
        if $crate::cli::say(format_args!($($arg)*)).is_err() {
            return $closed;
        }
    };
}

pub(crate) use say_or;
