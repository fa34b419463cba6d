//! The dataplane as the reconciler uses it: the [`DataplaneApplier`] trait, the kernel
//! implementation (opened lazily, adopting what is pinned), its status reader, and the
//! in-memory fake for tests without root.

use std::collections::BTreeMap;
use std::sync::Arc;

use tracing::warn;

use super::trace::{FakeTrace, PinnedTraceSource, TraceSource};
use super::{ApplyReport, Dataplane, DataplaneError, DataplaneStatus, DesiredDataplane};

/// The eBPF dataplane as the reconciler uses it.
pub trait DataplaneApplier: Send {
    /// Makes the maps hold exactly `desired` (rules and ingress borders).
    fn apply(&mut self, desired: &DesiredDataplane) -> Result<ApplyReport, DataplaneError>;
    /// Removes everything (translation stops).
    fn teardown(&mut self) -> Result<(), DataplaneError>;
    /// A reader of rules and counters that does not need this applier, so reads never
    /// wait for a change in progress.
    fn status_reader(&self) -> Arc<dyn DataplaneStatusReader>;
    /// Whether this gateway can translate: told to policies as `nat_dataplane`. Measured:
    /// false when the binary has no eBPF object or loading it failed.
    fn nat_available(&self) -> bool;
    /// Where traces of the programs' work are read from.
    fn trace_source(&self) -> Arc<dyn TraceSource>;
}

/// Reads the dataplane's rules, counters and attachments, shared by readers.
pub trait DataplaneStatusReader: Send + Sync {
    /// Rules, counters, attachments.
    fn status(&self) -> Result<DataplaneStatus, DataplaneError>;
}

/// Reads what is pinned under the dataplane's directory (nothing pinned: empty).
struct PinnedDataplaneReader {
    config: super::DataplaneConfig,
    /// Whether the applier adopted what it found pinned (unknown until it opened it).
    adopted: Arc<std::sync::Mutex<Option<bool>>>,
}

impl DataplaneStatusReader for PinnedDataplaneReader {
    fn status(&self) -> Result<DataplaneStatus, DataplaneError> {
        match Dataplane::open_existing(&self.config) {
            Ok(d) => {
                let mut status = d.status()?;
                if let Some(adopted) = self.adopted.lock().ok().and_then(|a| *a) {
                    status.adopted = adopted;
                }
                Ok(status)
            }
            Err(DataplaneError::NotPinned { .. }) => Ok(empty_status()),
            Err(e) => Err(e),
        }
    }
}

fn empty_status() -> DataplaneStatus {
    DataplaneStatus {
        adopted: false,
        program_ids: BTreeMap::new(),
        attachments: vec![],
        rules: vec![],
        hooks: vec![],
    }
}

/// The real dataplane; opened lazily so a daemon without rules loads nothing.
pub struct KernelDataplane {
    config: super::DataplaneConfig,
    dataplane: Option<Dataplane>,
    /// Why loading (or adopting) the programs failed, if it did.
    load_error: Option<String>,
    adopted: Arc<std::sync::Mutex<Option<bool>>>,
}

impl KernelDataplane {
    /// A dataplane under `config.pin_dir`; adopts what is pinned there on first use.
    pub fn new(config: super::DataplaneConfig) -> Self {
        Self {
            config,
            dataplane: None,
            load_error: None,
            adopted: Arc::default(),
        }
    }

    fn get(&mut self) -> Result<&mut Dataplane, DataplaneError> {
        if self.dataplane.is_none() {
            let dataplane = Dataplane::open(&self.config).inspect_err(|e| {
                warn!(error = %e, "the dataplane does not load: policies are told this gateway cannot translate");
                self.load_error = Some(e.to_string());
            })?;
            self.load_error = None;
            if let Ok(mut adopted) = self.adopted.lock() {
                *adopted = Some(dataplane.adopted());
            }
            self.dataplane = Some(dataplane);
        }
        self.dataplane.as_mut().ok_or(DataplaneError::ObjectMissing)
    }
}

