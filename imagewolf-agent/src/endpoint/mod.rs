//! The node-local read-only registry endpoint (being written; see ARCHITECTURE.md).
