//! dir backend (to be written)
