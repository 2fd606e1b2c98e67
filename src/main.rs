//! The `kahuna` binary. Subcommands arrive with the node (issue 4), the client (issue 5) and the
//! benchmark harness (issue 6); until then it reports its version and what it can do.

use std::process::ExitCode;

const USAGE: &str = "usage: kahuna <command>

commands:
  version     print the version

The node (`serve`, `playground`), the client commands and `bench` are not built yet.
The deterministic cluster simulator runs with:
  KAHUNA_SIM_SEEDS=100 cargo test --release --test simulation";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("version") | Some("--version") | Some("-V") => {
            println!("kahuna {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("help") | Some("--help") | Some("-h") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("kahuna: unknown command '{other}'\n{USAGE}");
            ExitCode::from(2)
        }
        None => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
