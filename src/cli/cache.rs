//! `pretext cache`: where the image cache is and how large; `--clear` removes it.

use std::path::PathBuf;

use clap::Args;

use super::output::{note, say_or};
use super::{EXIT_FAILED, EXIT_INPUT, EXIT_PIPE_CLOSED};
use crate::data::cache;

#[derive(Debug, Args)]
pub struct CacheArgs {
    /// Remove every file of the image cache (folders are decoded again the next time they
    /// open); only the cache's own files are removed.
    #[arg(long)]
    pub clear: bool,
    /// The cache folder [default: PRETEXT_CACHE_DIR, else the platform's cache folder].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Runs `pretext cache`; returns the process exit code.
pub fn cache(args: &CacheArgs) -> i32 {
    let Some(dir) = cache::location(args.dir.as_deref()) else {
        note("error: no cache folder: neither PRETEXT_CACHE_DIR nor a home folder is set");
        return EXIT_INPUT;
    };
    let shown = dir.display();
    if args.clear {
        match cache::clear(&dir) {
            Ok(removed) => {
                say_or!(
                    EXIT_PIPE_CLOSED,
                    "Removed {} from {shown}: {} freed",
                    crate::text::count(removed.files, "cache file", "cache files"),
                    crate::report::bytes(removed.bytes)
                );
                0
            }
            Err(e) => {
                note(format_args!(
                    "error: cannot clear the image cache in {shown}: {e}"
                ));
                EXIT_FAILED
            }
        }
    } else {
        match cache::usage(&dir) {
            Ok(u) => {
                say_or!(
                    EXIT_PIPE_CLOSED,
                    "Image cache: {shown} ({}, {})",
                    crate::text::count(u.files, "file", "files"),
                    crate::report::bytes(u.bytes)
                );
                0
            }
            Err(e) => {
                note(format_args!(
                    "error: cannot read the image cache in {shown}: {e}"
                ));
                EXIT_FAILED
            }
        }
    }
}
