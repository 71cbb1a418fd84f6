//! Safe layer extraction into snapshot directories (overlay whiteout format).