impl DataplaneApplier for KernelDataplane {
    fn apply(&mut self, desired: &DesiredDataplane) -> Result<ApplyReport, DataplaneError> {
        // Nothing wanted and nothing loaded yet: stay unloaded.
        if self.dataplane.is_none() && desired.rules.is_empty() && desired.borders.is_empty() {
            let pinned = Dataplane::open_existing(&self.config);
            if matches!(pinned, Err(DataplaneError::NotPinned { .. })) {
                return Ok(ApplyReport::default());
            }
        }
        self.get()?.apply(desired)
    }

    fn teardown(&mut self) -> Result<(), DataplaneError> {
        let dataplane = match self.dataplane.take() {
            Some(d) => d,
            None => match Dataplane::open_existing(&self.config) {
                Ok(d) => d,
                Err(DataplaneError::NotPinned { .. }) => return Ok(()),
                Err(e) => return Err(e),
            },
        };
        dataplane.teardown()
    }

    fn nat_available(&self) -> bool {
        super::object_embedded() && self.load_error.is_none()
    }

    fn status_reader(&self) -> Arc<dyn DataplaneStatusReader> {
        Arc::new(PinnedDataplaneReader {
            config: self.config.clone(),
            adopted: self.adopted.clone(),
        })
    }

    fn trace_source(&self) -> Arc<dyn TraceSource> {
        Arc::new(PinnedTraceSource {
            config: self.config.clone(),
        })
    }
}

/// A dataplane kept in memory, for tests without root.
#[derive(Clone, Default)]
pub struct FakeDataplane {
    /// Current rules and borders.
    pub state: Arc<std::sync::Mutex<DesiredDataplane>>,
    /// When set, `apply` fails with this reason and changes nothing.
    pub fail: Arc<std::sync::Mutex<Option<String>>>,
    /// When set, the gateway reports it cannot translate (`nat_available` is false).
    pub no_nat: Arc<std::sync::atomic::AtomicBool>,
    /// When set, `apply` announces itself on the first sender and then waits for the
    /// second to be dropped or written (a slow apply, for tests of readers).
    #[allow(clippy::type_complexity)]
    pub gate:
        Arc<std::sync::Mutex<Option<(std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>)>>>,
    /// The trace: tests push events into it.
    pub trace: FakeTrace,
}

impl DataplaneStatusReader for FakeDataplane {
    fn status(&self) -> Result<DataplaneStatus, DataplaneError> {
        let current = self
            .state
            .lock()
            .map_err(|_| DataplaneError::FakePoisoned)?;
        Ok(DataplaneStatus {
            rules: current
                .rules
                .iter()
                .enumerate()
                .map(|(i, r)| super::InstalledRule {
                    rule: r.clone(),
                    rule_id: i as u32,
                    packets: 0,
                    bytes: 0,
                })
                .collect(),
            ..empty_status()
        })
    }
}

impl DataplaneApplier for FakeDataplane {
    fn apply(&mut self, desired: &DesiredDataplane) -> Result<ApplyReport, DataplaneError> {
        if let Some((started, release)) = self.gate.lock().ok().and_then(|mut g| g.take()) {
            let _ = started.send(());
            let _ = release.recv();
        }
        if let Some(reason) = self.fail.lock().ok().and_then(|f| f.clone()) {
            return Err(DataplaneError::Injected(reason));
        }
        super::rules::validate(&desired.rules)?;
        super::rules::validate_borders(&desired.borders)?;
        let rules = &desired.rules;
        let mut current = self
            .state
            .lock()
            .map_err(|_| DataplaneError::FakePoisoned)?;
        let inserted = rules.iter().filter(|r| !current.rules.contains(r)).count();
        let removed = current.rules.iter().filter(|r| !rules.contains(r)).count();
        *current = desired.clone();
        Ok(ApplyReport {
            inserted,
            removed,
            unchanged: rules.len() - inserted,
            ..ApplyReport::default()
        })
    }

    fn status_reader(&self) -> Arc<dyn DataplaneStatusReader> {
        Arc::new(self.clone())
    }

    fn trace_source(&self) -> Arc<dyn TraceSource> {
        Arc::new(self.trace.clone())
    }

    fn nat_available(&self) -> bool {
        !self.no_nat.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn teardown(&mut self) -> Result<(), DataplaneError> {
        *self
            .state
            .lock()
            .map_err(|_| DataplaneError::FakePoisoned)? = DesiredDataplane::default();
        Ok(())
    }
}
