//! Secret connection (filled in by the secret-connection work).
