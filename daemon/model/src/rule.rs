//! Translation rules as the control plane states them: on an interface, in a direction,
//! an address field in one prefix becomes another prefix (host bits kept).

use std::fmt;

use ipnet::IpNet;
use remapd_common::{DIRECTION_EGRESS, DIRECTION_INGRESS, FIELD_DESTINATION, FIELD_SOURCE};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Which TC hook a rule runs on.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Packets arriving on the interface, before the local routing decision.
    Ingress,
    /// Packets leaving through the interface, after routing.
    Egress,
}

impl Direction {
    /// The value stored in map keys.
    pub const fn wire(self) -> u8 {
        match self {
            Self::Ingress => DIRECTION_INGRESS,
            Self::Egress => DIRECTION_EGRESS,
        }
    }

    /// The direction a map key's byte stands for, if any.
    pub const fn from_wire(byte: u8) -> Option<Self> {
        match byte {
            DIRECTION_INGRESS => Some(Self::Ingress),
            DIRECTION_EGRESS => Some(Self::Egress),
            _ => None,
        }
    }

    /// Both directions, ingress first.
    pub const ALL: [Self; 2] = [Self::Ingress, Self::Egress];
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        })
    }
}

/// Which address of the packet a rule rewrites.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum AddressField {
    /// The source address.
    Source,
    /// The destination address.
    Destination,
}

impl AddressField {
    /// The value stored in map keys.
    pub const fn wire(self) -> u8 {
        match self {
            Self::Source => FIELD_SOURCE,
            Self::Destination => FIELD_DESTINATION,
        }
    }

    /// The field a map key's byte stands for, if any.
    pub const fn from_wire(byte: u8) -> Option<Self> {
        match byte {
            FIELD_SOURCE => Some(Self::Source),
            FIELD_DESTINATION => Some(Self::Destination),
            _ => None,
        }
    }
}

impl fmt::Display for AddressField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Source => "src",
            Self::Destination => "dst",
        })
    }
}

/// One stateless prefix translation: on `interface`, in `direction`, an address in `field`
/// that falls in `from` is rewritten into `to`, keeping its host bits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TranslationRule {
    /// Interface name, resolved in the daemon's network namespace.
    pub interface: String,
    /// The hook the rule runs on.
    pub direction: Direction,
    /// The address the rule rewrites.
    pub field: AddressField,
    /// The prefix matched.
    #[schema(value_type = String)]
    pub from: IpNet,
    /// The prefix it becomes; same length as `from`.
    #[schema(value_type = String)]
    pub to: IpNet,
}

impl fmt::Display for TranslationRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} -> {}",
            self.interface, self.direction, self.field, self.from, self.to
        )
    }
}
