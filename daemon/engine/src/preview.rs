//! What replacing a policy would change, without changing anything: every peering that
//! uses it is decided again with the new component (through an overlay registry, so the
//! live policy is never swapped) and compared with what is in force.

use std::collections::BTreeSet;

use serde::Serialize;
use utoipa::ToSchema;

use remapd_model::model::Decision;
use remapd_model::plan::GatewayPlan;
use remapd_model::rule::TranslationRule;

use crate::reconcile::{DesiredSystem, PeeringOutcome};

/// What one peering would get from a replaced policy.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct PolicyImpact {
    /// The peering.
    pub peering: String,
    /// The decision in force (none when the peering has no plan now).
    pub old: Option<Decision>,
    /// The new policy's decision (none when it fails for this peering: see `error`).
    pub new: Option<Decision>,
    /// Why the new policy gives this peering no plan (refused, rejected, failed): the
    /// real replacement would be refused (or, forced, would leave it without a plan).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Translation rules the replacement would add and remove.
    pub rules: Diff<TranslationRule>,
    /// Routes into the tunnel it would add and remove.
    #[schema(value_type = Diff<String>)]
    pub routes: Diff<ipnet::IpNet>,
    /// WireGuard allowed-ips it would add and remove.
    #[schema(value_type = Diff<String>)]
    pub allowed_ips: Diff<ipnet::IpNet>,
}

/// Added and removed items.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct Diff<T> {
    /// In the new plan only.
    pub added: Vec<T>,
    /// In the old plan only.
    pub removed: Vec<T>,
}

impl<T: Ord + Clone> Diff<T> {
    fn of(old: &[T], new: &[T]) -> Self {
        let old: BTreeSet<&T> = old.iter().collect();
        let new: BTreeSet<&T> = new.iter().collect();
        Self {
            added: new.difference(&old).map(|t| (*t).clone()).collect(),
            removed: old.difference(&new).map(|t| (*t).clone()).collect(),
        }
    }

    /// True when nothing changes.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// The impact on `peering` of going from `current` (in force) to `planned` (decided
/// with the new policy). Pure.
pub fn impact(
    peering: &str,
    current: Option<&PeeringOutcome>,
    planned: &DesiredSystem,
) -> PolicyImpact {
    let old_plan: Option<&GatewayPlan> = current.and_then(|o| o.plan.as_ref());
    let error = planned.failures.get(peering).map(|f| f.message.clone());
    let new_outcome = planned.outcomes.get(peering);
    // A failed attempt keeps the last good plan in the outcome: the new policy gave none.
    let (new_decision, new_plan) = if error.is_some() {
        (None, None)
    } else {
        (
            new_outcome.and_then(|o| o.decision.clone()),
            new_outcome.and_then(|o| o.plan.as_ref()),
        )
    };
    let rules = |p: Option<&GatewayPlan>| p.map(|p| p.rules.clone()).unwrap_or_default();
    let routes = |p: Option<&GatewayPlan>| p.map(|p| p.routes.clone()).unwrap_or_default();
    let allowed = |p: Option<&GatewayPlan>| p.map(|p| p.allowed_ips.clone()).unwrap_or_default();
    PolicyImpact {
        peering: peering.to_owned(),
        old: current.and_then(|o| o.decision.clone()),
        new: new_decision,
        error,
        rules: Diff::of(&rules(old_plan), &rules(new_plan)),
        routes: Diff::of(&routes(old_plan), &routes(new_plan)),
        allowed_ips: Diff::of(&allowed(old_plan), &allowed(new_plan)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_are_set_differences() {
        let n = |s: &str| -> ipnet::IpNet { s.parse().unwrap() };
        let d = Diff::of(
            &[n("10.0.0.0/24"), n("10.0.1.0/24")],
            &[n("10.0.1.0/24"), n("10.0.2.0/24")],
        );
        assert_eq!(d.added, [n("10.0.2.0/24")]);
        assert_eq!(d.removed, [n("10.0.0.0/24")]);
        assert!(Diff::<u8>::of(&[1, 2], &[2, 1]).is_empty());
    }
}
