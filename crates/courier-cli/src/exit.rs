//! Exit statuses a script can tell apart without parsing output, and how errors are printed.

use std::fmt;
use std::process::ExitCode;

/// The statuses, as `courier --help` lists them.
pub const STATUSES: &str = "\
Exit status:
  0  success
  1  the run finished, but events were lost, duplicated or reordered (demo, bench)
  2  usage error: an invalid flag, argument or configuration
  3  runtime error: a database or broker failed or is unreachable, or I/O failed";

/// The run finished, but found lost, duplicated or reordered events.
const FAILED: u8 = 1;
/// The command line or the configuration is invalid (clap exits with this status too).
const USAGE: u8 = 2;
/// Anything else that stopped the command.
const RUNTIME: u8 = 3;

/// An error in what the user asked for, as opposed to a failure while doing it; exits 2.
#[derive(Debug)]
pub struct UsageError(pub anyhow::Error);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for UsageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// A usage error with this message.
pub fn usage(message: impl fmt::Display) -> anyhow::Error {
    UsageError(anyhow::anyhow!("{message}")).into()
}

/// Bails out of a command with a usage error unless `condition` holds.
macro_rules! ensure_usage {
    ($condition:expr, $($message:tt)+) => {
        if !$condition {
            return Err($crate::exit::usage(format_args!($($message)+)));
        }
    };
}
pub(crate) use ensure_usage;

/// The status for a command's outcome: `Ok(false)` is a run that found lost or reordered
/// events; errors are printed to stderr.
pub fn status(outcome: anyhow::Result<bool>) -> ExitCode {
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(FAILED),
        Err(error) => {
            eprintln!("error: {}", render(&error));
            let usage = error.chain().any(|cause| cause.is::<UsageError>());
            ExitCode::from(if usage { USAGE } else { RUNTIME })
        }
    }
}

/// The error and its causes on one line, `outer: cause: root`. A cause whose text the line
/// already holds is left out: some client libraries (sqlx, for one) both print their source in
/// their own message and return it as the source, which would repeat the same sentence.
pub fn render(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn a_cause_already_printed_by_its_wrapper_is_left_out() {
        let refused = Layer("Connection refused (os error 111)", None);
        let client = Layer(
            "error communicating with database: Connection refused (os error 111)",
            Some(Box::new(refused)),
        );
        let error = anyhow::Error::new(client).context("connecting to postgres://db/app");
        assert_eq!(
            render(&error),
            "connecting to postgres://db/app: error communicating with database: Connection refused (os error 111)"
        );
    }

    #[test]
    fn usage_errors_are_found_under_context() {
        let error = usage("--events must be at least 1").context("bench");
        assert!(error.chain().any(|cause| cause.is::<UsageError>()));
        assert_eq!(render(&error), "bench: --events must be at least 1");
    }
}
