//! Routes into the tunnels with rtnetlink (being written).
