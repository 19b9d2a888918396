//! The built-in CA: a root kept in storage that issues for any configured name, so the quickstart
//! runs with no network. (Being written.)
