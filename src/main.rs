//! The slotline binary: parse the command line, load the config, run until a signal.

use std::path::PathBuf;
use std::process::ExitCode;

use std::time::Duration;

use clap::{Parser, Subcommand};
use slotline::config::Config;
use slotline::server::Stop;
use tokio::sync::mpsc::UnboundedSender;

mod memory;

#[derive(Parser)]
#[command(
    name = "slotline",
    version,
    about = "A Redis proxy: Redis Cluster behind one plain RESP address"
)]
struct Cli {
    /// Configuration file (YAML).
    #[arg(short, long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    /// twemproxy's stats port: serve twemproxy-compatible JSON stats on this port (as nutcracker -s).
    #[arg(short = 's', long, value_name = "PORT")]
    stats_port: Option<u16>,
    /// twemproxy's stats address (as nutcracker -a); with -s, or port 22222 without it.
    #[arg(short = 'a', long, value_name = "ADDR")]
    stats_addr: Option<String>,
    /// twemproxy's stats aggregation interval (as nutcracker -i). Accepted for nutcracker command lines;
    /// slotline's counters are always current.
    #[arg(short = 'i', long, value_name = "MS")]
    stats_interval: Option<u64>,
    /// Test the configuration and exit, as nutcracker -t (the same as `slotline check`).
    #[arg(short = 't', long)]
    test_conf: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration and, for pools that follow a Kubernetes Service, ask the API
    /// server what slotline may see there; exit 0 when all is well, 1 with the reasons otherwise.
    Check,
    /// Before a migration: check, reading only, that every key on each migrating pool's old servers
    /// is where its `migrate.from` placement names; exit 1 naming keys found out of place.
    #[command(name = "migrate-verify")]
    MigrateVerify,
    /// Drive a running slotline's migration through its admin listener: `status`, `start` (a
    /// pool with `start: manual` stops verifying and moves; every slotline serving it follows),
    /// `pause` or `resume` (that slotline's background mover).
    Migrate {
        action: MigrateAction,
        /// The admin listener to ask (default: the config's `admin.listen`).
        #[arg(long, value_name = "HOST:PORT")]
        admin: Option<String>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum MigrateAction {
    Status,
    Start,
    Pause,
    Resume,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(path) = cli.config else {
        eprintln!("slotline: --config FILE is required (see --help)");
        return ExitCode::from(2);
    };
    let mut config = match Config::load(&path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("slotline: invalid configuration: {e}");
            return ExitCode::from(1);
        }
    };
    if cli.stats_port.is_some() || cli.stats_addr.is_some() {
        let addr = cli.stats_addr.as_deref().unwrap_or("0.0.0.0");
        let port = cli.stats_port.unwrap_or(22222);
        config.stats_listen = Some(slotline::config::join_host_port(addr, port));
    }
    let _ = cli.stats_interval;
    if cli.test_conf || matches!(cli.command, Some(Command::Check)) {
        println!(
            "{}: configuration is valid ({} pool(s))",
            path.display(),
            config.pools.len()
        );
        // nutcracker's -t tests the file only; `check` also asks the API server of Kubernetes pools.
        if cli.test_conf {
            return ExitCode::SUCCESS;
        }
        return check_sources(&config);
    }
    if matches!(cli.command, Some(Command::MigrateVerify)) {
        return migrate_verify(&config);
    }
    if let Some(Command::Migrate { action, admin }) = &cli.command {
        return migrate_drive(&config, *action, admin.as_deref());
    }
    init_tracing(cli.log_format, &config.log_level);
    let workers = match config.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    // One worker needs no work stealing: the current-thread scheduler does the same job with fewer
    // atomics and no cross-thread wake-ups.
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("slotline: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let config_file = Some(path.display().to_string());
    memory::trim();
    let result = runtime.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(forward_signals(tx));

        slotline::server::run(config, config_file, rx, memory::release_startup_code).await
    });
    // Tasks still running (backend connections, a name being resolved on a blocking thread) must not
    // hold the exit up past the grace period.
    runtime.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "slotline stopped");
            eprintln!("slotline: {e}");
            ExitCode::from(1)
        }
    }
}

/// A runtime for one-shot subcommands (`check`, `migrate-verify`); None (said on stderr) when it
/// cannot start.
fn one_shot_runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("slotline: cannot start the runtime: {e}");
            None
        }
    }
}

