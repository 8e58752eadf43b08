//! `annal relay`: runs the `annal-relay` program (the `relay/` crate of this workspace), which
//! relays a log's events to NATS JetStream. The relay is its own crate so that the engine, and
//! this command, keep no async runtime and no network dependency; this subcommand only finds
//! the program next to `annal` and hands it the arguments.

use std::ffi::OsString;

use clap::Args;

use crate::failure::Failure;

/// Relay a log's events to NATS JetStream, at least once, in order per key (runs `annal-relay`;
/// `annal relay --help` shows its options).
#[derive(Args)]
#[command(disable_help_flag = true)]
pub struct RelayArgs {
    /// The arguments of `annal-relay`: DIR --to nats://HOST:PORT --stream S --subject PREFIX
    /// [--group NAME] [--until-caught-up]
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub args: Vec<OsString>,
}

pub fn run(args: &RelayArgs) -> Result<(), Failure> {
    let annal = std::env::current_exe().map_err(|e| Failure::io("find", "annal", e))?;
    let relay = annal.with_file_name("annal-relay");
    if !relay.exists() {
        return Err(Failure::message(format!(
            "{} is missing: build it with `cargo build --release -p annal-relay` (it is a \
             separate crate, so that annal itself needs no network library)",
            relay.display()
        )));
    }
    use std::os::unix::process::CommandExt;
    // Replaces this process: signals and the exit code are the relay's.
    let error = std::process::Command::new(&relay).args(&args.args).exec();
    Err(Failure::io("run", relay, error))
}
