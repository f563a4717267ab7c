//! The command line ([`cli`]) and the headless commands: [`record`], [`watch`],
//! [`report`], [`check`]; the UI is [`crate::tui`] and `lab` is [`crate::lab`].

pub mod check;
pub mod cli;
pub mod record;
pub mod report;
pub mod watch;
