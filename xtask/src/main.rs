//! The project's build tool: `cargo xtask build | run | test`.
//!
//! Guests (strategies and adapters) are built for `wasm32-unknown-unknown` and linked straight
//! into components by rustup's `wasm-component-ld`. When the toolchain has no wasm32 standard
//! library (rustup's download server is out of reach on some machines), the standard library is
//! built from Debian's `rust-web-src` with Debian's `rustc-web` (`-Z build-std`), installing those
//! packages when missing. See `../shared/notes/wasm-toolchain.md` for the background.

mod guests;
mod polyglot;
mod toolchain;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = root();
    let result = match args.first().map(String::as_str) {
        Some("build") => build(&root),
        Some("run") => build(&root).and_then(|()| run(&root, &args[1..])),
        Some("test") => build(&root).and_then(|()| test(&root, &args[1..])),
        Some("guests") => guests::build_all(&root).and_then(|()| polyglot::build_all(&root)),
        _ => {
            eprintln!("usage: cargo xtask <build|run|test|guests> [args]\n");
            eprintln!("  build   build target/release/smart-router and every component");
            eprintln!("  run     build, then serve config/ on 127.0.0.1:8000 (SQLite under data/)");
            eprintln!(
                "  test    build, then run the whole test suite (extra args go to the test runner)"
            );
            eprintln!(
                "  guests  build only the WebAssembly components (with the Python, JavaScript and WAT examples)"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

/// Runs a command, failing with its description when it fails.
pub fn run_cmd(cmd: &mut Command) -> Result<(), String> {
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed ({status})"))
    }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn build(root: &Path) -> Result<(), String> {
    guests::build_all(root)?;
    eprintln!("xtask: building the gateway (release)");
    run_cmd(
        cargo()
            .current_dir(root)
            .args(["build", "--release", "-p", "smart-router"]),
    )
}

fn run(root: &Path, extra: &[String]) -> Result<(), String> {
    let bin = root.join("target/release/smart-router");
    let mut cmd = Command::new(bin);
    cmd.current_dir(root)
        .args(["serve", "--config", "config"])
        .args(extra);
    if std::env::var_os("SMART_ROUTER_MASTER_KEY").is_none() {
        eprintln!(
            "xtask: SMART_ROUTER_MASTER_KEY is not set; using the local development key `sk-smart-router-dev`"
        );
        cmd.env("SMART_ROUTER_MASTER_KEY", "sk-smart-router-dev");
    }
    run_cmd(&mut cmd)
}

fn test(root: &Path, extra: &[String]) -> Result<(), String> {
    polyglot::build_all(root)?;
    let python = guests::python_with_openai(root);
    let nextest = Command::new("cargo")
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    // The SDK's own unit tests (its helpers run natively as well as in guests), and the built-in
    // adapters' and strategies' where they have some.
    run_cmd(cargo().current_dir(root).args([
        "test",
        "--release",
        "--lib",
        "-p",
        "smart-router-sdk",
        "-p",
        "adapter-openai",
        "-p",
        "adapter-anthropic",
        "-p",
        "strategy-weighted-sort",
        "--features",
        "smart-router-sdk/strategy,smart-router-sdk/adapter",
    ]))?;
    let mut cmd = cargo();
    cmd.current_dir(root);
    if let Some(py) = &python {
        cmd.env("SMART_ROUTER_TEST_PYTHON", py);
    }
    if nextest {
        cmd.args(["nextest", "run", "--release", "--no-fail-fast"]);
    } else {
        eprintln!("xtask: cargo-nextest not found; using cargo test");
        cmd.args(["test", "--release", "--no-fail-fast"]);
    }
    cmd.args(extra);
    run_cmd(&mut cmd)
}
