//! Finding (or installing) a toolchain that builds wasm32 guests.

use std::path::{Path, PathBuf};
use std::process::Command;

/// How guests are built on this machine.
pub struct Guest {
    /// The cargo to run.
    pub cargo: PathBuf,
    /// `Some(rustc)` with `-Z build-std` (Debian route); `None` when the toolchain has a wasm32 std.
    pub debian_rustc: Option<PathBuf>,
    /// rustup's `wasm-component-ld`, which links a component directly.
    pub linker: PathBuf,
    /// The `wasm-ld` it drives.
    pub wasm_ld: PathBuf,
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn detect(root: &Path) -> Result<Guest, String> {
    let sysroot = output(
        Command::new("rustc")
            .current_dir(root)
            .args(["--print", "sysroot"]),
    )
    .ok_or("cannot run `rustc --print sysroot`: is rustup's toolchain installed?")?;
    let host = output(Command::new("rustc").current_dir(root).arg("-vV"))
        .and_then(|v| {
            v.lines()
                .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        })
        .unwrap_or_else(|| "x86_64-unknown-linux-gnu".into());
    let bin = Path::new(&sysroot)
        .join("lib/rustlib")
        .join(&host)
        .join("bin");
    let linker = bin.join("wasm-component-ld");
    let wasm_ld = bin.join("gcc-ld/wasm-ld");
    if !linker.exists() || !wasm_ld.exists() {
        return Err(format!(
            "{} is missing: the rustup toolchain ships wasm-component-ld since Rust 1.82",
            linker.display()
        ));
    }
    if Path::new(&sysroot)
        .join("lib/rustlib/wasm32-unknown-unknown/lib")
        .exists()
    {
        eprintln!("xtask: guests: using the toolchain's wasm32-unknown-unknown standard library");
        return Ok(Guest {
            cargo: "cargo".into(),
            debian_rustc: None,
            linker,
            wasm_ld,
        });
    }
    let rustc = PathBuf::from("/usr/bin/rustc");
    let cargo = PathBuf::from("/usr/bin/cargo");
    let std_src = Path::new("/usr/lib/rustlib/src/rust/library");
    if !(rustc.exists() && cargo.exists() && std_src.exists()) {
        install_debian_rust()?;
    }
    if !(rustc.exists() && cargo.exists() && std_src.exists()) {
        return Err("no wasm32 standard library: install one with `rustup target add wasm32-unknown-unknown`, \
                    or Debian's `apt-get install rustc-web cargo-web rust-web-src`"
            .into());
    }
    eprintln!("xtask: guests: building std for wasm32 from Debian's rust-web-src (-Z build-std)");
    Ok(Guest {
        cargo,
        debian_rustc: Some(rustc),
        linker,
        wasm_ld,
    })
}

fn install_debian_rust() -> Result<(), String> {
    let is_root = output(Command::new("id").arg("-u")).is_some_and(|u| u == "0");
    if !is_root || !Path::new("/usr/bin/apt-get").exists() {
        return Err("the toolchain has no wasm32 standard library and Debian's rust packages are missing; run \
                    `sudo apt-get install rustc-web cargo-web rust-web-src` or `rustup target add wasm32-unknown-unknown`"
            .into());
    }
    eprintln!(
        "xtask: installing Debian's rustc-web, cargo-web and rust-web-src (the guest toolchain)"
    );
    crate::run_cmd(Command::new("apt-get").args(["update", "-qq"]))?;
    crate::run_cmd(
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-qq",
                "rustc-web",
                "cargo-web",
                "rust-web-src",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
