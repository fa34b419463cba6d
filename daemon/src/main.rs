//! The `remapd` binary: parses flags and the config file, validates them (exit 64 on a
//! bad configuration, before touching the kernel), and runs the daemon or a command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use remapd::config::{Config, FileConfig};

/// remapd: lets clusters whose pod CIDRs overlap reach each other through WireGuard
/// gateways, by stateless prefix translation in eBPF after routing.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file (see `remapd example-config`).
    #[arg(long, short, env = "REMAPD_CONFIG")]
    config: Option<PathBuf>,
    /// API listen address (overrides `listen`).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// File with the API bearer token (overrides `token_file`).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// State directory (overrides `state_dir`).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// bpffs directory for the pinned dataplane (overrides `pin_dir`).
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// Underlay address peers reach this gateway at (overrides `advertise`).
    #[arg(long)]
    advertise: Option<std::net::IpAddr>,
    /// Where tunnel routes go, `own-table` or `main-table` (overrides `route_placement`).
    #[arg(long)]
    route_placement: Option<remapd::net::routes::RoutePlacement>,
    /// Routing table for tunnel routes (overrides `route_table`).
    #[arg(long)]
    route_table: Option<u32>,
    /// Priority of the policy rule (overrides `rule_priority`).
    #[arg(long)]
    rule_priority: Option<u32>,
    /// Directory for pid files and logs of started WireGuard processes (overrides
    /// `wireguard.run_dir`).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Userspace WireGuard program (overrides `wireguard.userspace_program`).
    #[arg(long)]
    wireguard_program: Option<PathBuf>,
    /// Start even though the state file is gone while a previous remapd's dataplane or
    /// tunnels are still in place: start empty and remove them (once, on purpose).
    #[arg(long)]
    adopt_and_clear: bool,
    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(
        long,
        env = "REMAPD_LOG",
        default_value = "info,netlink_packet_route=error"
    )]
    log: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon (the default).
    Run,
    /// Remove every rule, route and tunnel remapd made, without a running daemon.
    Teardown,
    /// Print the example configuration with every default.
    ExampleConfig,
    /// Validate the configuration and print it.
    CheckConfig,
    /// Print the OpenAPI document of the HTTP API.
    Openapi,
    /// Tools for policy authors (no daemon needed): check, run, test, bench.
    #[command(subcommand)]
    Policy(remapd::policy_cli::PolicyCommand),
}

const EX_USAGE: u8 = 64;

fn config(cli: &Cli) -> Result<Config, String> {
    let mut file = FileConfig::load(cli.config.as_deref()).map_err(|e| e.to_string())?;
    if let Some(v) = cli.listen {
        file.listen = v;
    }
    if let Some(v) = &cli.token_file {
        file.token_file = Some(v.clone());
    }
    if let Some(v) = &cli.state_dir {
        file.state_dir = v.clone();
    }
    if let Some(v) = &cli.pin_dir {
        file.pin_dir = v.clone();
    }
    if let Some(v) = cli.advertise {
        file.advertise = Some(v);
    }
    if let Some(v) = cli.route_placement {
        file.route_placement = v;
    }
    if let Some(v) = cli.route_table {
        file.route_table = v;
    }
    if let Some(v) = cli.rule_priority {
        file.rule_priority = v;
    }
    if let Some(v) = &cli.run_dir {
        file.wireguard.run_dir = v.clone();
    }
    if let Some(v) = &cli.wireguard_program {
        file.wireguard.userspace_program = v.clone();
    }
    let mut config = file.validate().map_err(|e| e.to_string())?;
    config.adopt_and_clear = cli.adopt_and_clear;
    Ok(config)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        }
        _ => std::future::pending::<()>().await,
    }
}

fn main() -> ExitCode {
    let mut cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EX_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "info".into()),
        )
        .init();
    if matches!(cli.command, Some(Command::Policy(_)))
        && let Some(Command::Policy(command)) = cli.command.take()
    {
        // The daemon's limits for this policy when a configuration is given (its
        // `[policy.by_name]` entry, else `[policy]`), else the defaults.
        let limits = if cli.config.is_some() {
            match config(&cli) {
                Ok(c) => c
                    .policy_limits_by_name()
                    .remove(&remapd::policy_cli::limits_name(&command))
                    .unwrap_or_else(|| c.policy_limits()),
                Err(e) => {
                    eprintln!("remapd: bad configuration: {e}");
                    return ExitCode::from(EX_USAGE);
                }
            }
        } else {
            remapd::policy::PolicyLimits::default()
        };
        return remapd::policy_cli::run(command, limits);
    }
    if matches!(cli.command, Some(Command::ExampleConfig)) {
        print!("{}", remapd::config::EXAMPLE);
        return ExitCode::SUCCESS;
    }
    if matches!(cli.command, Some(Command::Openapi)) {
        match remapd::api::openapi().to_pretty_json() {
            Ok(json) => {
                println!("{json}");
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("remapd: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let mut config = match config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("remapd: bad configuration: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("remapd: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => {
            println!("{:#?}", config.file);
            Ok(())
        }
        Command::Teardown => runtime.block_on(async {
            let daemon = remapd::server::build(&config).map_err(|e| e.to_string())?;
            let errors = daemon.teardown().await.map_err(|e| e.to_string())?;
            if errors.is_empty() {
                Ok(())
            } else {
                Err(errors.join("; "))
            }
        }),
        Command::Run | Command::ExampleConfig | Command::Openapi | Command::Policy(_) => {
            // Secure by default: with no token configured, mutating calls need the one
            // remapd keeps (and generates once) in the state directory.
            match config.ensure_token() {
                Ok(Some(path)) => tracing::info!(
                    token_file = %path.display(),
                    "no token_file configured: mutating calls need the token in this file"
                ),
                Ok(None) => {}
                Err(e) => {
                    eprintln!("remapd: bad configuration: {e}");
                    return ExitCode::from(EX_USAGE);
                }
            }
            runtime
                .block_on(remapd::server::serve(config, shutdown_signal()))
                .map_err(|e| e.to_string())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("remapd: {e}");
            ExitCode::FAILURE
        }
    }
}
