//! Standard output for the commands' reports.
//!
//! `println!` panics when stdout is a pipe whose reader has gone (`stockq stats | head`):
//! a backtrace for a reader that merely had enough. [`outln!`] and [`out!`] print the same
//! way, and end the process quietly with status 0 when the reader is gone, as a command
//! whose output was cut short by its reader should; any other write error is reported in one
//! line (status 1).

use std::io::Write;

/// Writes to stdout; see the module docs.
pub(crate) fn write(args: std::fmt::Arguments<'_>, newline: bool) {
    let mut stdout = std::io::stdout().lock();
    let written =
        stdout.write_fmt(args).and_then(|()| if newline { stdout.write_all(b"\n") } else { Ok(()) });
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("stockq: cannot write to standard output: {e}");
            std::process::exit(1);
        }
    }
}

/// `println!` to stdout that ends the process quietly when its reader is gone.
macro_rules! outln {
    () => { $crate::out::write(format_args!(""), true) };
    ($($arg:tt)*) => { $crate::out::write(format_args!($($arg)*), true) };
}

/// `print!` to stdout that ends the process quietly when its reader is gone.
macro_rules! out {
    ($($arg:tt)*) => { $crate::out::write(format_args!($($arg)*), false) };
}
