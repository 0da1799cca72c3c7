//! The ImageWolf node agent: hears about image pushes, turns an image into a torrent once, and
//! gets it loaded on every node through `imagewolf-bt`.
//!
//! The data path, one module per step:
//! notification ([`notification`], [`api`]) -> image source ([`source`]) -> torrent and swarm
//! ([`distributor`], on `imagewolf_bt`) -> loader ([`loader`]); with peer agents found by
//! [`discovery`] and everything visible in [`stats`].

pub mod allowlist;
pub mod api;
pub mod auth;
pub mod config;
pub mod containerd;
pub mod discovery;
pub mod distributor;
pub mod docker;
pub mod endpoint;
pub mod image;
pub mod loader;
pub mod memory;
pub mod notification;
pub mod peers;
pub mod poll;
pub mod registry;
pub mod source;
pub mod stats;
pub mod store;
mod tarball;

pub use config::AgentConfig;
pub use distributor::Distributor;
