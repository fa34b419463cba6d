//! The dataplane's error type and the small constructors the rest of the crate uses.

use std::io;
use std::path::{Path, PathBuf};

use aya::maps::MapError;
use aya::programs::ProgramError;

use crate::rules::{Direction, RuleError};

/// Errors of the dataplane layer, each with the object it concerns.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The desired rule set is invalid; nothing was changed.
    #[error(transparent)]
    InvalidRules(#[from] RuleError),
    /// A rule names an interface that does not exist in this network namespace.
    #[error("interface {interface:?} not found (rule `{rule}`)")]
    InterfaceNotFound {
        /// Interface name.
        interface: String,
        /// The rule, as text.
        rule: String,
    },
    /// A rule names an interface whose link type remapd cannot parse.
    #[error("interface {interface:?} has link type {link_type}, which remapd does not support")]
    UnsupportedLinkType {
        /// Interface name.
        interface: String,
        /// ARPHRD_* value.
        link_type: u16,
    },
    /// Listing interfaces failed.
    #[error("listing interfaces: {0}")]
    ListInterfaces(#[source] nix::Error),
    /// A map this binary's programs use has another layout than the one pinned under
    /// the same layout version: replacing the programs would have them misread it.
    /// Nothing was changed; the running programs keep running.
    #[error(
        "this remapd's eBPF map {map} is {embedded}, the pinned one is {pinned}: its layout changed without a new pin layout version and a migration, so the running programs were kept (nothing was changed); run the remapd that pinned them, or `remapd teardown` and start again"
    )]
    MapLayoutChanged {
        /// The map.
        map: &'static str,
        /// Its definition in this binary.
        embedded: String,
        /// The pinned map's.
        pinned: String,
    },
    /// This binary carries no eBPF object.
    #[error(
        "this remapd binary was built without its eBPF object (AYA_BUILD_SKIP); rebuild with bpf-linker installed"
    )]
    ObjectMissing,
    /// A test fake was told to fail.
    #[error("injected failure: {0}")]
    Injected(String),
    /// A test fake's lock was poisoned.
    #[error("fake dataplane: lock poisoned")]
    FakePoisoned,
    /// The pin directory is unusable.
    #[error("bpffs directory {path}: {source}")]
    PinDir {
        /// Directory.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The pin directory holds nothing to adopt.
    #[error("no remapd dataplane is pinned under {path}")]
    NotPinned {
        /// Directory.
        path: PathBuf,
    },
    /// The embedded eBPF object could not be prepared for loading.
    #[error("the embedded eBPF object: {0}")]
    BadObject(String),
    /// The eBPF object did not load.
    #[error("loading the eBPF object: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    /// A program operation failed.
    #[error("program {name}: {source}")]
    Program {
        /// Program name.
        name: String,
        /// Cause.
        source: Box<ProgramError>,
    },
    /// A map operation failed.
    #[error("map {name}: {source}")]
    Map {
        /// Map name.
        name: &'static str,
        /// Cause.
        source: Box<MapError>,
    },
    /// Attaching a program failed.
    #[error("attaching {program} to {interface} {direction}: {source}")]
    AttachFailed {
        /// Program name.
        program: &'static str,
        /// Interface name.
        interface: String,
        /// Hook.
        direction: Direction,
        /// Cause.
        source: Box<ProgramError>,
    },
    /// A pinned link could not be opened, pinned or removed.
    #[error("link {path}: {reason}")]
    Link {
        /// Pin path.
        path: PathBuf,
        /// Cause.
        reason: String,
    },
}

pub(crate) fn map_err(name: &'static str) -> impl Fn(MapError) -> DataplaneError {
    move |source| DataplaneError::Map {
        name,
        source: Box::new(source),
    }
}

pub(crate) fn prog_err(name: &str) -> impl Fn(ProgramError) -> DataplaneError + '_ {
    move |source| DataplaneError::Program {
        name: name.to_owned(),
        source: Box::new(source),
    }
}

/// The error for a program missing from the object or the pins.
pub(crate) fn not_loaded(name: &str) -> DataplaneError {
    DataplaneError::Program {
        name: name.to_owned(),
        source: Box::new(ProgramError::NotLoaded),
    }
}

pub(crate) fn pin_dir_err(path: &Path) -> impl Fn(io::Error) -> DataplaneError + '_ {
    move |source| DataplaneError::PinDir {
        path: path.to_owned(),
        source,
    }
}
