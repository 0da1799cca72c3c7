//! The node-local content-addressed store (being written; see ARCHITECTURE.md).
