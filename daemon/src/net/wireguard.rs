//! WireGuard tunnels (being written).
