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

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn one_takes_the_singular_and_every_other_count_the_plural() {
        assert_eq!(count(0, "entry", "entries"), "0 entries");
        assert_eq!(count(1, "entry", "entries"), "1 entry");
        assert_eq!(count(2, "file", "files"), "2 files");
        assert_eq!(count(1_000_u64, "epoch", "epochs"), "1000 epochs");
        assert_eq!(count(1_u64, "step", "steps"), "1 step");
    }
}
