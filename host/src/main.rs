//! `smart-router`: serve the gateway, check a configuration, manage gateway keys.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "smart-router",
    version,
    about = "An OpenAI-compatible LLM gateway with WebAssembly routing strategies and provider adapters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// The configuration folder (providers.yaml, model_groups.yaml, system.yaml, pricing_policies.yaml).
        #[arg(long, default_value = "config")]
        config: PathBuf,
        /// Address to listen on (default: system.yaml's server.listen, else 127.0.0.1:8000).
        #[arg(long, env = "SMART_ROUTER_LISTEN")]
        listen: Option<String>,
        #[command(flatten)]
        db: Database,
        /// Where compiled components are cached across restarts (`none` turns it off).
        #[arg(
            long,
            env = "SMART_ROUTER_COMPONENT_CACHE",
            default_value = "data/component-cache"
        )]
        component_cache: String,
        /// Serving threads (default: one per core).
        #[arg(long, env = "SMART_ROUTER_WORKERS")]
        workers: Option<usize>,
    },
    /// Validate a configuration folder and its components as a reload would, then exit.
    Check {
        #[arg(long, default_value = "config")]
        config: PathBuf,
    },
    /// Serve the built-in mock provider over HTTP (an instant OpenAI-compatible upstream for
    /// benchmarks and demos).
    MockUpstream {
        #[arg(long, default_value = "127.0.0.1:9001")]
        listen: String,
        /// Wait this long before each answer.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// Answer this share of requests (percent) with a 500.
        #[arg(long, default_value_t = 0)]
        error_percent: u8,
        /// Answer this share of requests (percent) with a 429 and `Retry-After: 1`.
        #[arg(long, default_value_t = 0)]
        rate_limit_percent: u8,
    },
    /// Gateway keys.
    Keys {
        #[command(subcommand)]
        action: KeysCommand,
    },
}

/// The database every command that reads or writes state takes.
#[derive(Args)]
struct Database {
    /// sqlite:PATH or postgres://… (default: SQLite under data/).
    #[arg(
        long = "database",
        env = "DATABASE_URL",
        default_value = "sqlite://data/smart-router.db"
    )]
    url: String,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key; it is printed once and stored only as a hash.
    Create {
        /// A name to recognise the key by in usage records.
        #[arg(long)]
        name: String,
        /// Comma-separated models and groups the key may use (default: all).
        #[arg(long)]
        models: Option<String>,
        /// Most the key may spend per day, in US dollars.
        #[arg(long)]
        daily_budget: Option<f64>,
        /// Most the key may spend per month, in US dollars.
        #[arg(long)]
        monthly_budget: Option<f64>,
        /// Most requests the key may send per minute (per gateway instance).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        rpm: Option<u32>,
        /// Most tokens (prompt and completion) the key may use per minute (per gateway instance).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        tpm: Option<u32>,
        #[command(flatten)]
        db: Database,
    },
    /// List the keys (ids, names, models, budgets; never the keys themselves).
    List {
        #[command(flatten)]
        db: Database,
    },
    /// Revoke a key by its id: running gateways refuse it within 30 seconds (at once through
    /// `DELETE /admin/keys/{id}` on the gateway itself).
    Revoke {
        id: String,
        #[command(flatten)]
        db: Database,
    },
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SMART_ROUTER_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .init();
    // `serve` answers requests on its own serving threads (one per core, or
    // `SMART_ROUTER_WORKERS`), each with a single-threaded runtime; this runtime only accepts
    // connections and runs the background work (usage writer, health probes, reloads). The mock
    // upstream is a plain multi-threaded server.
    let mut builder = match cli.command {
        Command::MockUpstream { .. } => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve {
            config,
            listen,
            db,
            component_cache,
            workers,
        } => {
            let running = smart_router::start(smart_router::Options {
                config_dir: config,
                database_url: db.url,
                listen,
                master_key: std::env::var("SMART_ROUTER_MASTER_KEY").ok(),
                component_cache: (component_cache != "none").then(|| component_cache.into()),
                workers,
            })
            .await?;
            running.until_signal().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => check(config).await,
        Command::MockUpstream {
            listen,
            delay_ms,
            error_percent,
            rate_limit_percent,
        } => {
            let listener = tokio::net::TcpListener::bind(&listen).await?;
            tracing::info!(addr = %listener.local_addr()?, "mock upstream listening");
            let app = smart_router::upstream::mock::router(
                std::time::Duration::from_millis(delay_ms),
                smart_router::upstream::mock::Faults {
                    error_percent,
                    rate_limit_percent,
                },
            );
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, app).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys { action } => keys(action).await,
    }
}

