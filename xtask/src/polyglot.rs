//! The strategy examples in other languages (`sdk/python`, `sdk/javascript`, `sdk/wat`) and a
//! Python test fixture, built into `target/test-components/strategies/` for the tests. Their toolchains come from the
//! registries (componentize-py from PyPI, jco and componentize-js from npm) into `target/`, at
//! the versions the examples pin.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use crate::run_cmd;

/// Builds the three examples; each is rebuilt only when its sources are newer than its output.
pub fn build_all(root: &Path) -> Result<(), String> {
    let out = root.join("target/test-components/strategies");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    wat(root, &out.join("wat-reverse.wasm"))?;
    python(
        root,
        "sdk/python",
        "cheapest_healthy",
        &out.join("cheapest-healthy.wasm"),
    )?;
    python(
        root,
        "tests/fixtures/python",
        "snoop",
        &out.join("snoop.wasm"),
    )?;
    javascript(root, &out.join("prefer-provider.wasm"))?;
    Ok(())
}

/// The newest modification time among `paths` (files or folders, not recursive).
fn newest(paths: &[PathBuf]) -> Option<SystemTime> {
    paths
        .iter()
        .flat_map(|p| {
            let mut times = vec![std::fs::metadata(p).and_then(|m| m.modified()).ok()];
            if p.is_dir()
                && let Ok(entries) = std::fs::read_dir(p)
            {
                times.extend(
                    entries
                        .flatten()
                        .map(|e| e.metadata().and_then(|m| m.modified()).ok()),
                );
            }
            times
        })
        .flatten()
        .max()
}

fn up_to_date(output: &Path, sources: &[PathBuf]) -> bool {
    let Ok(built) = std::fs::metadata(output).and_then(|m| m.modified()) else {
        return false;
    };
    newest(sources).is_some_and(|src| src <= built)
}

/// Writes `bytes` beside `to` and renames, so a watcher never sees half a component.
fn install(bytes: &[u8], to: &Path) -> Result<(), String> {
    let tmp = to.with_extension("wasm.tmp");
    std::fs::write(&tmp, bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, to).map_err(|e| format!("{}: {e}", to.display()))
}

/// `sdk/wat/reverse.wat`: a component written by hand in the text format.
fn wat(root: &Path, to: &Path) -> Result<(), String> {
    let src = root.join("sdk/wat/reverse.wat");
    let bytes = wat::parse_file(&src).map_err(|e| format!("{}: {e}", src.display()))?;
    install(&bytes, to)
}

/// `sdk/python` (and the test fixture `tests/fixtures/python`): componentize-py, installed into
/// `target/py-tools`.
fn python(root: &Path, folder: &str, module: &str, to: &Path) -> Result<(), String> {
    let src = root.join(folder);
    let requirements = root.join("sdk/python/requirements.txt");
    let sources = [
        src.join(format!("{module}.py")),
        requirements.clone(),
        root.join("wit"),
    ];
    if up_to_date(to, &sources) {
        return Ok(());
    }
    let venv = root.join("target/py-tools");
    let tool = venv.join("bin/componentize-py");
    let stamp = venv.join("requirements.txt");
    if !tool.exists() || std::fs::read(&stamp).ok() != std::fs::read(&requirements).ok() {
        eprintln!("xtask: installing componentize-py (PyPI) into target/py-tools");
        run_cmd(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        run_cmd(
            Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "--disable-pip-version-check", "-r"])
                .arg(&requirements),
        )?;
        std::fs::copy(&requirements, &stamp).map_err(|e| e.to_string())?;
    }
    eprintln!("xtask: building the Python strategy {folder}/{module}.py (componentize-py)");
    let tmp = to.with_extension("wasm.building");
    run_cmd(
        Command::new(&tool)
            .current_dir(root)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .args(["-d", "wit", "-w", "strategy", "componentize", "-p"])
            .arg(&src)
            .args([module, "-o"])
            .arg(&tmp),
    )?;
    std::fs::rename(&tmp, to).map_err(|e| format!("{}: {e}", to.display()))
}

/// `sdk/javascript`: jco and componentize-js from npm, installed into `target/js-tools` from the
/// example's lock file.
fn javascript(root: &Path, to: &Path) -> Result<(), String> {
    let sdk = root.join("sdk/javascript");
    let sources = [
        sdk.join("prefer-provider.js"),
        sdk.join("package.json"),
        sdk.join("package-lock.json"),
        root.join("wit"),
    ];
    if up_to_date(to, &sources) {
        return Ok(());
    }
    let tools = root.join("target/js-tools");
    let jco = tools.join("node_modules/.bin/jco");
    let lock = sdk.join("package-lock.json");
    let stamp = tools.join("package-lock.json");
    if !jco.exists() || std::fs::read(&stamp).ok() != std::fs::read(&lock).ok() {
        eprintln!("xtask: installing jco and componentize-js (npm) into target/js-tools");
        std::fs::create_dir_all(&tools).map_err(|e| e.to_string())?;
        std::fs::copy(sdk.join("package.json"), tools.join("package.json"))
            .map_err(|e| e.to_string())?;
        std::fs::copy(&lock, &stamp).map_err(|e| e.to_string())?;
        run_cmd(Command::new("npm").current_dir(&tools).args([
            "ci",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
        ]))?;
    }
    eprintln!("xtask: building the JavaScript strategy example (componentize-js)");
    let tmp = to.with_extension("wasm.building");
    run_cmd(
        Command::new(&jco)
            .current_dir(&sdk)
            .arg("componentize")
            .arg(sdk.join("prefer-provider.js"))
            .arg("--wit")
            .arg(root.join("wit"))
            .args(["--world-name", "strategy", "--disable", "all", "-o"])
            .arg(&tmp),
    )?;
    std::fs::rename(&tmp, to).map_err(|e| format!("{}: {e}", to.display()))
}
