//! Snapshots: one unpacked tree per layer under snapshots/<diffid>, entered by atomic rename.
