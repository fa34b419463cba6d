//! Named policies: the built-ins and uploads, each name bound to one compiled
//! component; replacing or removing one is atomic for callers.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use remapd_model::model::PolicyInput;

use crate::{CompiledPolicy, Evaluation, PolicyEngine, PolicyError, builtin};

/// A named policy in the registry.
#[derive(Clone, Debug)]
pub struct NamedPolicy {
    /// Name.
    pub name: String,
    /// Shipped with remapd (cannot be replaced or deleted).
    pub builtin: bool,
    /// The compiled component.
    pub compiled: Arc<CompiledPolicy>,
}

/// Registry errors.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The component did not load.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// Built-ins are fixed.
    #[error("policy {0:?} is built in and cannot be replaced or deleted")]
    Builtin(String),
    /// No such policy.
    #[error("no policy named {0:?}")]
    NotFound(String),
    /// Bad name.
    #[error("policy name {0:?} is not valid: use 1-63 characters of a-z, 0-9 and '-'")]
    BadName(String),
    /// The built-ins were not built into this binary.
    #[error(
        "built-in policy {0:?} is missing from this binary (built with REMAPD_POLICY_BUILD_SKIP)"
    )]
    BuiltinMissing(String),
}

/// Named policies. Replacing one is atomic: a call holds an `Arc` to the policy it
/// started with and finishes on it, while new calls see the replacement.
pub struct PolicyRegistry {
    engine: Arc<PolicyEngine>,
    policies: RwLock<BTreeMap<String, NamedPolicy>>,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
}

impl PolicyRegistry {
    /// A registry holding the built-in policies.
    pub fn with_builtins(engine: Arc<PolicyEngine>) -> Result<Self, RegistryError> {
        let mut policies = BTreeMap::new();
        for (name, bytes) in builtin::ALL {
            if bytes.is_empty() {
                return Err(RegistryError::BuiltinMissing(name.into()));
            }
            let compiled = engine.compile(bytes)?;
            policies.insert(
                name.to_owned(),
                NamedPolicy {
                    name: name.to_owned(),
                    builtin: true,
                    compiled,
                },
            );
        }
        Ok(Self {
            engine,
            policies: RwLock::new(policies),
        })
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<PolicyEngine> {
        &self.engine
    }

    /// Compiles `bytes` and, only if that succeeds, installs them under `name`.
    pub fn put(&self, name: &str, bytes: &[u8]) -> Result<NamedPolicy, RegistryError> {
        if !valid_name(name) {
            return Err(RegistryError::BadName(name.into()));
        }
        if self.get(name).is_some_and(|p| p.builtin) {
            return Err(RegistryError::Builtin(name.into()));
        }
        let compiled = self.engine.compile(bytes)?;
        let named = NamedPolicy {
            name: name.to_owned(),
            builtin: false,
            compiled,
        };
        self.install(named.clone())?;
        Ok(named)
    }

    /// Installs an already compiled uploaded policy under its name, returning the one it
    /// replaces (to give back to [`PolicyRegistry::restore`] if the change is refused).
    pub fn install(&self, named: NamedPolicy) -> Result<Option<NamedPolicy>, RegistryError> {
        if !valid_name(&named.name) {
            return Err(RegistryError::BadName(named.name));
        }
        let mut map = self.write();
        if map.get(&named.name).is_some_and(|p| p.builtin) {
            return Err(RegistryError::Builtin(named.name));
        }
        Ok(map.insert(named.name.clone(), named))
    }

    /// A registry with the same engine and policies plus `named` (replacing its
    /// namesake), for previewing what `named` would decide; this one is not changed.
    pub fn with_policy(&self, named: NamedPolicy) -> Result<PolicyRegistry, RegistryError> {
        let overlay = PolicyRegistry {
            engine: self.engine.clone(),
            policies: RwLock::new(self.read().clone()),
        };
        overlay.install(named)?;
        Ok(overlay)
    }

    /// Puts back what held `name` before an install or removal: `previous`, or nothing.
    /// Built-ins are never touched.
    pub fn restore(&self, name: &str, previous: Option<NamedPolicy>) {
        let mut map = self.write();
        if map.get(name).is_some_and(|p| p.builtin) {
            return;
        }
        match previous {
            Some(p) => map.insert(name.to_owned(), p),
            None => map.remove(name),
        };
    }

    // A panic while the lock was held cannot leave the map half-changed (every change
    // is one insert or remove), so a poisoned lock is used as it is.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, NamedPolicy>> {
        self.policies
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, NamedPolicy>> {
        self.policies
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The policy called `name`.
    pub fn get(&self, name: &str) -> Option<NamedPolicy> {
        self.read().get(name).cloned()
    }

    /// All policies, by name.
    pub fn list(&self) -> Vec<NamedPolicy> {
        self.read().values().cloned().collect()
    }

    /// Removes an uploaded policy, returning it.
    pub fn remove(&self, name: &str) -> Result<NamedPolicy, RegistryError> {
        let mut map = self.write();
        match map.get(name) {
            None => Err(RegistryError::NotFound(name.into())),
            Some(p) if p.builtin => Err(RegistryError::Builtin(name.into())),
            Some(_) => map
                .remove(name)
                .ok_or_else(|| RegistryError::NotFound(name.into())),
        }
    }

    /// Runs the policy called `name` on `input`.
    pub fn decide(&self, name: &str, input: &PolicyInput) -> Result<Evaluation, RegistryError> {
        let policy = self
            .get(name)
            .ok_or_else(|| RegistryError::NotFound(name.into()))?;
        Ok(self.engine.decide(&policy.compiled, input)?)
    }
}
