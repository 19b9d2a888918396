//! Purchased certificates loaded from PEM files. (Being written.)
