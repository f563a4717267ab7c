//! Events on their way to the engine. Live ([`live`]): the kernel's records, filtered
//! ([`filter`]), owners of resets from recently closed sockets restored ([`recent`]),
//! fed to the engine and handed to a sink. Recorded: a log's records fed the same way
//! by [`dispatch`], which both `report` and the UI's feed use. Every loss on the way is
//! counted in one [`losses::Losses`].

pub mod filter;
pub mod live;
pub mod recent;
