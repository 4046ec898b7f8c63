//! `/proc/kallsyms` (or a saved copy): symbol addresses, with sizes taken as the distance to the
//! next symbol, which is how far machine code may be read for a function.
use std::{collections::HashMap, path::Path, sync::Arc};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum KallsymsError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("line {line} of kallsyms is malformed: {text:?}")]
    Malformed { line: usize, text: String },
    #[error("kallsyms shows every address as 0 (kptr_restrict hides them; run as root)")]
    Hidden,
    #[error("kallsyms is empty")]
    Empty,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    pub name: String,
    pub addr: u64,
    /// Distance to the next higher symbol; `None` for the last one.
    pub size: Option<u64>,
    /// The nm-style type letter (`T`, `t`, ...).
    pub kind: char,
    /// The module name for module symbols.
    pub module: Option<String>,
}

/// Cheap to clone: the table is shared.
#[derive(Clone)]
pub struct Kallsyms {
    /// Sorted by address.
    symbols: Arc<Vec<Symbol>>,
    /// Name → indices into `symbols`, in address order (static functions can share names).
    by_name: Arc<HashMap<String, Vec<usize>>>,
}

impl Kallsyms {
    pub fn from_file(path: impl AsRef<Path>) -> Result<Kallsyms, KallsymsError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| KallsymsError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Kallsyms::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Kallsyms, KallsymsError> {
        let mut symbols = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let malformed = || KallsymsError::Malformed {
                line: i + 1,
                text: line.to_owned(),
            };
            let mut it = line.split_whitespace();
            let addr = it.next().ok_or_else(malformed)?;
            let addr = u64::from_str_radix(addr, 16).map_err(|_| malformed())?;
            let kind = it
                .next()
                .and_then(|k| k.chars().next())
                .ok_or_else(malformed)?;
            let name = it.next().ok_or_else(malformed)?.to_owned();
            let module = it
                .next()
                .map(|m| m.trim_start_matches('[').trim_end_matches(']').to_owned());
            symbols.push(Symbol {
                name,
                addr,
                size: None,
                kind,
                module,
            });
        }
        if symbols.is_empty() {
            return Err(KallsymsError::Empty);
        }
        if symbols.iter().all(|s| s.addr == 0) {
            return Err(KallsymsError::Hidden);
        }
        symbols.sort_by_key(|s| s.addr);
        // Size: distance to the next symbol at a higher address.
        let mut next_higher: Option<u64> = None;
        for s in symbols.iter_mut().rev() {
            s.size = next_higher.map(|n| n - s.addr);
            if next_higher.is_none_or(|n| s.addr < n) {
                next_higher = Some(s.addr);
            }
        }
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, s) in symbols.iter().enumerate() {
            by_name.entry(s.name.clone()).or_default().push(i);
        }
        Ok(Kallsyms {
            symbols: Arc::new(symbols),
            by_name: Arc::new(by_name),
        })
    }

    /// The lowest-addressed symbol with this name in the core kernel (not a module): the one
    /// the kernel's own name lookup, and so a kprobe by name, resolves to.
    pub fn get(&self, name: &str) -> Option<&Symbol> {
        self.get_all(name).find(|s| s.module.is_none())
    }

    /// A core-kernel function by its source name: the symbol itself, or else the one copy the
    /// compiler emitted under a clone suffix (`name.constprop.0`, `name.isra.0`,
    /// `name.llvm.123`, ...; never a `.cold` fragment). Two clones are ambiguous: `None`.
    pub fn get_function(&self, name: &str) -> Option<&Symbol> {
        if let Some(s) = self.get(name) {
            return Some(s);
        }
        let prefix = format!("{name}.");
        let mut clones = self
            .symbols
            .iter()
            .filter(|s| s.module.is_none() && s.name.starts_with(&prefix))
            .filter(|s| !s.name.split('.').any(|p| p == "cold"));
        let first = clones.next()?;
        clones.all(|s| s.addr == first.addr).then_some(first)
    }

    /// Every symbol with this name.
    pub fn get_all<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a Symbol> + 'a {
        self.by_name
            .get(name)
            .into_iter()
            .flatten()
            .map(|&i| &self.symbols[i])
    }

    /// The symbol containing `addr`, if any.
    pub fn containing(&self, addr: u64) -> Option<&Symbol> {
        let i = self
            .symbols
            .partition_point(|s| s.addr <= addr)
            .checked_sub(1)?;
        let s = &self.symbols[i];
        match s.size {
            Some(size) if addr >= s.addr + size => None,
            _ => Some(s),
        }
    }

    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
ffffffff81000000 T _stext
ffffffff81001000 t helper
ffffffff81001000 T helper_alias
ffffffff81001040 T copy_page_range
ffffffff81002000 t helper
ffffffffc0000000 t rds_init\t[rds]
";

    #[test]
    fn sizes_are_distance_to_next_symbol() {
        let ks = Kallsyms::parse(TEXT).unwrap();
        let cpr = ks.get("copy_page_range").unwrap();
        assert_eq!(cpr.addr, 0xffffffff81001040);
        assert_eq!(cpr.size, Some(0xfc0));
        // Aliases at one address both get the distance to the next distinct address.
        assert_eq!(ks.get("helper_alias").unwrap().size, Some(0x40));
        assert_eq!(ks.get("helper").unwrap().addr, 0xffffffff81001000);
        assert_eq!(ks.get_all("helper").count(), 2);
        assert_eq!(ks.get("rds_init"), None);
        assert_eq!(
            ks.get_all("rds_init").next().unwrap().module.as_deref(),
            Some("rds")
        );
        assert_eq!(
            ks.containing(0xffffffff81001050).unwrap().name,
            "copy_page_range"
        );
    }

    #[test]
    fn functions_are_found_under_clone_suffixes() {
        let ks = Kallsyms::parse(
            "ffffffff81000000 T a\nffffffff81000100 t gup_fast.constprop.0\nffffffff81000200 t gup_fast.cold\nffffffff81000300 t two.isra.0\nffffffff81000400 t two.isra.1\nffffffff81000500 T a.part.0\nffffffff81000600 T z\n",
        )
        .unwrap();
        assert_eq!(
            ks.get_function("gup_fast").unwrap().addr,
            0xffffffff81000100
        );
        assert_eq!(ks.get_function("a").unwrap().name, "a");
        assert!(ks.get_function("two").is_none(), "two clones are ambiguous");
        assert!(ks.get_function("missing").is_none());
    }

    #[test]
    fn hidden_and_malformed() {
        assert!(matches!(
            Kallsyms::parse("0000000000000000 T a\n0000000000000000 T b\n"),
            Err(KallsymsError::Hidden)
        ));
        assert!(matches!(
            Kallsyms::parse("zz T a\n"),
            Err(KallsymsError::Malformed { line: 1, .. })
        ));
        assert!(matches!(Kallsyms::parse(""), Err(KallsymsError::Empty)));
    }
}
