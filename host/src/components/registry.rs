//! Loading component files and the set of loaded components.

use rustc_hash::FxHashMap as HashMap;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

use super::adapter::{
    AdapterComponent, Pre as AdapterPre, bindings as adapter_bindings,
    bindings_v0_1 as adapter_bindings_v0_1,
};
use super::engine::{IdlePool, Runtime};
use super::strategy::{
    Pre as StrategyPre, StrategyComponent, bindings as strategy_bindings,
    bindings_v0_1 as strategy_bindings_v0_1,
};

/// The two kinds of component, each in its own folder under `components_dir`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Strategy,
    Adapter,
}

impl Kind {
    pub fn folder(self) -> &'static str {
        match self {
            Kind::Strategy => "strategies",
            Kind::Adapter => "adapters",
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Kind::Strategy => "strategy",
            Kind::Adapter => "adapter",
        }
    }
    /// The interface a component of this kind exports, in the current contract.
    pub fn export(self) -> &'static str {
        self.exports()[0].1
    }

    /// The interfaces a component of this kind may export, by contract version, newest first.
    fn exports(self) -> &'static [(Version, &'static str)] {
        match self {
            Kind::Strategy => &[
                (Version::Current, "smart-router:gateway/routing@0.2.0"),
                (Version::V0_1, "smart-router:gateway/routing@0.1.0"),
            ],
            Kind::Adapter => &[
                (Version::Current, "smart-router:gateway/translation@0.2.0"),
                (Version::V0_1, "smart-router:gateway/translation@0.1.0"),
            ],
        }
    }
}

/// The contract versions the host loads: the current one and every released one before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    /// `wit/gateway.wit`.
    Current,
    /// `wit/v0.1.0/gateway.wit`.
    V0_1,
}

/// Why a component file was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read it: {0}")]
    Read(std::io::Error),
    #[error("it is not a valid WebAssembly component: {0}")]
    Invalid(String),
    #[error(
        "it is built for the wrong world: expected the `{world}` world (exporting `{export}`), but it exports [{found}]"
    )]
    WrongWorld {
        world: &'static str,
        export: &'static str,
        found: String,
    },
    #[error("it cannot be linked: {0}")]
    Link(String),
}

/// One loaded component of either kind.
#[derive(Clone)]
pub enum Loaded {
    Strategy(Arc<StrategyComponent>),
    Adapter(Arc<AdapterComponent>),
}

impl Loaded {
    pub fn digest(&self) -> [u8; 32] {
        match self {
            Loaded::Strategy(c) => c.digest,
            Loaded::Adapter(c) => c.digest,
        }
    }
}

/// The loaded components, by name. Immutable: a reload builds a new set and swaps it in.
#[derive(Clone, Default)]
pub struct Components {
    pub strategies: HashMap<String, Arc<StrategyComponent>>,
    pub adapters: HashMap<String, Arc<AdapterComponent>>,
}

impl Components {
    pub fn get_digest(&self, kind: Kind, name: &str) -> Option<[u8; 32]> {
        match kind {
            Kind::Strategy => self.strategies.get(name).map(|c| c.digest),
            Kind::Adapter => self.adapters.get(name).map(|c| c.digest),
        }
    }

    pub fn insert(&mut self, name: String, loaded: Loaded) {
        match loaded {
            Loaded::Strategy(c) => {
                self.strategies.insert(name, c);
            }
            Loaded::Adapter(c) => {
                self.adapters.insert(name, c);
            }
        }
    }

    pub fn remove(&mut self, kind: Kind, name: &str) -> bool {
        match kind {
            Kind::Strategy => self.strategies.remove(name).is_some(),
            Kind::Adapter => self.adapters.remove(name).is_some(),
        }
    }
}

/// Reads, compiles, checks and pre-instantiates one component file. Blocking: call it off the
/// request path.
pub fn load_component(
    rt: &Runtime,
    kind: Kind,
    name: &str,
    path: &Path,
) -> Result<Loaded, LoadError> {
    let bytes = std::fs::read(path).map_err(LoadError::Read)?;
    load_bytes(rt, kind, name, &bytes)
}

/// Like [`load_component`], from bytes.
pub fn load_bytes(rt: &Runtime, kind: Kind, name: &str, bytes: &[u8]) -> Result<Loaded, LoadError> {
    let digest: [u8; 32] = Sha256::digest(bytes).into();
    let component =
        Component::new(&rt.engine, bytes).map_err(|e| LoadError::Invalid(first_line(&e)))?;
    let ty = component.component_type();
    let exports: Vec<String> = ty
        .exports(&rt.engine)
        .filter(|(_, item)| matches!(item.ty, ComponentItem::ComponentInstance(_)))
        .map(|(name, _)| name.to_string())
        .collect();
    let Some(&(version, _)) = kind
        .exports()
        .iter()
        .find(|(_, export)| exports.iter().any(|e| e == export))
    else {
        return Err(LoadError::WrongWorld {
            world: kind.label(),
            export: kind.export(),
            found: exports.join(", "),
        });
    };
    let uses_wasi = ty
        .imports(&rt.engine)
        .any(|(name, _)| name.starts_with("wasi:"));
    let name: Arc<str> = Arc::from(name);
    let link = |e: wasmtime::Error| LoadError::Link(first_line(&e));
    match kind {
        Kind::Strategy => {
            let pre = rt
                .strategy_linker
                .instantiate_pre(&component)
                .map_err(link)?;
            let pre = match version {
                Version::Current => {
                    StrategyPre::Current(strategy_bindings::StrategyPre::new(pre).map_err(link)?)
                }
                Version::V0_1 => {
                    StrategyPre::V0_1(strategy_bindings_v0_1::StrategyPre::new(pre).map_err(link)?)
                }
            };
            Ok(Loaded::Strategy(Arc::new(StrategyComponent {
                name,
                pre,
                uses_wasi,
                digest,
                streak: Default::default(),
                idle: IdlePool::new(super::strategy::MAX_IDLE),
            })))
        }
        Kind::Adapter => {
            let pre = rt
                .adapter_linker
                .instantiate_pre(&component)
                .map_err(link)?;
            let pre = match version {
                Version::Current => {
                    AdapterPre::Current(adapter_bindings::AdapterPre::new(pre).map_err(link)?)
                }
                Version::V0_1 => {
                    AdapterPre::V0_1(adapter_bindings_v0_1::AdapterPre::new(pre).map_err(link)?)
                }
            };
            Ok(Loaded::Adapter(Arc::new(AdapterComponent {
                name,
                pre,
                uses_wasi,
                digest,
                streak: Default::default(),
                idle: IdlePool::new(if uses_wasi {
                    super::engine::KEEP_IDLE
                } else {
                    super::adapter::MAX_IDLE
                }),
            })))
        }
    }
}

fn first_line(e: &wasmtime::Error) -> String {
    let text = format!("{e:#}");
    let mut line = text.lines().next().unwrap_or_default().to_string();
    line.truncate(400);
    line
}
