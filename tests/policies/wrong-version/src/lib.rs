//! A policy for a contract version remapd does not speak (`remap:policy@0.9.0`).
#![cfg(target_arch = "wasm32")]

wit_bindgen::generate!({ path: "wit", world: "policy" });

use remap::policy::types::Strategy;

struct Future;

impl Guest for Future {
    fn decide(_input: DecisionInput) -> Result<Decision, String> {
        Ok(Decision {
            strategy: Strategy::None,
            mappings: Vec::new(),
        })
    }
}

export!(Future);
