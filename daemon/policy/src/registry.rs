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
    /// Versions kept for peerings that pin them (`name@sha256:<hex>`), by name and
    /// digest: they stay when the name is re-uploaded or deleted.
    pinned: RwLock<BTreeMap<(String, String), Arc<CompiledPolicy>>>,
}

/// A policy reference split into its name and, when pinned (`name@sha256:<hex>`), the
/// component's digest. `None` when the pin is malformed.
pub fn parse_reference(reference: &str) -> Option<(&str, Option<&str>)> {
    match reference.split_once('@') {
        None => Some((reference, None)),
        Some((name, pin)) => {
            let digest = pin.strip_prefix("sha256:")?;
            let hex = digest.len() == 64
                && digest
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            hex.then_some((name, Some(digest)))
        }
    }
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
            pinned: RwLock::new(BTreeMap::new()),
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
            pinned: RwLock::new(self.pinned.read().map(|p| p.clone()).unwrap_or_default()),
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
        let (base, digest) = parse_reference(name)?;
        let current = self.read().get(base).cloned();
        let Some(digest) = digest else {
            return current;
        };
        if let Some(p) = current.filter(|p| p.compiled.sha256 == digest) {
            return Some(p);
        }
        let pinned = self.pinned.read().ok()?;
        pinned
            .get(&(base.to_owned(), digest.to_owned()))
            .map(|compiled| NamedPolicy {
                name: base.to_owned(),
                builtin: false,
                compiled: compiled.clone(),
            })
    }

    /// Keeps exactly the versions `pins` (name, digest) name: each is the name's current
    /// version, one kept already, or compiled from `bytes(digest)` (the stored
    /// component). Returns the pins that could not be kept, with why.
    pub fn keep_pinned(
        &self,
        pins: &[(String, String)],
        bytes: impl Fn(&str) -> Option<Vec<u8>>,
    ) -> Vec<((String, String), String)> {
        let mut kept = BTreeMap::new();
        let mut missing = Vec::new();
        let old = self.pinned.read().map(|p| p.clone()).unwrap_or_default();
        for (name, digest) in pins {
            let key = (name.clone(), digest.clone());
            let current = self
                .read()
                .get(name)
                .filter(|p| p.compiled.sha256 == *digest)
                .map(|p| p.compiled.clone());
            let compiled = match current.or_else(|| old.get(&key).cloned()) {
                Some(c) => Ok(c),
                None => match bytes(digest) {
                    None => Err("no stored component with that digest".to_owned()),
                    Some(b) => self
                        .engine
                        .compile(&b)
                        .map_err(|e| e.to_string())
                        .and_then(|c| {
                            if c.sha256 == *digest {
                                Ok(c)
                            } else {
                                Err("the stored component's digest differs".to_owned())
                            }
                        }),
                },
            };
            match compiled {
                Ok(c) => {
                    kept.insert(key, c);
                }
                Err(e) => missing.push((key, e)),
            }
        }
        if let Ok(mut pinned) = self.pinned.write() {
            *pinned = kept;
        }
        missing
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
        let limits = self.engine.limits_for(name);
        Ok(self.engine.decide_within(&policy.compiled, input, limits)?)
    }
}
