//! The `tracekeeper` binary: `run` the sidecar, or `validate` a configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracekeeper::config::{Config, DEFAULT_CONFIG};

#[derive(Parser)]
#[command(
    name = "tracekeeper",
    version,
    about = "Tail sampling for OpenTelemetry traces, with the rules in WebAssembly"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar (OTLP in on 4317/4318, kept traces out through the configured exporter).
    Run {
        /// Configuration file (collector layout); without it, the embedded default.
        #[arg(long)]
        config: Option<PathBuf>,
        /// A guest component implementing wit/tracekeeper.wit instead of the embedded one.
        #[arg(long)]
        guest: Option<PathBuf>,
    },
    /// Check a configuration file (including the guest's policies) and exit.
    Validate {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
        /// The guest whose policies are checked (default: the embedded one).
        #[arg(long)]
        guest: Option<PathBuf>,
    },
    /// Print the embedded default configuration.
    DefaultConfig,
}

fn load(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    let text = match path {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        None => DEFAULT_CONFIG.to_string(),
    };
    let config = Config::parse(&text).map_err(|e| match path {
        Some(p) => anyhow::anyhow!("{}: {e}", p.display()),
        None => anyhow::anyhow!("embedded default config: {e}"),
    })?;
    Ok(config)
}

fn init_logs(config: Option<&Config>) {
    use tracing_subscriber::EnvFilter;
    let level = config
        .and_then(|c| c.service.telemetry.logs.level.clone())
        .unwrap_or_else(|| "info".into());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let json = config
        .and_then(|c| c.service.telemetry.logs.encoding.as_deref())
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for people: no escape codes in files and log collectors.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config, guest } => (|| {
            let cfg = load(config.as_ref())?;
            init_logs(Some(&cfg));
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            rt.block_on(tracekeeper::app::run_with_reload(
                cfg,
                config.as_deref(),
                guest.as_deref(),
            ))
        })(),
        Command::Validate { config, guest } => (|| {
            let cfg = load(Some(&config))?;
            tracekeeper::app::validate(&cfg, guest.as_deref())
                .map_err(|e| anyhow::anyhow!("{}: {e:#}", config.display()))?;
            println!("config OK");
            Ok(())
        })(),
        Command::DefaultConfig => {
            print!("{DEFAULT_CONFIG}");
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tracekeeper: {e:#}");
            ExitCode::FAILURE
        }
    }
}
