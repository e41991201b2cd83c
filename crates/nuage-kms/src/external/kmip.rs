//! KMIP client (to be written).
