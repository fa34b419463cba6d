//! A routing kernel in memory that records every mutating request in order, with the
//! kernel's answers where remapd's convergence depends on them: adding a route whose
//! prefix is already in the table is `EEXIST`, adding a rule when any rule looks up the
//! same table at the same priority is `EEXIST`, a rule shadowed by another with the same
//! priority and table is reported as not safely deletable, replacing a route takes the
//! place of one with the same prefix and metric (a route with a `metric` stays beside it).

use std::collections::BTreeMap;
use std::sync::Mutex;

use ipnet::IpNet;

use super::kernel::{Dumped, RoutingKernel};
use super::{Family, Wanted};
use crate::NetError;
use crate::netlink::Link;

/// One mutating request, as sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    AddRule {
        family: Family,
        table: u32,
        priority: u32,
    },
    DeleteRule {
        family: Family,
        table: u32,
        priority: u32,
    },
    AddRoute {
        table: u32,
        prefix: IpNet,
        dev: String,
    },
    ReplaceRoute {
        table: u32,
        prefix: IpNet,
        dev: String,
    },
    DeleteRoute {
        table: u32,
        route: String,
    },
}

/// A route in the fake kernel.
#[derive(Clone, Debug)]
pub(crate) struct KernelRoute {
    pub(crate) table: u32,
    pub(crate) prefix: IpNet,
    pub(crate) oif: u32,
    /// Something remapd does not install (a gateway, a metric): shown with it.
    pub(crate) extra: Option<&'static str>,
    /// Made by someone else (another protocol than remapd's): shown as `proto boot`.
    pub(crate) foreign: bool,
}

/// A rule in the fake kernel; `selector` set for rules with more than remapd's.
#[derive(Clone, Debug)]
pub(crate) struct KernelRule {
    pub(crate) family: Family,
    pub(crate) table: u32,
    pub(crate) priority: u32,
    pub(crate) selector: Option<&'static str>,
}

#[derive(Default)]
pub(crate) struct RecordingKernel {
    pub(crate) links: BTreeMap<String, Link>,
    pub(crate) routes: Mutex<Vec<KernelRoute>>,
    /// In kernel order; a deleted rule leaves `None` so dumped indexes stay valid.
    pub(crate) rules: Mutex<Vec<Option<KernelRule>>>,
    pub(crate) ops: Mutex<Vec<Op>>,
    /// Adding a route for this prefix fails (a link gone down, say).
    pub(crate) fail_add: Option<IpNet>,
}

fn kernel_error(what: String, reason: &str) -> NetError {
    NetError::Netlink {
        what,
        reason: reason.into(),
    }
}

impl RecordingKernel {
    fn name_of(&self, oif: u32) -> String {
        self.links
            .iter()
            .find(|(_, l)| l.index == oif)
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| format!("#{oif}"))
    }

    fn shown(&self, r: &KernelRoute) -> String {
        let extra = r.extra.map(|e| format!(" {e}")).unwrap_or_default();
        let proto = if r.foreign { " proto boot" } else { "" };
        format!("{} dev {}{extra}{proto}", r.prefix, self.name_of(r.oif))
    }

    fn record(&self, op: Op) {
        if let Ok(mut ops) = self.ops.lock() {
            ops.push(op);
        }
    }

    pub(crate) fn ops(&self) -> Vec<Op> {
        self.ops.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// `prefix dev name` of every route in `table`, sorted.
    pub(crate) fn table(&self, table: u32) -> Vec<String> {
        let routes = self.routes.lock().map(|r| r.clone()).unwrap_or_default();
        let mut out: Vec<String> = routes
            .iter()
            .filter(|r| r.table == table)
            .map(|r| self.shown(r))
            .collect();
        out.sort();
        out
    }
}

fn poisoned() -> NetError {
    kernel_error("recording kernel".into(), "lock poisoned")
}

impl RoutingKernel for RecordingKernel {
    /// The table and the route as shown: a delete names its table, as the kernel's does.
    type Route = (u32, String);
    type Rule = usize;

    async fn links(&self) -> Result<BTreeMap<String, Link>, NetError> {
        Ok(self.links.clone())
    }

