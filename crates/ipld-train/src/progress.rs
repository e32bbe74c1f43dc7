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