/// `slotline migrate ACTION`: one HTTP request to the admin listener, its answer printed.
fn migrate_drive(config: &Config, action: MigrateAction, admin: Option<&str>) -> ExitCode {
    use std::io::{Read, Write};
    let Some(addr) = admin.or(config.admin.as_ref().map(|a| a.listen.as_str())) else {
        eprintln!("slotline: the config has no admin.listen; give --admin HOST:PORT");
        return ExitCode::from(2);
    };
    let request = match action {
        MigrateAction::Status => "GET /migration",
        MigrateAction::Start => "POST /migration/start",
        MigrateAction::Pause => "POST /migration/pause",
        MigrateAction::Resume => "POST /migration/resume",
    };
    let asked = std::net::TcpStream::connect(addr).and_then(|mut stream| {
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "{request} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    });
    let answer = match asked {
        Ok(answer) => answer,
        Err(e) => {
            eprintln!("slotline: cannot ask the admin listener at {addr}: {e}");
            return ExitCode::from(1);
        }
    };
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let ok = head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200");
    match ok {
        true => print!("{body}"),
        false => eprint!("slotline: {body}"),
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `slotline migrate-verify`: each migrating pool's old servers, key by key.
fn migrate_verify(config: &Config) -> ExitCode {
    let Some(runtime) = one_shot_runtime() else {
        return ExitCode::from(1);
    };
    let mut failed = false;
    let mut any = false;
    for (name, pool) in config.pools.iter().filter(|(_, p)| p.migrate.is_some()) {
        any = true;
        match runtime.block_on(slotline::migrate::verify(name, pool)) {
            Ok(report) => {
                println!(
                    "pool {name}: {} keys on {} old servers, {} out of place",
                    report.keys, report.servers, report.misplaced
                );
                for example in &report.examples {
                    println!("pool {name}:   {example}");
                }
                failed |= report.misplaced > 0;
            }
            Err(e) => {
                println!("pool {name}: cannot verify: {e}");
                failed = true;
            }
        }
    }
    if !any {
        println!("no pool has a migrate: block");
    }
    match failed {
        true => ExitCode::from(1),
        false => ExitCode::SUCCESS,
    }
}

/// How long `slotline check` waits for an API server before calling it unreachable.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// `slotline check` beyond the file: each Kubernetes pool's Service as the API server shows it to
/// slotline (the chosen API, missing permissions, ready endpoints), in the words the running proxy
/// would log. Exit 1 when a pool could not reach its backends.
fn check_sources(config: &slotline::config::Config) -> ExitCode {
    // The certificate files, read as the pool would read them at start.
    let mut failed = false;
    for (name, pool) in &config.pools {
        for problem in slotline::tls::check(pool) {
            failed = true;
            println!("pool {name}: {problem}");
        }
    }
    if config.pools.values().all(|p| p.kubernetes.is_none()) {
        return match failed {
            true => ExitCode::from(1),
            false => ExitCode::SUCCESS,
        };
    }
    let Some(runtime) = one_shot_runtime() else {
        return ExitCode::from(1);
    };
    for (name, pool) in &config.pools {
        let found = runtime.block_on(async {
            tokio::time::timeout(CHECK_TIMEOUT, slotline::discovery::check(pool)).await
        });
        let found = match found {
            Ok(found) => found,
            Err(_) => Some(Err(vec![format!(
                "API server unreachable (no answer within {} s)",
                CHECK_TIMEOUT.as_secs()
            )])),
        };
        match found {
            None => {}
            Some(Ok(summary)) => println!("pool {name}: {summary}"),
            Some(Err(problems)) => {
                failed = true;
                for problem in problems {
                    println!("pool {name}: {problem}");
                }
            }
        }
    }
    match failed {
        true => ExitCode::from(1),
        false => ExitCode::SUCCESS,
    }
}

/// RUST_LOG, when set, wins over the config's `log_level` (validated at load).
fn init_tracing(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // kube-rs logs every failed request of a retry loop; slotline logs each change of its
        // discovery state once, with the error, so kube's own lines are off unless RUST_LOG asks.
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(format!("{level},kube_client=off,kube_runtime=off"))
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Turns SIGTERM into a graceful stop and SIGINT into a fast one, for as long as the process runs.
async fn forward_signals(stops: UnboundedSender<Stop>) {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => loop {
            let stop = tokio::select! {
                _ = term.recv() => Stop::Graceful,
                _ = int.recv() => Stop::Fast,
            };
            if stops.send(stop).is_err() {
                return;
            }
        },
        _ => {
            tracing::warn!("cannot install the SIGTERM handler; Ctrl-C stops at once");
            let _ = tokio::signal::ctrl_c().await;
            let _ = stops.send(Stop::Fast);
        }
    }
}
