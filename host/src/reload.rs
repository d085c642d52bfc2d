//! Hot reload: a debounced watcher over the configuration folder and the component folders.
//! Each change is compiled and validated off the request path, then swapped in atomically; a
//! refused file is logged once, clearly, and the previous version keeps serving.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::app::App;
use crate::components::{Components, Kind, Runtime, load_component};
use crate::config::{self, Config};

/// How long the folders must be quiet before a batch of changes is applied…
const DEBOUNCE: Duration = Duration::from_millis(150);
/// …but a batch waits no longer than this, however busy the folders are.
const MAX_DELAY: Duration = Duration::from_millis(600);

/// The component files under `dir/strategies` and `dir/adapters`: kind, name and path, sorted.
/// A missing folder is logged and yields nothing.
pub fn component_files(dir: &Path) -> Vec<(Kind, String, PathBuf)> {
    let mut files = Vec::new();
    for kind in [Kind::Strategy, Kind::Adapter] {
        let folder = dir.join(kind.folder());
        let Ok(entries) = std::fs::read_dir(&folder) else {
            tracing::warn!(folder = %folder.display(), "component folder is missing; no {}s loaded from it", kind.label());
            continue;
        };
        let mut paths: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| is_wasm(p))
            .collect();
        paths.sort();
        files.extend(paths.into_iter().map(|p| (kind, component_name(&p), p)));
    }
    files
}

/// Loads every component under `dir`, logging the ones refused.
pub fn load_all(rt: &Runtime, dir: &Path) -> Components {
    let mut set = Components::default();
    for (kind, name, path) in component_files(dir) {
        match load_component(rt, kind, &name, &path) {
            Ok(loaded) => {
                tracing::info!(file = %path.display(), "{} `{name}` loaded", kind.label());
                set.insert(name, loaded);
            }
            Err(e) => {
                tracing::error!(file = %path.display(), "refused {} file {}: {e}", kind.label(), path.display())
            }
        }
    }
    set
}

/// Logs what the configuration names but the components folder lacks.
pub fn report_missing(cfg: &Config, comps: &Components) {
    for w in missing(cfg, comps) {
        tracing::warn!("{w}");
    }
}

/// Warnings for components the configuration names that are not loaded.
pub fn missing(cfg: &Config, comps: &Components) -> Vec<String> {
    let mut out = Vec::new();
    for g in cfg.groups.values() {
        if !comps.strategies.contains_key(&g.strategy) {
            out.push(format!("group `{}` names strategy `{}`, which is not loaded: it routes in priority order until the component appears", g.name, g.strategy));
        }
    }
    if !comps.strategies.contains_key(&cfg.system.default_strategy) {
        out.push(format!(
            "the default strategy `{}` is not loaded: plain model names route in priority order",
            cfg.system.default_strategy
        ));
    }
    for p in cfg.providers.values() {
        if !comps.adapters.contains_key(&p.adapter) {
            out.push(format!("provider `{}` names adapter `{}`, which is not loaded: its channels are skipped until the component appears", p.name, p.adapter));
        }
    }
    out
}

fn is_wasm(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "wasm")
}

fn component_name(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Starts watching. The returned watcher must be kept alive.
pub fn watch(app: Arc<App>) -> notify::Result<notify::RecommendedWatcher> {
    let cfg = app.config.load();
    let (tx, mut rx) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res
            && changes(&event.kind)
        {
            for p in event.paths {
                let _ = tx.send(p);
            }
        }
    })?;
    watcher.watch(&cfg.dir, RecursiveMode::NonRecursive)?;
    for kind in [Kind::Strategy, Kind::Adapter] {
        let folder = cfg.system.components_dir.join(kind.folder());
        if let Err(e) = std::fs::create_dir_all(&folder) {
            tracing::warn!(folder = %folder.display(), "cannot create component folder: {e}");
        }
        watcher.watch(&folder, RecursiveMode::NonRecursive)?;
    }
    let watched_components = cfg.system.components_dir.clone();
    drop(cfg);
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut changed = BTreeSet::from([first]);
            // Debounce: wait until the folders are quiet (or the batch is old enough).
            let give_up = tokio::time::Instant::now() + MAX_DELAY;
            while let Ok(Some(p)) = tokio::time::timeout_at(
                give_up.min(tokio::time::Instant::now() + DEBOUNCE),
                rx.recv(),
            )
            .await
            {
                changed.insert(p);
            }
            let app = app.clone();
            let dir = watched_components.clone();
            let _ = tokio::task::spawn_blocking(move || apply(&app, &dir, changed)).await;
        }
    });
    Ok(watcher)
}

