//! The `stockq` binary: parse the command line, set up logging, run the command, and turn
//! the result into one line on stderr and an exit status (docs/commands.md).

use std::process::ExitCode;

use clap::Parser;
use stockq::cli::Cli;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return stockq::cli::usage_error(e),
    };
    stockq::telemetry::init(cli.log_format(), cli.default_log_filter(), &cli.log_queue());
    // Process-wide state for rediss:// and ssl-mode, set once here before anything connects.
    stockq::install_tls_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stockq: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(stockq::cli::run(cli));
    // Do not wait for background tasks (reconnect loops) to notice.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    ExitCode::from(code)
}
