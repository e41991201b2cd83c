//! OpenBao / Vault Transit client (to be written).
