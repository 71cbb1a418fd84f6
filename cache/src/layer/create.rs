//! Layer creation: a directory diff (overlay upperdir) → tar → diffID, compression, digest, in one streaming pass.
