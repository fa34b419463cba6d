//! In-memory appliers for tests without root: they record what they were asked to do and
//! keep the resulting state, so reconciler and API tests can assert on it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::{
    NetError, ProtectedAddress, RouteApplier, RouteReport, RouteSpec, TunnelApplier, TunnelReport,
    TunnelSpec, TunnelStatus, TunnelStatusReader,
};

/// Shared view of a fake's state, kept by the test.
pub type Shared<T> = Arc<Mutex<T>>;

/// Routes held in memory.
#[derive(Clone, Default)]
pub struct FakeRoutes {
    /// Current routes.
    pub routes: Shared<Vec<RouteSpec>>,
    /// Number of apply calls.
    pub applies: Shared<usize>,
    /// When set, `apply` fails with this reason and changes nothing.
    pub fail: Shared<Option<String>>,
    /// What `protected_addresses` answers (the gateway's own addresses and next hops).
    pub protected: Shared<Vec<ProtectedAddress>>,
}

impl FakeRoutes {
    /// Makes `address` one of the gateway's protected addresses.
    pub fn protect(&self, address: std::net::IpAddr, what: &str) {
        if let Ok(mut p) = self.protected.lock() {
            p.push(ProtectedAddress {
                address,
                what: what.to_owned(),
            });
        }
    }
}

/// The error a fake returns when told to fail.
fn injected(reason: &str) -> NetError {
    NetError::Netlink {
        what: "fake applier".into(),
        reason: reason.to_owned(),
    }
}

impl RouteApplier for FakeRoutes {
    fn protected_addresses(
        &self,
        _endpoints: &[std::net::IpAddr],
    ) -> Result<Vec<ProtectedAddress>, NetError> {
        Ok(self.protected.lock().map_err(|_| poisoned())?.clone())
    }

    fn apply(&mut self, routes: &[RouteSpec]) -> Result<RouteReport, NetError> {
        if let Some(reason) = self.fail.lock().map_err(|_| poisoned())?.as_deref() {
            return Err(injected(reason));
        }
        let mut current = self.routes.lock().map_err(|_| poisoned())?;
        let want: std::collections::BTreeSet<RouteSpec> = routes.iter().cloned().collect();
        let have: std::collections::BTreeSet<RouteSpec> = current.iter().cloned().collect();
        let added = want.difference(&have).count();
        let removed = have.difference(&want).count();
        let unchanged = want.len() - added;
        *current = want.into_iter().collect();
        *self.applies.lock().map_err(|_| poisoned())? += 1;
        Ok(RouteReport {
            added,
            removed,
            unchanged,
        })
    }

    fn teardown(&mut self) -> Result<(), NetError> {
        self.routes.lock().map_err(|_| poisoned())?.clear();
        Ok(())
    }
}

/// Tunnels held in memory.
#[derive(Clone, Default)]
pub struct FakeTunnels {
    /// Current tunnels by interface.
    pub tunnels: Shared<BTreeMap<String, TunnelSpec>>,
    /// How many times each interface was created.
    pub created: Shared<BTreeMap<String, usize>>,
    /// When set, `ensure` fails with this reason and changes nothing.
    pub fail: Shared<Option<String>>,
    /// Ports some other process has bound.
    pub busy_ports: Shared<std::collections::BTreeSet<u16>>,
    /// Interfaces that fail to come up, and why (the others still do).
    pub fail_interfaces: Shared<BTreeMap<String, String>>,
}

fn poisoned() -> NetError {
    NetError::Netlink {
        what: "fake applier".into(),
        reason: "lock poisoned".into(),
    }
}

impl TunnelApplier for FakeTunnels {
    fn port_available(&self, port: u16) -> Result<bool, NetError> {
        let ours = self
            .tunnels
            .lock()
            .map_err(|_| poisoned())?
            .values()
            .any(|t| t.listen_port == port);
        let busy = self
            .busy_ports
            .lock()
            .map_err(|_| poisoned())?
            .contains(&port);
        Ok(!ours && !busy)
    }

    fn ensure(&mut self, tunnels: &[TunnelSpec]) -> Result<TunnelReport, NetError> {
        if let Some(reason) = self.fail.lock().map_err(|_| poisoned())?.as_deref() {
            return Err(injected(reason));
        }
        let mut current = self.tunnels.lock().map_err(|_| poisoned())?;
        let failing = self.fail_interfaces.lock().map_err(|_| poisoned())?.clone();
        let mut report = TunnelReport::default();
        for t in tunnels {
            if let Some(reason) = failing.get(&t.interface) {
                report.failed.insert(t.interface.clone(), reason.clone());
                continue;
            }
            match current.get(&t.interface) {
                None => {
                    report.created += 1;
                    *self
                        .created
                        .lock()
                        .map_err(|_| poisoned())?
                        .entry(t.interface.clone())
                        .or_default() += 1;
                }
                Some(old) if old == t => report.unchanged += 1,
                Some(_) => report.updated += 1,
            }
            current.insert(t.interface.clone(), t.clone());
        }
        Ok(report)
    }

    fn prune(&mut self, keep: &[String]) -> Result<TunnelReport, NetError> {
        let mut current = self.tunnels.lock().map_err(|_| poisoned())?;
        let before = current.len();
        current.retain(|name, _| keep.contains(name));
        Ok(TunnelReport {
            removed: before - current.len(),
            ..TunnelReport::default()
        })
    }

    fn status(&self, interface: &str) -> Result<Option<TunnelStatus>, NetError> {
        TunnelStatusReader::status(self, interface)
    }

    fn teardown(&mut self) -> Result<(), NetError> {
        self.tunnels.lock().map_err(|_| poisoned())?.clear();
        Ok(())
    }

    fn status_reader(&self) -> Arc<dyn TunnelStatusReader> {
        Arc::new(self.clone())
    }
}

impl TunnelStatusReader for FakeTunnels {
    fn status(&self, interface: &str) -> Result<Option<TunnelStatus>, NetError> {
        let current = self.tunnels.lock().map_err(|_| poisoned())?;
        Ok(current.get(interface).map(|t| TunnelStatus {
            interface: t.interface.clone(),
            public_key: None,
            listen_port: Some(t.listen_port),
            last_handshake: None,
            rx_bytes: 0,
            tx_bytes: 0,
            backend: "fake",
        }))
    }
}
