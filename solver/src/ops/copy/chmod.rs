//! `--chmod`: an octal mode, or a symbolic one applied per file as chmod(1)
//! would apply it to that file.
//!
//! Symbolic modes follow GNU chmod with two deliberate choices: a clause
//! without `u`, `g`, `o` or `a` means `a` with no umask (a build has no
//! meaningful umask, and BuildKit ignores it too), and `=` leaves the set-id
//! bits of a directory alone unless the clause names `s`, as GNU does.

use frontend::graph::Chmod;

const CLASS_U: u32 = 0o700;
const CLASS_G: u32 = 0o070;
const CLASS_O: u32 = 0o007;

/// A `--chmod` value ready to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ModeChange {
    Octal(u32),
    Symbolic(Vec<Clause>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Clause {
    /// Permission classes the clause changes (rwx bits of u, g and/or o).
    classes: u32,
    actions: Vec<Action>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Action {
    op: char,
    perm: Perm,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Perm {
    Letters {
        read: bool,
        write: bool,
        exec: bool,
        /// `X`: execute only for directories and files that some class can
        /// already execute.
        exec_if_any: bool,
        setid: bool,
        sticky: bool,
    },
    /// `g=u` and friends: the bits another class has now.
    CopyFrom(u32),
}

impl ModeChange {
    pub(super) fn new(chmod: &Chmod) -> Result<Self, String> {
        match chmod {
            Chmod::Octal(mode) if *mode <= 0o7777 => Ok(ModeChange::Octal(*mode)),
            Chmod::Octal(mode) => Err(format!("invalid chmod parameter: '{mode:o}'")),
            Chmod::Symbolic(text) => parse_symbolic(text).map(ModeChange::Symbolic),
        }
    }

    /// The new permission bits (07777) of a file whose bits are `mode`.
    pub(super) fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        match self {
            ModeChange::Octal(m) => *m,
            ModeChange::Symbolic(clauses) => {
                let mut mode = mode & 0o7777;
                for clause in clauses {
                    mode = clause.apply(mode, is_dir);
                }
                mode
            }
        }
    }
}

fn parse_symbolic(text: &str) -> Result<Vec<Clause>, String> {
    let invalid = |why: &str| format!("invalid chmod parameter: '{text}': {why}");
    let mut clauses = Vec::new();
    for part in text.split(',') {
        let mut chars = part.chars().peekable();
        let mut classes = 0;
        while let Some(c) = chars.next_if(|c| "ugoa".contains(*c)) {
            classes |= match c {
                'u' => CLASS_U,
                'g' => CLASS_G,
                'o' => CLASS_O,
                _ => CLASS_U | CLASS_G | CLASS_O,
            };
        }
        if classes == 0 {
            classes = CLASS_U | CLASS_G | CLASS_O;
        }
        let mut actions = Vec::new();
        while let Some(op) = chars.next() {
            if !"+-=".contains(op) {
                return Err(invalid(&format!("unexpected character '{op}'")));
            }
            let perm = if let Some(from) = chars.next_if(|c| "ugo".contains(*c)) {
                Perm::CopyFrom(match from {
                    'u' => CLASS_U,
                    'g' => CLASS_G,
                    _ => CLASS_O,
                })
            } else {
                let mut letters = (false, false, false, false, false, false);
                while let Some(c) = chars.next_if(|c| "rwxXst".contains(*c)) {
                    match c {
                        'r' => letters.0 = true,
                        'w' => letters.1 = true,
                        'x' => letters.2 = true,
                        'X' => letters.3 = true,
                        's' => letters.4 = true,
                        _ => letters.5 = true,
                    }
                }
                Perm::Letters {
                    read: letters.0,
                    write: letters.1,
                    exec: letters.2,
                    exec_if_any: letters.3,
                    setid: letters.4,
                    sticky: letters.5,
                }
            };
            actions.push(Action { op, perm });
        }
        if actions.is_empty() {
            return Err(invalid(&format!("missing operator in '{part}'")));
        }
        clauses.push(Clause { classes, actions });
    }
    Ok(clauses)
}

impl Clause {
    /// Set-id and sticky bits that belong to the clause's classes.
    fn special_bits(&self) -> u32 {
        let mut bits = 0;
        if self.classes & CLASS_U != 0 {
            bits |= 0o4000;
        }
        if self.classes & CLASS_G != 0 {
            bits |= 0o2000;
        }
        if self.classes & CLASS_O != 0 {
            bits |= 0o1000;
        }
        bits
    }

    fn apply(&self, mut mode: u32, is_dir: bool) -> u32 {
        for action in &self.actions {
            let (bits, names_setid) = match &action.perm {
                Perm::CopyFrom(class) => {
                    let shift = class.trailing_zeros();
                    let v = (mode & class) >> shift;
                    ((v * 0o111) & self.classes, false)
                }
                Perm::Letters {
                    read,
                    write,
                    exec,
                    exec_if_any,
                    setid,
                    sticky,
                } => {
                    let mut rwx = 0;
                    if *read {
                        rwx |= 0o444;
                    }
                    if *write {
                        rwx |= 0o222;
                    }
                    if *exec || (*exec_if_any && (is_dir || mode & 0o111 != 0)) {
                        rwx |= 0o111;
                    }
                    let mut bits = rwx & self.classes;
                    if *setid {
                        bits |= self.special_bits() & 0o6000;
                    }
                    if *sticky {
                        bits |= self.special_bits() & 0o1000;
                    }
                    (bits, *setid)
                }
            };
            mode = match action.op {
                '+' => mode | bits,
                '-' => mode & !bits,
                _ => {
                    let mut cleared = self.classes | self.special_bits();
                    if is_dir && !names_setid {
                        cleared &= !0o6000;
                    }
                    (mode & !cleared) | bits
                }
            };
        }
        mode
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(s: &str) -> ModeChange {
        ModeChange::new(&Chmod::Symbolic(s.into())).unwrap()
    }

    #[test]
    fn symbolic_modes() {
        assert_eq!(sym("go-w").apply(0o666, false), 0o644);
        assert_eq!(sym("u=rw,g=r,o=r").apply(0o777, false), 0o644);
        assert_eq!(sym("a+X").apply(0o600, false), 0o600);
        assert_eq!(sym("a+X").apply(0o700, false), 0o711);
        assert_eq!(sym("a+X").apply(0o600, true), 0o711);
        assert_eq!(sym("u+rw,g+r,o-x,o+w").apply(0o001, false), 0o642);
        assert_eq!(sym("+x").apply(0o644, false), 0o755);
        assert_eq!(sym("u=rwx,g=rx,o=").apply(0o666, false), 0o750);
        assert_eq!(sym("g=u").apply(0o640, false), 0o660);
        assert_eq!(sym("u+s").apply(0o755, false), 0o4755);
        assert_eq!(sym("g+s,+t").apply(0o755, true), 0o3755);
        assert_eq!(sym("=").apply(0o4755, false), 0o000);
        // `=` keeps a directory's set-gid bit unless `s` is named.
        assert_eq!(sym("g=rx").apply(0o2775, true), 0o2755);
        assert_eq!(sym("g=rxs").apply(0o775, true), 0o2755);
    }

    #[test]
    fn octal_is_taken_as_is() {
        let m = ModeChange::new(&Chmod::Octal(0o4750)).unwrap();
        assert_eq!(m.apply(0o644, false), 0o4750);
        assert_eq!(m.apply(0o755, true), 0o4750);
    }
}