    async fn table_routes(
        &self,
        table: u32,
        _links: &BTreeMap<String, Link>,
    ) -> Result<Vec<Dumped<(u32, String)>>, NetError> {
        let routes = self.routes.lock().map_err(|_| poisoned())?;
        Ok(routes
            .iter()
            .filter(|r| r.table == table)
            .map(|r| Dumped {
                route: (r.table, self.shown(r)),
                wanted: r.extra.is_none().then_some(Wanted {
                    prefix: r.prefix,
                    oif: r.oif,
                }),
                prefix: Some(r.prefix),
                ours: !r.foreign,
                shown: self.shown(r),
            })
            .collect())
    }

    async fn add_route(&self, table: u32, w: Wanted, interface: &str) -> Result<(), NetError> {
        self.record(Op::AddRoute {
            table,
            prefix: w.prefix,
            dev: interface.to_owned(),
        });
        let what = format!("adding route {} dev {interface} table {table}", w.prefix);
        if self.fail_add == Some(w.prefix) {
            return Err(kernel_error(what, "Network is down (os error 100)"));
        }
        let mut routes = self.routes.lock().map_err(|_| poisoned())?;
        if routes
            .iter()
            .any(|r| r.table == table && r.prefix == w.prefix)
        {
            return Err(kernel_error(what, "File exists (os error 17)"));
        }
        routes.push(KernelRoute {
            table,
            prefix: w.prefix,
            oif: w.oif,
            extra: None,
            foreign: false,
        });
        Ok(())
    }

    async fn replace_route(&self, table: u32, w: Wanted, interface: &str) -> Result<(), NetError> {
        self.record(Op::ReplaceRoute {
            table,
            prefix: w.prefix,
            dev: interface.to_owned(),
        });
        if self.fail_add == Some(w.prefix) {
            return Err(kernel_error(
                format!("replacing route {} dev {interface} table {table}", w.prefix),
                "Network is down (os error 100)",
            ));
        }
        let mut routes = self.routes.lock().map_err(|_| poisoned())?;
        let new = KernelRoute {
            table,
            prefix: w.prefix,
            oif: w.oif,
            extra: None,
            foreign: false,
        };
        match routes.iter_mut().find(|r| {
            r.table == table
                && r.prefix == w.prefix
                && !r.extra.is_some_and(|e| e.starts_with("metric"))
        }) {
            Some(old) => *old = new,
            None => routes.push(new),
        }
        Ok(())
    }

    async fn delete_route(&self, route: (u32, String), _shown: &str) -> Result<bool, NetError> {
        let (table, shown) = route;
        self.record(Op::DeleteRoute {
            table,
            route: shown.clone(),
        });
        let mut routes = self.routes.lock().map_err(|_| poisoned())?;
        let before = routes.len();
        routes.retain(|r| r.table != table || self.shown(r) != shown);
        Ok(routes.len() < before)
    }

    async fn our_rules(
        &self,
        family: Family,
        table: u32,
        priority: u32,
    ) -> Result<Vec<(usize, bool)>, NetError> {
        let rules = self.rules.lock().map_err(|_| poisoned())?;
        let mut shadowed = false;
        let mut out = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let Some(r) = r else { continue };
            if r.family != family || r.table != table || r.priority != priority {
                continue;
            }
            if r.selector.is_none() {
                out.push((i, !shadowed));
            } else {
                shadowed = true;
            }
        }
        Ok(out)
    }

    async fn add_rule(&self, family: Family, table: u32, priority: u32) -> Result<(), NetError> {
        self.record(Op::AddRule {
            family,
            table,
            priority,
        });
        let mut rules = self.rules.lock().map_err(|_| poisoned())?;
        if rules
            .iter()
            .flatten()
            .any(|r| r.family == family && r.table == table && r.priority == priority)
        {
            return Err(kernel_error(
                format!("adding rule from all lookup {table} priority {priority}"),
                "File exists (os error 17)",
            ));
        }
        rules.push(Some(KernelRule {
            family,
            table,
            priority,
            selector: None,
        }));
        Ok(())
    }

    async fn delete_rule(&self, rule: usize, table: u32, priority: u32) -> Result<(), NetError> {
        let mut rules = self.rules.lock().map_err(|_| poisoned())?;
        let family = rules
            .get(rule)
            .and_then(|r| r.as_ref())
            .map_or(Family::V4, |r| r.family);
        self.record(Op::DeleteRule {
            family,
            table,
            priority,
        });
        if let Some(slot) = rules.get_mut(rule) {
            *slot = None;
        }
        Ok(())
    }
}
