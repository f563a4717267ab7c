//! One file per kernel program (the two connect() and the two accept() hooks share
//! theirs): each attaches by its function's name.

pub mod accept;
pub mod connect;
pub mod error_report;
pub mod receive_reset;
pub mod retransmit;
pub mod send_reset;
pub mod state;
