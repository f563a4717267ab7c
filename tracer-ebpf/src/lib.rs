#![no_std]
//! Kernel programs of conntrace; built for the BPF target by `tracer/build.rs`.
