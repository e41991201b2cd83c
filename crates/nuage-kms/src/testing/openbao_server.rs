//! OpenBao dev server for tests (to be written).
