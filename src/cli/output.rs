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

/// An error and its causes on one line, `outer: cause: …`, leaving out a cause whose text the
/// line already holds (an error type that writes its source into its own message, as many do,
/// would otherwise show it twice).
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read {path}: {source}")]
    struct Repeats {
        path: &'static str,
        source: std::io::Error,
    }

    #[test]
    fn a_cause_already_in_the_message_is_shown_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(Repeats {
            path: "run",
            source: io(),
        });
        assert_eq!(error_chain(&e), "cannot read run: no such file");
        let e = anyhow::Error::new(io()).context("opening run");
        assert_eq!(error_chain(&e), "opening run: no such file");
    }
}
