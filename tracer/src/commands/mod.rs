//! The command line ([`cli`]) and the headless commands: [`record`], [`watch`],
//! [`report`]; `check` is [`crate::kernel::probes::check`], the UI is [`crate::tui`]
//! and `lab` is [`crate::lab`].

pub mod cli;
pub mod record;
pub mod report;
pub mod watch;