/// `smart-router keys …`.
async fn keys(action: KeysCommand) -> anyhow::Result<ExitCode> {
    match action {
        KeysCommand::Create {
            name,
            models,
            daily_budget,
            monthly_budget,
            rpm,
            tpm,
            db,
        } => {
            let store = smart_router::store::Store::connect(&db.url).await?;
            let (id, key, hash) = smart_router::app::mint_key();
            store
                .create_key(
                    &id,
                    &name,
                    &hash,
                    models.as_deref(),
                    smart_router::store::KeyLimits {
                        budget: smart_router::budget::Limits {
                            daily_micros: daily_budget.map(|d| (d * 1e6).round().max(0.0) as u64),
                            monthly_micros: monthly_budget
                                .map(|d| (d * 1e6).round().max(0.0) as u64),
                        },
                        rpm,
                        tpm,
                    },
                )
                .await?;
            println!("{key}");
            eprintln!("created key `{name}` ({id}); it is shown only now and stored as a hash");
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::List { db } => {
            let store = smart_router::store::Store::connect(&db.url).await?;
            let dollars =
                |m: Option<u64>| m.map_or("-".to_string(), |m| format!("{:.2}", m as f64 / 1e6));
            println!(
                "{:<17} {:<20} {:<8} {:>8} {:>9} {:>6} {:>8}  models",
                "id", "name", "state", "daily $", "monthly $", "rpm", "tpm"
            );
            for k in store.list_keys().await? {
                println!(
                    "{:<17} {:<20} {:<8} {:>8} {:>9} {:>6} {:>8}  {}",
                    k.key.id,
                    k.key.name,
                    if k.revoked { "revoked" } else { "active" },
                    dollars(k.key.budget.daily_micros),
                    dollars(k.key.budget.monthly_micros),
                    k.key.rpm_limit.map_or("-".to_string(), |r| r.to_string()),
                    k.key.tpm_limit.map_or("-".to_string(), |r| r.to_string()),
                    k.key
                        .allowed_models
                        .map_or("*".to_string(), |m| m.join(",")),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Revoke { id, db } => {
            let store = smart_router::store::Store::connect(&db.url).await?;
            if store.revoke_key(&id).await? {
                eprintln!("revoked key {id}; running gateways refuse it within 30 seconds");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("error: there is no key with the id `{id}` (`keys list` shows them)");
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

/// Loads the configuration and every component exactly as a reload would.
async fn check(dir: PathBuf) -> anyhow::Result<ExitCode> {
    let cfg = match smart_router::config::load(&dir) {
        Ok(c) => c,
        Err(e) => {
            println!("error: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let rt = smart_router::components::Runtime::new(
        cfg.system.component_timeout,
        cfg.system.component_memory_bytes,
        None,
    )?;
    let mut failed = false;
    let mut comps = smart_router::components::Components::default();
    for (kind, name, path) in smart_router::reload::component_files(&cfg.system.components_dir) {
        match smart_router::components::load_component(&rt, kind, &name, &path) {
            Ok(loaded) => {
                println!("ok: {} `{name}` ({})", kind.label(), path.display());
                comps.insert(name, loaded);
            }
            Err(e) => {
                println!("error: {}: {e}", path.display());
                failed = true;
            }
        }
    }
    for w in cfg
        .warnings
        .iter()
        .chain(smart_router::reload::missing(&cfg, &comps).iter())
    {
        println!("warning: {w}");
    }
    println!(
        "{}: {} providers, {} channels, {} groups",
        if failed { "failed" } else { "ok" },
        cfg.providers.len(),
        cfg.channels.len(),
        cfg.groups.len()
    );
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
