//! PyKMIP server for tests (to be written).
