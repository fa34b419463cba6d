//! Applying one [`DesiredSystem`] through the appliers, make-before-break.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::time::Instant;

use tracing::{info, warn};

use remapd_dataplane::DesiredDataplane;
use remapd_net::{RouteSpec, TunnelSpec};

use super::{ApplyMode, ApplyStep, DesiredSystem, ReconcileReport, Reconciler};

impl Reconciler {
    /// Applies `system` in make-before-break order: tunnels created or updated, routes,
    /// dataplane rules and borders, then tunnels no longer wanted removed. A tunnel that
    /// does not exist yet is created closed (its peer may use no source address) and
    /// opened only once its rules and border are in place, so nothing the peer sends
    /// crosses before the border that judges it. In [`ApplyMode::StopAtFirstError`]
    /// nothing runs after a failed step.
    pub fn apply(&mut self, system: &DesiredSystem, mode: ApplyMode) -> ReconcileReport {
        let started = Instant::now();
        let mut report = ReconcileReport::default();
        let keep: Vec<String> = system.tunnels.iter().map(|t| t.interface.clone()).collect();
        let stop = |report: &ReconcileReport| {
            mode == ApplyMode::StopAtFirstError && !report.failed_steps.is_empty()
        };
        let step = |step: ApplyStep| tracing::info_span!("apply", %step);
        let new = self.new_tunnels(&system.tunnels);
        let closed: Cow<'_, [TunnelSpec]> = if new.is_empty() {
            Cow::Borrowed(&system.tunnels)
        } else {
            system
                .tunnels
                .iter()
                .map(|t| {
                    let mut t = t.clone();
                    if new.contains(&t.interface) {
                        t.allowed_ips.clear();
                    }
                    t
                })
                .collect()
        };
        match step(ApplyStep::Tunnels).in_scope(|| self.tunnels.ensure(&closed)) {
            Ok(r) => report.tunnels = r,
            Err(e) => report.fail(ApplyStep::Tunnels, e.to_string()),
        }
        // A peering whose tunnel could not be brought to its desired configuration
        // carries nothing: its routes, rules and border are left out (fail closed), and
        // every other peering is applied as usual.
        let failed = &report.tunnels.failed;
        for (interface, error) in failed {
            report.errors.push(format!("tunnels: {interface}: {error}"));
        }
        // Borrowed as planned in the usual case: no copy of every rule on each apply.
        let (routes, dataplane): (Cow<'_, [RouteSpec]>, Cow<'_, DesiredDataplane>) =
            if failed.is_empty() {
                (
                    Cow::Borrowed(&system.routes),
                    Cow::Borrowed(&system.dataplane),
                )
            } else {
                let carries = |interface: &String| !failed.contains_key(interface);
                (
                    system
                        .routes
                        .iter()
                        .filter(|r| carries(&r.interface))
                        .cloned()
                        .collect(),
                    Cow::Owned(DesiredDataplane {
                        rules: system
                            .dataplane
                            .rules
                            .iter()
                            .filter(|r| carries(&r.interface))
                            .cloned()
                            .collect(),
                        borders: system
                            .dataplane
                            .borders
                            .iter()
                            .filter(|b| carries(&b.interface))
                            .cloned()
                            .collect(),
                    }),
                )
            };
        if !stop(&report) {
            match step(ApplyStep::Routes).in_scope(|| self.routes.apply(&routes)) {
                Ok(r) => report.routes = r,
                Err(e) => report.fail(ApplyStep::Routes, e.to_string()),
            }
        }
        if !stop(&report) {
            match step(ApplyStep::Dataplane).in_scope(|| self.dataplane.apply(&dataplane)) {
                Ok(r) => report.dataplane = r,
                Err(e) => report.fail(ApplyStep::Dataplane, e.to_string()),
            }
        }
        // New tunnels open now that their borders are in the dataplane; if that step
        // failed they stay closed.
        let dataplane_done = !report.failed_steps.contains(&ApplyStep::Dataplane);
        if !new.is_empty() && dataplane_done && !stop(&report) {
            let open: Vec<TunnelSpec> = system
                .tunnels
                .iter()
                .filter(|t| new.contains(&t.interface))
                .filter(|t| !report.tunnels.failed.contains_key(&t.interface))
                .cloned()
                .collect();
            match step(ApplyStep::Tunnels).in_scope(|| self.tunnels.ensure(&open)) {
                Ok(r) => {
                    for (interface, error) in r.failed {
                        report.errors.push(format!("tunnels: {interface}: {error}"));
                        report.tunnels.failed.insert(interface, error);
                    }
                }
                Err(e) => report.fail(ApplyStep::Tunnels, e.to_string()),
            }
        }
        if !stop(&report) {
            match step(ApplyStep::Prune).in_scope(|| self.tunnels.prune(&keep)) {
                Ok(r) => report.tunnels.removed = r.removed,
                Err(e) => report.fail(ApplyStep::Prune, e.to_string()),
            }
        }
        let elapsed = started.elapsed();
        report.duration_seconds = elapsed.as_secs_f64();
        self.counters.reconciles += 1;
        self.counters.last_duration = elapsed;
        self.counters.total_duration += elapsed;
        if report.errors.is_empty() {
            info!(?elapsed, peerings = system.outcomes.len(), "applied");
        } else {
            warn!(errors = ?report.errors, "applied with errors");
        }
        report
    }

    /// The interfaces of `tunnels` that do not exist yet: not in the committed system
    /// and not found live (an unreadable status counts as new: closed first is safe).
    fn new_tunnels(&self, tunnels: &[TunnelSpec]) -> BTreeSet<String> {
        tunnels
            .iter()
            .filter(|t| {
                !self
                    .committed
                    .tunnels
                    .iter()
                    .any(|c| c.interface == t.interface)
            })
            .filter(|t| !matches!(self.tunnels.status(&t.interface), Ok(Some(_))))
            .map(|t| t.interface.clone())
            .collect()
    }
}
