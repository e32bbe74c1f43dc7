//! How progress is shown: an indicatif bar on an interactive terminal, `tracing` log lines
//! otherwise, or nothing.

use std::io::IsTerminal;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// An indicatif bar (interactive terminals).
    Bar,
    /// Plain log lines through `tracing` every `train.log_every` steps.
    Log,
    /// Nothing.
    Quiet,
}

impl Progress {
    /// A bar when stderr is a terminal, log lines otherwise.
    pub fn auto() -> Self {
        if std::io::stderr().is_terminal() {
            Self::Bar
        } else {
            Self::Log
        }
    }

    /// A bar of `total` ticks drawn with the indicatif `template`, when this is [`Progress::Bar`].
    pub fn bar(self, total: u64, template: &str) -> Option<indicatif::ProgressBar> {
        (self == Self::Bar).then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(indicatif::ProgressStyle::with_template(template).expect("template"));
            b
        })
    }
}

/// `x` with 5 significant digits for logs (`0.0012346`, `123.46`, `1.2346e7`): enough to follow a
/// loss, short enough to read; metrics.jsonl keeps every digit.
pub fn sig5(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let mag = x.abs().log10().floor() as i32;
    if (-3..6).contains(&mag) {
        format!("{x:.*}", (4 - mag).max(0) as usize)
    } else {
        format!("{x:.4e}")
    }
}

#[cfg(test)]
mod tests {
    use super::sig5;

    #[test]
    fn five_significant_digits() {
        for (x, s) in [
            (0.0, "0"),
            (1.0, "1.0000"),
            (123.456789, "123.46"),
            (-0.00123456, "-0.0012346"),
            (98765.4321, "98765"),
            (1.23456e7, "1.2346e7"),
            (2.5e-5, "2.5000e-5"),
            (f64::NAN, "NaN"),
        ] {
            assert_eq!(sig5(x), s, "{x}");
        }
    }
}