/// Whether an event can mean a file changed. A file only opened, read or closed unwritten has
/// not: reacting to those, a gateway that reads a changed file to check it wakes itself (or, with
/// another gateway watching the same folder, the two wake each other) and reads every component
/// again and again, for good.
fn changes(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    match kind {
        notify::EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        notify::EventKind::Access(_) => false,
        _ => true,
    }
}

/// Applies one batch of changed paths.
fn apply(app: &App, components_dir: &Path, changed: BTreeSet<PathBuf>) {
    crate::app::Counters::bump(&app.counters.reloads);
    let mut config_changed = false;
    let mut comps = (**app.components.load()).clone();
    let mut comps_changed = false;
    let cfg = app.config.load_full();
    for path in &changed {
        let file_name = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        if path.parent() == Some(cfg.dir.as_path()) && config::FILES.contains(&file_name.as_str()) {
            config_changed = true;
            continue;
        }
        if !is_wasm(path) {
            continue;
        }
        let kind = match path.parent() {
            Some(p) if p == components_dir.join("strategies") => Kind::Strategy,
            Some(p) if p == components_dir.join("adapters") => Kind::Adapter,
            _ => continue,
        };
        let name = component_name(path);
        if path.exists() {
            let Ok(bytes) = std::fs::read(path) else {
                continue;
            };
            let digest: [u8; 32] = Sha256::digest(&bytes).into();
            if comps.get_digest(kind, &name) == Some(digest) {
                continue;
            }
            match crate::components::load_bytes(&app.runtime, kind, &name, &bytes) {
                Ok(loaded) => {
                    let replaced = comps.get_digest(kind, &name).is_some();
                    comps.insert(name.clone(), loaded);
                    comps_changed = true;
                    tracing::info!(file = %path.display(), "{} `{name}` {}", kind.label(), if replaced { "reloaded" } else { "loaded" });
                }
                Err(e) => {
                    let keeping = if comps.get_digest(kind, &name).is_some() {
                        "; the previous version keeps serving"
                    } else {
                        ""
                    };
                    tracing::error!(file = %path.display(), "refused {} file {}: {e}{keeping}", kind.label(), path.display());
                }
            }
        } else {
            let users = users_of(&cfg, kind, &name);
            if users.is_empty() {
                if comps.remove(kind, &name) {
                    comps_changed = true;
                    tracing::info!(file = %path.display(), "{} `{name}` removed", kind.label());
                }
            } else if comps.get_digest(kind, &name).is_some() {
                tracing::warn!(file = %path.display(), "{} file {} was removed, but {} still use it: keeping its last loaded version", kind.label(), path.display(), users.join(", "));
            }
        }
    }
    if comps_changed {
        app.components.store(Arc::new(comps));
    }
    if config_changed {
        match config::load(&cfg.dir) {
            Ok(new) => {
                for w in &new.warnings {
                    tracing::warn!("{w}");
                }
                report_missing(&new, &app.components.load());
                tracing::info!(dir = %new.dir.display(), groups = new.groups.len(), channels = new.channels.len(), "configuration reloaded");
                app.install_config(new);
            }
            Err(e) => tracing::error!(
                "refused configuration change: {e}; the previous configuration keeps serving"
            ),
        }
    }
}

/// Groups or providers that use a component.
fn users_of(cfg: &Config, kind: Kind, name: &str) -> Vec<String> {
    match kind {
        Kind::Strategy => {
            let mut users: Vec<String> = cfg
                .groups
                .values()
                .filter(|g| g.strategy == name)
                .map(|g| format!("group `{}`", g.name))
                .collect();
            if cfg.system.default_strategy == name {
                users.push("the default strategy".into());
            }
            users
        }
        Kind::Adapter => cfg
            .providers
            .values()
            .filter(|p| p.adapter == name)
            .map(|p| format!("provider `{}`", p.name))
            .collect(),
    }
}
