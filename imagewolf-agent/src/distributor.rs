//! (in progress)
pub struct Distributor;
