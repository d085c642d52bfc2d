//! Building the WebAssembly components: built-in ones into `config/components/`, test fixtures
//! into `target/test-components/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::toolchain;

/// One guest crate.
struct Crate {
    package: String,
    /// `strategy` or `adapter`, from the package name's prefix.
    kind: &'static str,
    /// The component's name: the package name without its kind prefix.
    name: String,
    /// Where the built component goes.
    out_dir: PathBuf,
}

fn discover(root: &Path) -> Result<Vec<Crate>, String> {
    let mut crates = Vec::new();
    for (folder, out) in [
        ("strategies", root.join("config/components")),
        ("adapters", root.join("config/components")),
        ("tests/guests", root.join("target/test-components")),
    ] {
        let Ok(entries) = std::fs::read_dir(root.join(folder)) else {
            continue;
        };
        let mut dirs: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("Cargo.toml").exists())
            .collect();
        dirs.sort();
        for dir in dirs {
            let manifest =
                std::fs::read_to_string(dir.join("Cargo.toml")).map_err(|e| e.to_string())?;
            let package = manifest
                .lines()
                .find_map(|l| {
                    l.trim()
                        .strip_prefix("name = \"")
                        .and_then(|r| r.strip_suffix('"'))
                })
                .ok_or_else(|| format!("{}: no package name", dir.display()))?
                .to_string();
            let (kind, name) = if let Some(n) = package.strip_prefix("strategy-") {
                ("strategy", n.to_string())
            } else if let Some(n) = package.strip_prefix("adapter-") {
                ("adapter", n.to_string())
            } else {
                return Err(format!(
                    "{}: guest packages are named strategy-NAME or adapter-NAME",
                    dir.display()
                ));
            };
            crates.push(Crate {
                package,
                kind,
                name,
                out_dir: out.clone(),
            });
        }
    }
    Ok(crates)
}

/// Builds every guest and copies the components into place.
pub fn build_all(root: &Path) -> Result<(), String> {
    let crates = discover(root)?;
    let tc = toolchain::detect(root)?;
    // Strategies and adapters enable different SDK features, so they build in separate runs.
    for kind in ["strategy", "adapter"] {
        let packages: Vec<&Crate> = crates.iter().filter(|c| c.kind == kind).collect();
        if packages.is_empty() {
            continue;
        }
        eprintln!("xtask: building {} {kind} component(s)", packages.len());
        let mut cmd = Command::new(&tc.cargo);
        cmd.current_dir(root)
            .env("CARGO_TARGET_DIR", root.join("target/guest"))
            .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER", &tc.linker)
            .env(
                "CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS",
                format!(
                    "-C link-arg=--wasm-ld-path={} -C link-arg=--wasi-adapter=none",
                    tc.wasm_ld.display()
                ),
            )
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .args([
                "build",
                "--profile",
                "guest",
                "--target",
                "wasm32-unknown-unknown",
            ]);
        if let Some(rustc) = &tc.debian_rustc {
            let path = format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default());
            cmd.env("RUSTC", rustc)
                .env("RUSTC_BOOTSTRAP", "1")
                .env("PATH", path)
                .env_remove("RUSTUP_TOOLCHAIN")
                .env_remove("CARGO")
                .args(["-Z", "build-std=std,panic_abort"]);
        }
        for c in &packages {
            cmd.args(["-p", &c.package]);
        }
        crate::run_cmd(&mut cmd)?;
    }
    let built = root.join("target/guest/wasm32-unknown-unknown/guest");
    for c in &crates {
        let from = built.join(format!("{}.wasm", c.package.replace('-', "_")));
        let folder = c.out_dir.join(if c.kind == "strategy" {
            "strategies"
        } else {
            "adapters"
        });
        std::fs::create_dir_all(&folder).map_err(|e| format!("{}: {e}", folder.display()))?;
        let to = folder.join(format!("{}.wasm", c.name));
        let bytes = std::fs::read(&from).map_err(|e| format!("{}: {e}", from.display()))?;
        // Only touch files that changed, so a running gateway does not reload for nothing.
        if std::fs::read(&to).ok().as_deref() != Some(bytes.as_slice()) {
            // Write beside and rename: a watcher never sees a half-written component.
            let tmp = folder.join(format!(".{}.wasm.tmp", c.name));
            std::fs::write(&tmp, &bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
            std::fs::rename(&tmp, &to).map_err(|e| format!("{}: {e}", to.display()))?;
        }
    }
    eprintln!("xtask: components ready in config/components/ and target/test-components/");
    Ok(())
}

/// A Python with the official `openai` package, for the SDK compatibility tests.
pub fn python_with_openai(root: &Path) -> Option<PathBuf> {
    let venv = root.join("target/py-venv");
    let python = venv.join("bin/python");
    let has = |py: &Path| {
        Command::new(py)
            .args(["-c", "import openai"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if python.exists() && has(&python) {
        return Some(python);
    }
    eprintln!(
        "xtask: installing the official `openai` Python SDK into target/py-venv (for the SDK tests)"
    );
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check", "openai"])
            .status()
            .is_ok_and(|s| s.success());
    if ok && has(&python) {
        Some(python)
    } else {
        eprintln!("xtask: could not install the openai SDK; the SDK tests will fail");
        None
    }
}
