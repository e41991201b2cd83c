//! Chunked streaming AEAD format (to be written).
