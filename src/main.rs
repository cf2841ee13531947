use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, SignalKind};

use alert_relay::config::{Config, Source, DEFAULT_PATH};
use alert_relay::{Options, Relay};

/// mimalloc rather than glibc's malloc: under load glibc's malloc and free were
/// a quarter of the HTTP threads' CPU (BENCHMARKS.md, session 8).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Durable Alertmanager webhook relay.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file [default: config/alert-relay.yaml, else the embedded copy]
    #[arg(long, global = true, env = "ALERT_RELAY_CONFIG")]
    config: Option<PathBuf>,
    /// Start with an empty queue when the spool that existed is missing, empty
    /// or unreadable (a broken file is kept aside). Without it that is an error.
    #[arg(long, global = true)]
    reset_spool: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay (the default).
    Serve,
    /// Validate the configuration and the files it names; print every error.
    CheckConfig,
    /// Exit 0 if the relay of this configuration answers /-/healthy (for
    /// container health checks, where no curl exists).
    Healthcheck,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let source = Source::resolve(cli.config);
    let config = match Config::load(&source) {
        Ok(c) => c,
        Err(errors) => {
            for line in &errors.0 {
                eprintln!("{line}");
            }
            return ExitCode::FAILURE;
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            let name = match &source {
                Source::File(p) => p.display().to_string(),
                Source::Embedded => "embedded default".into(),
            };
            println!("{name}: OK ({} receivers)", config.receivers.len());
            ExitCode::SUCCESS
        }
        Command::Healthcheck => match healthcheck(&config.server.listen) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("unhealthy: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve => {
            if matches!(source, Source::Embedded) {
                log::info!("no {DEFAULT_PATH} here; using the embedded default configuration");
            }
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(serve(source, config, Options { reset_spool: cli.reset_spool }))
        }
    }
}

async fn serve(source: Source, config: Config, options: Options) -> ExitCode {
    let signals = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()));
    let (mut term, mut int, mut hup) = match signals {
        (Ok(t), Ok(i), Ok(h)) => (t, i, h),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            eprintln!("cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let relay = match Relay::start_with(source, config, options).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    loop {
        tokio::select! {
            _ = term.recv() => { log::info!("SIGTERM: shutting down"); break }
            _ = int.recv() => { log::info!("SIGINT: shutting down"); break }
            _ = hup.recv() => {
                log::info!("SIGHUP: reloading the configuration");
                // Errors are logged by the reload itself.
                let _ = relay.reload().await;
            }
        }
    }
    relay.shutdown().await;
    ExitCode::SUCCESS
}

/// `GET /-/healthy` over plain TCP to the listen address (loopback for a
/// wildcard address).
fn healthcheck(listen: &str) -> Result<(), String> {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
    let mut addr: SocketAddr = listen
        .to_socket_addrs()
        .map_err(|e| format!("{listen}: {e}"))?
        .next()
        .ok_or_else(|| format!("{listen}: no address"))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    let timeout = std::time::Duration::from_secs(3);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    stream
        .write_all(format!("GET /-/healthy HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut answer = String::new();
    let _ = stream.take(1024).read_to_string(&mut answer);
    match answer.split(' ').nth(1) {
        Some("200") => Ok(()),
        _ => Err(format!("{addr}: {}", answer.lines().next().unwrap_or("no answer"))),
    }
}
