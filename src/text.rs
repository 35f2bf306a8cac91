//! Wording shared by every message: counts with the noun in the right number.

/// `n` and the noun in the number it takes: `count(1, "file", "files")` is "1 file",
/// `count(7, "file", "files")` is "7 files" (and "0 files").
pub fn count<N: Copy + std::fmt::Display + PartialEq + From<u8>>(
    n: N,
    one: &str,
    many: &str,
) -> String {
    if n == N::from(1) {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// `1 minute`, `0.5 minutes`, `2 minutes`.
pub fn minutes(m: f64) -> String {
    let n = m.to_string();
    if n == "1" {
        "1 minute".to_string()
    } else {
        format!("{n} minutes")
    }
}

#[cfg(test)]
mod tests {
    use super::{count, minutes};

    #[test]
    fn one_takes_the_singular_and_every_other_count_the_plural() {
        assert_eq!(count(0, "entry", "entries"), "0 entries");
        assert_eq!(count(1, "entry", "entries"), "1 entry");
        assert_eq!(count(2, "file", "files"), "2 files");
        assert_eq!(count(1_000_u64, "epoch", "epochs"), "1000 epochs");
        assert_eq!(count(1_u64, "step", "steps"), "1 step");
        assert_eq!(minutes(1.0), "1 minute");
        assert_eq!(minutes(0.5), "0.5 minutes");
        assert_eq!(minutes(3.0), "3 minutes");
    }
}
