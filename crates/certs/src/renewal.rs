//! When to renew, and how long to wait after a failure. (Being written.)
